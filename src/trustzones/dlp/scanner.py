"""Find sensitive data in text and in decoded JSON records.

>>> from trustzones.dlp import scan_record
>>> record = {"customer": {"cards": [{"number": "4111 1111 1111 1111"}]}}
>>> [(f.type, f.path, f.start, f.end) for f in scan_record(record)]
[('CREDIT_CARD', 'customer.cards[0].number', 0, 19)]

Every string of a record is scanned, every number as its decimal text (``str`` of an
``int``, ``repr`` of a ``float``) and every object key. Offsets are code-point offsets into
the original string (end exclusive). A :class:`Finding` never holds the matched value, so
it is safe to log; its path hides a key that holds a finding (see :mod:`._paths`).

Engines. There are three, and they give identical findings (``tests/dlp`` checks that with
hypothesis on generated records and text):

- ``"python"`` is the reference: every rule's ``re`` expression over the fields joined by
  NUL, then the validators of :mod:`._rules`. It needs nothing but Python, so it runs
  everywhere, and it is the definition the other two are tested against.
- ``"hyperscan"`` runs one compiled Hyperscan database over all the fields of a batch to
  learn which rules fire in which field, then extracts candidates with ``re`` only there;
  the walk, validators and bookkeeping stay in Python. It is what the issue asks for where
  the ``hyperscan`` wheel loads.
- ``"native"`` is the optional Rust core ``trustzones_native`` (``native/`` in the source
  tree, ``python -m pip install ./native``): the walk over the decoded record, the
  normalisation, the candidate stage (one multi-pattern lazy DFA from ``regex-automata``,
  then each fired rule's ``regex``), the validators, overlap resolution and paths, all in
  one call per batch. Rules' expressions still come from :mod:`._rules`; characters
  outside ASCII are mapped by :mod:`._normalize`'s own function (cached per code point), so
  Unicode behaves exactly as in Python. It exists for speed: the per-match and per-field
  Python work of the other engines is what limits them.

``"auto"`` (the default) reads ``TRUSTZONES_DLP_ENGINE`` (``native``, ``hyperscan`` or
``python``) and otherwise takes the first engine that loads, in the order native,
hyperscan, python. Asking for an engine that is not installed raises
:class:`EngineUnavailable`. A :class:`Scanner` is safe to share between threads
(Hyperscan scratch space and the native engine's working memory are per thread).

Speed: records of one schema repeat their shapes, so the walk caches (bounded) what every
member of an object needs, keyed by the object's path, keys and inherited context: the
member's path segments, its key's own findings and its context. Nothing is cached for a
key that holds a finding, nor below one. Python work then goes only to the fields in which
the compiled database fired.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any, Literal, NamedTuple, cast, get_args

import orjson

from trustzones.dlp._native import NativeEngine, load_native, native_available
from trustzones.dlp._normalize import _map_char, normalize, to_original
from trustzones.dlp._paths import Segment, render_path
from trustzones.dlp._rules import ENTITY_TYPES, KEYWORDS, NOT_IP, RULES, field_context
from trustzones.errors import TrustzonesError

__all__ = [
    "ENGINE_ENV",
    "ENTITY_TYPES",
    "EngineName",
    "EngineUnavailable",
    "Finding",
    "Scanner",
    "default_scanner",
    "hyperscan_available",
    "native_available",
    "scan_record",
    "scan_text",
]

log = logging.getLogger(__name__)

EngineName = Literal["auto", "native", "hyperscan", "python"]
#: The environment variable that picks the engine when ``engine="auto"``.
ENGINE_ENV = "TRUSTZONES_DLP_ENGINE"
_EMPTY: frozenset[str] = frozenset()


class EngineUnavailable(TrustzonesError):
    """The DLP matching engine asked for (by ``engine=`` or by ``TRUSTZONES_DLP_ENGINE``)
    is unknown or not installed here."""


class Finding(NamedTuple):
    """One detected value: its type, where it is, and how sure the detector is.

    ``start``/``end`` are offsets into the field's original string (or a number's decimal
    text, or the key when ``in_key``); ``end`` is exclusive. The value itself is never
    stored here, so a finding is safe to log. (A named tuple: immutable and cheap.)
    """

    type: str
    path: str
    start: int
    end: int
    confidence: float
    in_key: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "start": self.start,
            "end": self.end,
            "confidence": self.confidence,
        }
        if self.in_key:
            d["in_key"] = True
        return d


#: (confidence, start, end, rule index, type) of one candidate, offsets in normalised text.
_Cand = tuple[float, int, int, int, str]
#: A keyword pattern is given the id ``_KEYWORD_BASE + index``.
_KEYWORD_BASE = 1 << 16
#: (pattern id, field index, start, end) of one match; ``-1, -1`` for a keyword pattern.
_Match = tuple[int, int, int, int]
#: Per member of an object: its segments, the key's own candidates, the value's context.
_Member = tuple[tuple[Segment, ...], tuple[_Cand, ...], frozenset[str]]
_NOT_IP_ONLY = frozenset({NOT_IP})
_CACHE_LIMIT = 16_384
_inc = (1).__add__


def hyperscan_available() -> bool:
    """True when the ``hyperscan`` module imports and can compile a database here."""
    try:
        import hyperscan

        db = hyperscan.Database()
        db.compile(expressions=[b"a"], ids=[0], elements=1, flags=[0])
    except Exception:  # any failure to load means: use the fallback
        return False
    return True


_INSTALL = {
    "native": "build and install it from the trustzones source tree with "
    "`python -m pip install ./native` (needs Rust and cargo)",
    "hyperscan": "`python -m pip install hyperscan` (a wheel exists for most platforms)",
}


def _choose_engine(engine: str) -> str:
    """The engine to build: ``engine`` itself, or for ``"auto"`` the environment's choice,
    else the fastest that loads."""
    names = get_args(EngineName)
    if engine not in names:
        raise EngineUnavailable(f"unknown DLP engine {engine!r}; use one of {', '.join(names)}")
    if engine == "auto":
        env = os.environ.get(ENGINE_ENV, "").strip()
        if env and env not in names:
            raise EngineUnavailable(
                f"{ENGINE_ENV}={env!r} is not a DLP engine; use one of {', '.join(names)}"
            )
        engine = env or "auto"
    if engine == "auto":
        if native_available():
            return "native"
        if hyperscan_available():
            return "hyperscan"
        log.warning("neither trustzones_native nor hyperscan loads; DLP scanning uses Python")
        return "python"
    available = {"native": native_available, "hyperscan": hyperscan_available}.get(engine)
    if available is not None and not available():
        raise EngineUnavailable(
            f"the DLP engine {engine!r} is not installed here: {_INSTALL[engine]}; "
            "or choose another engine (native, hyperscan, python)"
        )
    return engine


def _ends(norms: list[str]) -> list[int]:
    """Where each text ends (plus one, for its separator) in the texts joined by one
    separator character: text ``i`` spans ``[ends[i - 1], ends[i] - 1)``."""
    return list(accumulate(map(_inc, map(len, norms))))


class _PythonEngine:
    """Runs every pattern with ``re`` over the fields joined by NUL (no pattern matches NUL)."""

    name = "python"

    def __init__(self, patterns: Sequence[tuple[int, str, bool]]) -> None:
        self._rx = [
            (pid, re.compile(rx, re.ASCII | (re.IGNORECASE if caseless else 0)))
            for pid, rx, caseless in patterns
        ]

    def matches(self, norms: list[str], big: str) -> list[_Match]:
        out: list[_Match] = []
        if len(norms) == 1:
            for pid, rx in self._rx:
                for m in rx.finditer(big):
                    out.append((pid, 0, m.start(), m.end()))
            return out
        ends = _ends(norms)
        for pid, rx in self._rx:
            for m in rx.finditer(big):
                s = m.start()
                fi = bisect_right(ends, s)
                base = ends[fi - 1] if fi else 0
                out.append((pid, fi, s - base, m.end() - base))
        return out


class _HyperscanEngine:
    """One Hyperscan pass says which pattern fired in which field; ``re`` then extracts the
    matches of that pattern from that field only. Keyword patterns yield ``(pid, fi, -1, -1)``.
    """

    name = "hyperscan"

    def __init__(
        self, patterns: Sequence[tuple[int, str, bool]], prefilters: dict[int, str]
    ) -> None:
        import hyperscan

        self._hs = hyperscan
        self._rx = {
            pid: re.compile(rx, re.ASCII | (re.IGNORECASE if caseless else 0))
            for pid, rx, caseless in patterns
        }
        db = hyperscan.Database()
        db.compile(
            expressions=[prefilters.get(pid, rx).encode() for pid, rx, _ in patterns],
            ids=[pid for pid, _, _ in patterns],
            elements=len(patterns),
            flags=[hyperscan.HS_FLAG_CASELESS if c else 0 for _, _, c in patterns],
        )
        self._db = db
        self._local = threading.local()

    def _scratch(self) -> Any:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._hs.Scratch(self._db)
            self._local.scratch = scratch
        return scratch

    def matches(self, norms: list[str], big: str) -> list[_Match]:
        if not big:
            return []
        fired: set[tuple[int, int]] = set()
        add = fired.add
        if len(norms) == 1:

            def on_match(pid: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
                add((pid, 0))

        else:
            ends = _ends(norms)

            def on_match(pid: int, _from: int, _to: int, _flags: int, _ctx: object) -> None:
                add((pid, bisect_right(ends, _to - 1)))

        self._db.scan(big.encode("ascii"), match_event_handler=on_match, scratch=self._scratch())
        out: list[_Match] = []
        rxs = self._rx
        for pid, fi in fired:
            if pid >= _KEYWORD_BASE:
                out.append((pid, fi, -1, -1))
                continue
            for m in rxs[pid].finditer(norms[fi]):
                out.append((pid, fi, m.start(), m.end()))
        return out


class _Collected:
    """The scannable texts of some records, in walk order, with what findings need."""

    __slots__ = ("ctx_fields", "ctx_of", "key_hits", "rec_starts", "segs", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.segs: list[tuple[Segment, ...]] = []
        #: Field index → its context, for the fields that have one.
        self.ctx_of: dict[int, frozenset[str]] = {}
        #: Entity type → indexes of the fields whose context names it.
        self.ctx_fields: dict[str, list[int]] = {}
        #: (walk position, record, segments, candidates) of keys that hold findings.
        self.key_hits: list[tuple[int, int, tuple[Segment, ...], tuple[_Cand, ...]]] = []
        #: Index of the first text of each record.
        self.rec_starts: list[int] = []


class Scanner:
    """A compiled set of detectors.

    ``types`` limits detection to some entity types (default: all of
    :data:`ENTITY_TYPES`); ``min_confidence`` drops weaker findings; ``scan_keys`` also
    scans object keys; ``engine`` picks the matching engine (see the module docstring).
    """

    def __init__(
        self,
        *,
        types: Iterable[str] | None = None,
        min_confidence: float = 0.5,
        scan_keys: bool = True,
        engine: EngineName = "auto",
    ) -> None:
        wanted = set(ENTITY_TYPES if types is None else types)
        unknown = wanted - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(
                f"unknown entity type(s) {sorted(unknown)}; known: {', '.join(ENTITY_TYPES)}"
            )
        self.types = frozenset(wanted)
        self.min_confidence = min_confidence
        self.scan_keys = scan_keys
        self._rules = tuple(r for r in RULES if r.type in wanted)
        #: Per rule index: its type, its validator, and whether it detects IP addresses.
        self._rule_info = tuple((r.type, r.validate, r.type == "IP_ADDRESS") for r in self._rules)
        # Context-only rules run with ``re`` on the few fields that have context; the
        # engine runs the others, plus one keyword pattern per type that needs one.
        self._context_rules = tuple(
            (ri, r, re.compile(r.regex, re.ASCII))
            for ri, r in enumerate(self._rules)
            if r.context_only
        )
        patterns: list[tuple[int, str, bool]] = [
            (ri, r.regex, False) for ri, r in enumerate(self._rules) if not r.context_only
        ]
        prefilters = {ri: r.prefilter for ri, r in enumerate(self._rules) if r.prefilter}
        self._keyword_types: list[str] = sorted(
            {r.type for r in self._rules if r.context_only and r.keywords}
        )
        for i, t in enumerate(self._keyword_types):
            patterns.append((_KEYWORD_BASE + i, KEYWORDS[t], True))
        chosen = _choose_engine(engine)
        self._native: NativeEngine | None = None
        self._engine: _PythonEngine | _HyperscanEngine | None = None
        if chosen == "native":
            native = load_native()
            assert native is not None  # checked by _choose_engine
            rules = [
                (r.name, r.type, r.regex, r.prefilter, r.context_only, r.keywords)
                for r in self._rules
            ]
            self._native = native.Engine(
                rules,
                [(t, KEYWORDS[t]) for t in self._keyword_types],
                list(KEYWORDS.items()),
                list(ENTITY_TYPES),
                min_confidence=min_confidence,
                scan_keys=scan_keys,
                finding=Finding,
                map_char=_map_char,
                normalize=normalize,
                field_context=field_context,
                dumps=orjson.dumps,
            )
            # With the native engine these two methods are the engine's own: bound on the
            # instance, a call goes straight to Rust (no Python frame per record).
            self.scan_record = self._native.scan_record  # type: ignore[method-assign]
            self.scan_records = self._native.scan_records  # type: ignore[method-assign]
        elif chosen == "hyperscan":
            self._engine = _HyperscanEngine(patterns, prefilters)
        else:
            self._engine = _PythonEngine(patterns)
        # Keys repeat from record to record: what they need is cached (bounded), unless a
        # key holds a finding (a sensitive value is never kept in a cache).
        self._key_cache: dict[tuple[str, frozenset[str]], tuple[_Cand, ...]] = {}
        self._plain_key_cache: dict[str, tuple[_Cand, ...]] = {}
        self._paths: dict[tuple[Segment, ...], str] = {}
        self._plans: dict[
            tuple[tuple[Segment, ...], tuple[object, ...], frozenset[str]], list[_Member]
        ] = {}

    @property
    def engine(self) -> str:
        """The engine in use: ``"native"``, ``"hyperscan"`` or ``"python"``."""
        return "native" if self._engine is None else self._engine.name

    def _matcher(self) -> _PythonEngine | _HyperscanEngine:
        assert self._engine is not None  # only the Python-side engines call this
        return self._engine

    # -- public API ----------------------------------------------------------------

    def scan_text(self, text: str, *, field: str | None = None) -> list[Finding]:
        """Scan one string. ``field`` is the name of the field it came from (context)."""
        ctx = field_context(field) if field else _EMPTY
        if self._native is not None:
            return self._native.scan_text(text, ctx)
        found = self._detect([text], {0: ctx} if ctx else {}, {t: [0] for t in ctx})
        return [Finding(c[4], "", c[1], c[2], round(c[0], 2)) for c in found.get(0, ())]

    def detects(self, text: str) -> bool:
        """Whether :meth:`scan_text` (without a field name) finds anything in ``text``;
        cheaper: it stops at the first finding and builds none."""
        if self._native is not None:
            return self._native.detects(text)
        norm = text if text.isascii() else normalize(text)[0]
        info = self._rule_info
        minconf = self.min_confidence
        keyword_types: set[str] = set()
        for pid, _fi, s, e in self._matcher().matches([norm], norm):
            if pid >= _KEYWORD_BASE:
                keyword_types.add(self._keyword_types[pid - _KEYWORD_BASE])
                continue
            for _s, _e, conf in info[pid][1](norm, s, e, False):
                if conf >= minconf:
                    return True
        for _ri, rule, rx in self._context_rules if keyword_types else ():
            if rule.keywords and rule.type in keyword_types:
                for m in rx.finditer(norm):
                    for _s, _e, conf in rule.validate(norm, m.start(), m.end(), False):
                        if conf >= minconf:
                            return True
        return False

    def scan_record(self, obj: object) -> list[Finding]:
        """Scan a decoded JSON value (dict, list, str, number, bool or None)."""
        if self._native is not None:
            return self._native.scan_record(obj)
        return self.scan_records([obj])[0]

    def scan_records(self, objs: Sequence[object]) -> list[list[Finding]]:
        """Scan several records in one pass; returns the findings of each, in order."""
        if self._native is not None:
            return self._native.scan_records(objs)
        c = self._collect(objs)
        texts = c.texts
        found = self._detect(texts, c.ctx_of, c.ctx_fields) if texts else {}
        results: list[list[Finding]] = [[] for _ in objs]
        key_hits = c.key_hits
        if not found and not key_hits:
            return results
        segs_of = c.segs
        rec_starts = c.rec_starts
        single = len(objs) == 1
        new = tuple.__new__
        if not key_hits:
            # The usual case: fields in walk order, paths from the (bounded) cache.
            paths = self._paths
            out = results[0]
            for fi, cands in found.items():
                segs = segs_of[fi]
                path = paths.get(segs)
                if path is None:
                    path = render_path(segs, _NO_HIDDEN)
                    if len(paths) < _CACHE_LIMIT:
                        paths[segs] = path
                if not single:
                    out = results[bisect_right(rec_starts, fi) - 1]
                for conf, s, e, _ri, type_ in cands:
                    out.append(new(Finding, (type_, path, s, e, round(conf, 2), False)))
            return results
        hidden = frozenset(segs for _, _, segs, _ in key_hits)
        # (walk position, 0 for a key / 1 for a value, record, segments, candidates): sorted,
        # this is the order of the walk, a key before the values under it.
        items: list[tuple[int, int, int, tuple[Segment, ...], Sequence[_Cand]]] = [
            (fi, 1, bisect_right(rec_starts, fi) - 1, segs_of[fi], cands)
            for fi, cands in found.items()
        ]
        items += [(pos, 0, rec, segs, cands) for pos, rec, segs, cands in key_hits]
        items.sort(key=lambda it: (it[0], it[1]))
        for _pos, is_value, rec, segs, some in items:
            path = render_path(segs, hidden)
            out = results[rec]
            in_key = not is_value
            for conf, s, e, _ri, type_ in some:
                out.append(new(Finding, (type_, path, s, e, round(conf, 2), in_key)))
        return results

    # -- internals -----------------------------------------------------------------

    def _member_plan(
        self,
        segments: tuple[Segment, ...],
        keys: tuple[object, ...],
        inherited: frozenset[str],
        cache: bool,
    ) -> list[_Member]:
        """Per member of an object with these keys under ``segments``: the member's
        segments, the key's own findings and the context of the value. Objects of one
        schema share keys and sit at the same paths, so this is cached (bounded), unless a
        key on the way holds a finding (``cache`` false) or one of these keys does."""
        plan: list[_Member] = []
        for pos, raw in enumerate(keys):
            key = raw if type(raw) is str else str(raw)
            hits = self._key_findings(key, inherited) if self.scan_keys else ()
            kctx = field_context(key)
            plan.append(
                (segments + ((key, pos),), hits, (inherited | kctx) if inherited else kctx)  # noqa: RUF005
            )
        # A key that holds a finding is sensitive: never keep it in a cache.
        if cache and len(self._plans) < _CACHE_LIMIT and not any(m[1] for m in plan):
            self._plans[(segments, keys, inherited)] = plan
        return plan

    def _key_findings(self, key: str, ctx: frozenset[str]) -> tuple[_Cand, ...]:
        if not ctx:
            hit = self._plain_key_cache.get(key)
            if hit is None:
                hit = self._detect_key(key, ctx)
                if len(self._plain_key_cache) < 65_536 and not hit:
                    self._plain_key_cache[key] = hit
            return hit
        cache_key = (key, ctx)
        hit = self._key_cache.get(cache_key)
        if hit is None:
            hit = self._detect_key(key, ctx)
            if len(self._key_cache) < 65_536 and not hit:
                self._key_cache[cache_key] = hit
        return hit

    def _detect_key(self, key: str, ctx: frozenset[str]) -> tuple[_Cand, ...]:
        found = self._detect([key], {0: ctx} if ctx else {}, {t: [0] for t in ctx})
        return tuple(found.get(0, ()))

    def _collect(self, objs: Sequence[object]) -> _Collected:
        """Walk the records: every string, number and (for findings) key, with its path."""
        c = _Collected()
        texts = c.texts
        segs = c.segs
        ctx_of = c.ctx_of
        ctx_fields = c.ctx_fields
        key_hits = c.key_hits
        texts_append = texts.append
        segs_append = segs.append
        plans = self._plans
        member_plan = self._member_plan
        record = 0

        def add(text: str, seg: tuple[Segment, ...], ctx: frozenset[str]) -> None:
            if ctx:
                fi = len(texts)
                ctx_of[fi] = ctx
                for t in ctx:
                    got = ctx_fields.get(t)
                    if got is None:
                        ctx_fields[t] = [fi]
                    else:
                        got.append(fi)
            texts_append(text)
            segs_append(seg)

        def walk_dict(
            d: dict[object, object], segments: tuple[Segment, ...], ctx: frozenset[str], cache: bool
        ) -> None:
            inherited = ctx - _NOT_IP_ONLY if NOT_IP in ctx else ctx
            keys = tuple(d)
            plan = plans.get((segments, keys, inherited)) if cache else None
            if plan is None:
                plan = member_plan(segments, keys, inherited, cache)
            for (seg, hits, kctx), value in zip(plan, d.values()):  # noqa: B905 (same length)
                vt = type(value)
                if hits:
                    key_hits.append((len(texts), record, seg, hits))
                    if vt is str:
                        add(value, seg, kctx)  # type: ignore[arg-type]
                    elif vt is not bool and value is not None:
                        walk(value, seg, kctx, False)
                elif vt is str:
                    if kctx:
                        fi = len(texts)
                        ctx_of[fi] = kctx
                        for t in kctx:
                            got = ctx_fields.get(t)
                            if got is None:
                                ctx_fields[t] = [fi]
                            else:
                                got.append(fi)
                    texts_append(value)  # type: ignore[arg-type]
                    segs_append(seg)
                elif vt is dict:
                    walk_dict(value, seg, kctx, cache)  # type: ignore[arg-type]
                elif vt is not bool and value is not None:
                    walk(value, seg, kctx, cache)

        def walk(
            obj: object, segments: tuple[Segment, ...], ctx: frozenset[str], cache: bool
        ) -> None:
            t = type(obj)
            if t is dict:
                walk_dict(obj, segments, ctx, cache)  # type: ignore[arg-type]
            elif t is str:
                add(obj, segments, ctx)  # type: ignore[arg-type]
            elif t is list or t is tuple:
                for i, value in enumerate(cast("list[object]", obj)):
                    walk(value, segments + (i,), ctx, cache)  # noqa: RUF005
            elif t is int:
                add(str(obj), segments, ctx)
            elif t is float:
                add(repr(obj), segments, ctx)
            elif obj is None or isinstance(obj, bool):
                return
            elif isinstance(obj, str):
                walk(str(obj), segments, ctx, cache)
            elif isinstance(obj, int):
                walk(int(obj), segments, ctx, cache)
            elif isinstance(obj, float):
                walk(float(obj), segments, ctx, cache)
            elif isinstance(obj, dict):
                walk(dict(obj), segments, ctx, cache)
            elif isinstance(obj, list | tuple):
                walk(list(obj), segments, ctx, cache)
            else:
                where = render_path(segments, _NO_HIDDEN) or "the top level"
                raise TypeError(
                    f"cannot scan a {t.__name__} at {where}: records must be decoded JSON "
                    "(dict, list, str, int, float, bool, None)"
                )

        rec_starts_append = c.rec_starts.append
        for record, obj in enumerate(objs):  # noqa: B007 (read by the closures)
            rec_starts_append(len(texts))
            if type(obj) is dict:
                walk_dict(obj, (), _EMPTY, True)
            else:
                walk(obj, (), _EMPTY, True)
        return c

    def _detect(
        self,
        texts: list[str],
        ctx_of: dict[int, frozenset[str]],
        ctx_fields: dict[str, list[int]],
    ) -> dict[int, list[_Cand]]:
        """Candidates kept per field index (in field order), offsets into the original
        strings. ``ctx_of`` holds the context of the fields that have one."""
        maps: dict[int, list[int]] | None = None
        big = texts[0] if len(texts) == 1 else "\x00".join(texts)
        if big.isascii():
            norms = texts  # ASCII needs no normalisation
        else:
            norms = []
            maps = {}
            for fi, t in enumerate(texts):
                if t.isascii():
                    norms.append(t)
                    continue
                norm, imap = normalize(t)
                norms.append(norm)
                if imap is not None:
                    maps[fi] = imap
            big = norms[0] if len(norms) == 1 else "\x00".join(norms)
        info = self._rule_info
        minconf = self.min_confidence
        cands: dict[int, list[_Cand]] = {}
        keyword_fields: dict[str, set[int]] = {}
        get_ctx = ctx_of.get
        for pid, fi, s, e in self._matcher().matches(norms, big):
            if pid >= _KEYWORD_BASE:
                keyword_fields.setdefault(self._keyword_types[pid - _KEYWORD_BASE], set()).add(fi)
                continue
            type_, validate, is_ip = info[pid]
            ctx = get_ctx(fi)
            if ctx is None:
                has_ctx = False
            elif is_ip and NOT_IP in ctx:
                continue
            else:
                has_ctx = type_ in ctx
            for cs, ce, conf in validate(norms[fi], s, e, has_ctx):
                if conf >= minconf:
                    got = cands.get(fi)
                    if got is None:
                        cands[fi] = [(conf, cs, ce, pid, type_)]
                    else:
                        got.append((conf, cs, ce, pid, type_))
        for ri, rule, rx in self._context_rules if ctx_fields or keyword_fields else ():
            by_name = ctx_fields.get(rule.type)
            by_keyword = keyword_fields.get(rule.type) if rule.keywords else None
            if not by_name and not by_keyword:
                continue
            targets = set(by_name) if by_name else set()
            if by_keyword:
                targets |= by_keyword
            for fi in sorted(targets):
                ctx = get_ctx(fi, _EMPTY)
                if rule.type == "IP_ADDRESS" and NOT_IP in ctx:
                    continue
                text = norms[fi]
                for m in rx.finditer(text):
                    for cs, ce, conf in rule.validate(text, m.start(), m.end(), rule.type in ctx):
                        if conf >= minconf:
                            cands.setdefault(fi, []).append((conf, cs, ce, ri, rule.type))
        out: dict[int, list[_Cand]] = {}
        for fi in sorted(cands):
            chosen = _resolve(cands[fi])
            if maps:
                imap = maps.get(fi)
                if imap is not None:
                    chosen = [(c, *to_original(imap, s, e), ri, t) for c, s, e, ri, t in chosen]
            out[fi] = chosen
        return out


_NO_HIDDEN: frozenset[tuple[Segment, ...]] = frozenset()


def _resolve(cands: list[_Cand]) -> list[_Cand]:
    """Keep the best of overlapping candidates: higher confidence, then longer, then
    earlier, then the rule listed first. Returns them in text order."""
    if len(cands) == 1:
        return cands
    ordered = sorted(cands, key=lambda c: (-c[0], c[1] - c[2], c[1], c[3]))
    kept: list[_Cand] = []
    for c in ordered:
        if all(c[2] <= k[1] or c[1] >= k[2] for k in kept):
            kept.append(c)
    kept.sort(key=lambda c: (c[1], c[2]))
    return kept


_default: Scanner | None = None
_default_lock = threading.Lock()


def default_scanner() -> Scanner:
    """The shared scanner with every detector, built on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Scanner()
    return _default


def scan_text(text: str, *, field: str | None = None) -> list[Finding]:
    """Scan one string with the default scanner."""
    return default_scanner().scan_text(text, field=field)


def scan_record(obj: object) -> list[Finding]:
    """Scan a decoded JSON value with the default scanner."""
    return default_scanner().scan_record(obj)
