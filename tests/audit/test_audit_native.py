"""The native core's audit paths (``native/src/audit.rs``) give exactly what the Python
reference gives, or decline.

Three of them: the rows ``AuditLog.append_many`` inserts (canonical JSON, leaf hash, facet),
``CompactRange.extend``, and ``flow_transfers``' loop. Each test runs both paths on the same
arbitrary inputs, the Python one with ``_native.native`` set to ``None``; the native path may
decline a batch (or, for flows, a record), but never give other bytes. The event models here
are built with ``model_construct`` so that they can hold what the contract would refuse
(control characters, quotes, floats, huge integers, lone surrogates, nested lists): the
canonical form must still match byte for byte, or the native core must leave it to Python.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from test_audit_fastpath import _shared

from trustzones.audit import _native, canonical_json, verify_log
from trustzones.audit import events as ev
from trustzones.audit import log as audit_log
from trustzones.audit.events import AuditData, AuditEvent, CanonicalEvent
from trustzones.audit.merkle import CompactRange

native = _native.native
pytestmark = pytest.mark.skipif(native is None, reason="trustzones_native has no audit functions")

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _python(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call`` on the reference paths (the native core switched off meanwhile)."""
    saved = _native.native
    _native.native = None
    try:
        return call(*args, **kwargs)
    finally:
        _native.native = saved


# Strings with everything JSON must escape, quotes and backslashes, non-ASCII and non-BMP
# text, and (rarely) a lone surrogate, which neither path can encode.
_text = st.one_of(
    st.text(max_size=24),
    st.sampled_from(['a"b', "c\\d", "\x00\x1f\x7f", "tab\there\nnew", "é ✓ 😀", "x" * 40, ""]),
    st.just("bad \ud800 surrogate"),
)
_scalar = st.one_of(
    _text,
    st.integers(-(2**64), 2**64),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner)),
    max_leaves=12,
)
_names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
    st.sampled_from(["offset", "topic", "reason", "principal", "content_hash", "Zed", "a\nb"]),
    st.text(max_size=6),
)


@st.composite
def _models(draw: st.DrawFn) -> AuditEvent:
    """An event model with arbitrary field values (nothing checked)."""
    data = AuditData.model_construct(
        principal=draw(st.one_of(_text, st.sampled_from(["svc-1", "svc-2"]))),
        action=draw(st.sampled_from(["read", "consume", 'q"'])),
        resource=draw(_text),
        zone=draw(st.sampled_from(["restricted", "internal"])),
        decision=draw(st.sampled_from(["allow", "deny", "quarantine"])),
        reason=draw(st.one_of(st.none(), _text)),
        policy_version=draw(st.one_of(st.none(), _text)),
        grant_id=draw(st.one_of(st.none(), _text, st.integers())),
    )
    # Extra fields set directly: they may repeat a field's name, which pydantic would not let
    # model_construct do.
    object.__setattr__(
        data, "__pydantic_extra__", draw(st.dictionaries(_names, _value, max_size=6))
    )
    return AuditEvent.model_construct(
        id=draw(st.one_of(_text, st.just("0190a0b0-0000-7000-8000-000000000000"))),
        source=draw(st.sampled_from(["/trustzones/zone", "/a\\b"])),
        type=draw(st.sampled_from(["io.trustzones.record.consumed", "io.trustzones.x"])),
        subject=draw(st.one_of(st.none(), _text)),
        time=draw(st.sampled_from(["2026-03-01T12:00:00.123456Z", 'x"y'])),
        data=data,
    )


# What the native core writes itself (anything else it leaves to Python): strings without
# lone surrogates, 64-bit integers, booleans, None, and lists and tuples of them.
_plain_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=24)
_plain = st.recursive(
    st.one_of(
        _plain_text,
        st.sampled_from(['a"b', "c\\d", "\x00\x1f\x7f", "tab\there\nnew", "é ✓ 😀", "x" * 40]),
        st.integers(-(2**63), 2**63 - 1),
        st.booleans(),
        st.none(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner)),
    max_leaves=8,
)


@st.composite
def _plain_models(draw: st.DrawFn) -> AuditEvent:
    data = AuditData.model_construct(
        principal=draw(_plain_text),
        action=draw(_plain_text),
        resource=draw(_plain_text),
        zone=draw(st.sampled_from(["restricted", "internal"])),
        decision=draw(st.sampled_from(["allow", "deny", "quarantine"])),
        reason=draw(st.one_of(st.none(), _plain_text)),
        policy_version=draw(st.one_of(st.none(), _plain)),
        grant_id=draw(st.one_of(st.none(), _plain_text)),
    )
    names = st.from_regex(r"[a-z_0-9é]{1,20}", fullmatch=True).filter(
        lambda n: n not in data.__dict__
    )
    object.__setattr__(data, "__pydantic_extra__", draw(st.dictionaries(names, _plain, max_size=8)))
    return AuditEvent.model_construct(
        id=draw(_plain_text),
        source=draw(_plain_text),
        type="io.trustzones.x",
        subject=draw(st.one_of(st.none(), _plain_text)),
        time=draw(_plain_text),
        data=data,
    )


@settings(max_examples=400, deadline=None)
@given(events=st.lists(_plain_models(), min_size=1, max_size=5), with_facets=st.booleans())
def test_native_rows_write_plain_values_themselves(
    events: list[AuditEvent], with_facets: bool
) -> None:
    """Any mix of the values it handles: the native core takes the batch, byte for byte."""
    assert native is not None
    got = native.audit_rows(events, CanonicalEvent, AuditEvent, AuditData, {}, with_facets)
    assert got is not None
    _same_rows(got, audit_log._python_rows(events, {}, with_facets))


def _record_events(n: int) -> list[AuditEvent]:
    """Events as the product makes them (one of each of a few kinds)."""
    made: list[AuditEvent] = []
    for i in range(n):
        made.append(
            ev.record_access(
                direction="consume", principal=f"svc-{i % 3}", zone="restricted",
                topic="payments", partition=i % 4, offset=i, content=b"r%d" % i,
                grant_id="g-1" if i % 2 else None, at=T,
            )
        )  # fmt: skip
    made.append(
        ev.access_decision(
            principal="alice", action="read", resource="topic/p", zone="z", decision="deny",
            reason='no "live" grant \\ café', at=T, request_id="r-1",
        )
    )  # fmt: skip
    made.append(ev.aggregate(
        principal="svc-1", zone="z", topic="t", action="consume", allowed=3, denied=1,
        window_start=T, window_end=T, offsets={0: (1, 9), 3: (2, 2)},
    ))  # fmt: skip
    return made


def _same_rows(got: tuple[list[Any], bool], want: tuple[list[Any], bool]) -> None:
    assert got[1] == want[1]
    assert len(got[0]) == len(want[0])
    for g, w in zip(got[0], want[0], strict=True):
        assert type(g) is type(w)
        assert g == w


@settings(max_examples=400, deadline=None)
@given(events=st.lists(_models(), min_size=1, max_size=5), with_facets=st.booleans())
def test_native_rows_are_the_python_rows_or_none(
    events: list[AuditEvent], with_facets: bool
) -> None:
    assert native is not None
    facet_ids = {("svc-1", "restricted", "read", "allow"): 7}
    got = native.audit_rows(events, CanonicalEvent, AuditEvent, AuditData, facet_ids, with_facets)
    want: tuple[list[Any], bool] | None
    try:
        want = audit_log._python_rows(events, facet_ids, with_facets)
    except Exception:  # the reference refuses (orjson): the native core must have declined
        want = None
    if want is None:
        assert got is None
    elif got is not None:
        _same_rows(got, want)


@settings(max_examples=100, deadline=None)
@given(
    picks=st.lists(st.integers(0, 6), min_size=1, max_size=12),
    known=st.sets(st.integers(0, 2), max_size=3),
    with_facets=st.booleans(),
)
def test_native_rows_take_every_event_the_product_makes(
    picks: list[int], known: set[int], with_facets: bool
) -> None:
    """The point of the native rows: ordinary events (models and canonical ones, mixed, with
    facets known or not) never go back to Python, and their bodies are RFC 8785."""
    assert native is not None
    pool = _record_events(5)
    events: list[AuditEvent | CanonicalEvent] = [
        CanonicalEvent.of(pool[i]) if i % 2 else pool[i] for i in picks
    ]
    facet_ids = {(f"svc-{k}", "restricted", "consume", "allow"): 100 + k for k in known}
    got = native.audit_rows(events, CanonicalEvent, AuditEvent, AuditData, facet_ids, with_facets)
    assert got is not None
    _same_rows(got, audit_log._python_rows(events, facet_ids, with_facets))
    width = 5 if with_facets else 8
    for k, e in enumerate(events):
        body = bytes(got[0][k * width + width - 1])
        assert body == (e.body if isinstance(e, CanonicalEvent) else canonical_json(e))
        assert body == rfc8785.dumps(json.loads(body))
        assert bytes(got[0][k * width + width - 2]) == hashlib.sha256(b"\x00" + body).digest()


def test_native_rows_decline_what_is_not_plainly_an_event() -> None:
    assert native is not None
    good = _record_events(1)[0]

    class Sub(AuditEvent):
        pass

    odd_data = good.data.model_copy()
    object.__setattr__(odd_data, "__pydantic_extra__", [("offset", 1)])
    for odd in (
        Sub.model_construct(**good.__dict__),
        good.model_copy(update={"time": 1.5}),
        good.model_copy(update={"data": odd_data}),
        ("not", "an", "event"),
    ):
        rows = native.audit_rows([good, odd], CanonicalEvent, AuditEvent, AuditData, {}, True)
        assert rows is None


def test_append_many_stores_the_same_bytes_either_way(log: audit_log.AuditLog) -> None:
    events = _record_events(6)
    first = log.append_many(events)
    again = _python(log.append_many, [e.model_copy(update={"id": e.id + "-py"}) for e in events])
    reader = audit_log.AuditReader(log.path, principal="a", authorize=lambda who, op: True)
    stored = reader.tail(len(first) + len(again))
    for e, s in zip(events, stored[: len(first)], strict=True):
        assert s.event == e
    for e, s in zip(events, stored[len(first) :], strict=True):
        assert s.event == e.model_copy(update={"id": e.id + "-py"})


class _Forbidden:
    """Stands in for the native core where it must not be used."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the verifier used the native core ({name})")


def test_verify_never_uses_the_native_core(
    log: audit_log.AuditLog, signer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's fast paths are native; the check of what it wrote must not share them.
    log.append_many(_record_events(40))
    last = log.append_many(_record_events(3))
    monkeypatch.setattr(_native, "native", _Forbidden())
    report = verify_log(log.path, signer.verifier())
    assert report.tree_size == last.stop


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 3000),
    count=st.integers(0, 600),
    min_level=st.integers(0, 10),
    seed=st.integers(0, 2**32),
)
def test_native_compact_extend_is_the_python_one(
    size: int, count: int, min_level: int, seed: int
) -> None:
    rng = random.Random(seed)
    frontier = [rng.randbytes(32) for _ in range(size.bit_count())]
    leaves: list[bytes | bytearray] = [
        rng.randbytes(32) if i % 3 else bytearray(rng.randbytes(32)) for i in range(count)
    ]
    fast, slow = CompactRange(size, frontier), CompactRange(size, frontier)
    got = fast.extend(leaves, min_level, native=True)
    want = _python(slow.extend, leaves, min_level)
    assert got == want
    assert (fast.size, fast.hashes, fast.root()) == (slow.size, slow.hashes, slow.root())
    assert all(type(h) is bytes for h in fast.hashes)


def test_native_compact_extend_declines_other_hashes() -> None:
    assert native is not None
    assert native.compact_extend([], 0, [b"short"], 1) is None
    assert native.compact_extend([b"x" * 31], 1, [b"y" * 32], 1) is None
    tree = CompactRange()
    tree.extend([b"odd leaf", b"x" * 32, memoryview(b"y" * 32).tobytes()], native=True)
    ref = CompactRange()
    _python(ref.extend, [b"odd leaf", b"x" * 32, b"y" * 32])
    assert tree.root() == ref.root()


_flow_record = st.tuples(
    st.one_of(st.integers(-1, 2**53), st.booleans(), st.just(2**70)),
    st.integers(-1, 2**53),
    st.one_of(st.none(), st.binary(max_size=40), st.just(bytearray(b"ba"))),
    st.sampled_from(["allow", "quarantine", "deny", "maybe"]),
    st.one_of(
        st.none(),
        st.sampled_from(["dlp: card number", "x\ny", 'a "quoted" reason', "café ✓", "a\\b"]),
        st.just(3),
    ),
)


def _flow(
    monkeypatch: pytest.MonkeyPatch, clock: Iterable[int], shared: dict[str, Any], **kw: Any
) -> list[CanonicalEvent] | str:
    """flow_transfers with the clock's readings and a seeded random generator, or its
    refusal's text."""
    monkeypatch.setattr(ev, "_rng", random.Random(11))
    monkeypatch.setattr(ev._time, "time_ns", iter(clock).__next__)
    try:
        return ev.flow_transfers(**shared, **kw)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@settings(max_examples=300, deadline=None)
@given(
    shared=_shared,
    records=st.lists(_flow_record, min_size=1, max_size=6),
    fixed=st.booleans(),
    now=st.integers(1_700_000_000_000_000_000, 1_800_000_000_000_000_000),
)
def test_native_flow_events_are_the_python_ones(
    shared: dict[str, Any], records: list[tuple[Any, ...]], fixed: bool, now: int
) -> None:
    """Any records: the same events or the same refusal. The clock stands still, because the
    records the native core leaves to Python read it after the others."""
    at = T if fixed else None
    with pytest.MonkeyPatch.context() as mp:  # the templates, made once (drawing an id)
        _flow(mp, itertools.repeat(now), shared, records=records, at=at)
    with pytest.MonkeyPatch.context() as mp:
        got = _flow(mp, itertools.repeat(now), shared, records=records, at=at)
    with pytest.MonkeyPatch.context() as mp:
        want = _python(_flow, mp, itertools.repeat(now), shared, records=records, at=at)
    assert got == want
    if isinstance(got, list):
        assert all(type(e) is CanonicalEvent for e in got)


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.integers(0, 2**53 - 1),
            st.integers(0, 2**53 - 1),
            st.one_of(st.none(), st.binary(max_size=40)),
            st.sampled_from(["allow", "quarantine"]),
            st.sampled_from([None, "dlp: card number", 'a "quoted" reason', "café ✓"]),
        ),
        min_size=1,
        max_size=8,
    ),
    start=st.integers(1_700_000_000_000_000_000, 1_800_000_000_000_000_000),
    steps=st.lists(st.sampled_from([0, 1, 999_999, 1_000_000, -3, 10**9, -(10**9)]), max_size=8),
)
def test_native_flow_ids_and_times_follow_the_clock(
    records: list[tuple[Any, ...]], start: int, steps: list[int]
) -> None:
    """Valid records, a clock that moves across milliseconds and seconds (and back): the
    same ids and times, read from the clock once a record, in the same order."""
    clock = [start]
    for step in steps + [0] * len(records):
        clock.append(clock[-1] + step)
    shared = {"flow": "f1", "principal": "svc", "source_zone": "r", "source_topic": "p",
              "destination_zone": "i", "destination_topic": "q"}  # fmt: skip
    ev.flow_transfers(records, **shared)  # the templates, made once (reading the clock)
    with pytest.MonkeyPatch.context() as mp:
        got = _flow(mp, clock, shared, records=records)
    with pytest.MonkeyPatch.context() as mp:
        want = _python(_flow, mp, clock, shared, records=records)
    assert isinstance(got, list)
    assert got == want


def test_native_flow_events_take_the_common_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records as the flow runner passes them never leave the native loop."""
    calls: list[object] = []
    monkeypatch.setattr(ev, "flow_transfer", lambda **kw: calls.append(kw))
    records: list[ev.FlowRecord] = [
        (i % 3, i, b"r%d" % i if i % 2 else None, "allow" if i % 4 else "quarantine",
         None if i % 4 else "dlp: card number")
        for i in range(40)
    ]  # fmt: skip
    batch = ev.flow_transfers(
        records, flow="f1", principal="svc", source_zone="r", source_topic="p",
        destination_zone="i", destination_topic="q",
    )  # fmt: skip
    assert calls == []
    assert [e.event().data.extra["source_offset"] for e in batch] == list(range(40))
    assert all(e.body == rfc8785.dumps(json.loads(e.body)) for e in batch)
