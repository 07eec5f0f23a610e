"""Field transforms: mask, hash, tokenize, encrypt_fpe, generalize, date_shift, suppress,
redact_text. Each is configured by a frozen pydantic model; :data:`TransformSpec` is their
union, discriminated by ``type``, as ``trustzones.yaml`` embeds it per field of a flow.

>>> from trustzones.dlp.transforms import InMemoryKeys, Transformer, parse_transform
>>> t = Transformer(keys=InMemoryKeys(b"test master key, not for production"))
>>> t.apply(parse_transform({"type": "mask", "keep_last": 4}), "123-45-6789")
'***-**-6789'
>>> t.apply_record(
...     {"patient": {"id": "p-17", "age": 93, "zip": "12345"}},
...     {"patient.age": {"type": "generalize", "method": "age"},
...      "patient.zip": {"type": "generalize", "method": "zip"},
...      "patient.id": {"type": "suppress"}},
... )
{'patient': {'age': '90+', 'zip': '123**'}}

Transforms fail closed: a value of the wrong type, a missing key or vault, a value a
transform cannot handle raises :class:`~trustzones.errors.TransformError` naming the
transform, the field path and the reason, never the value. ``null`` passes through every
transform but ``suppress`` (it holds nothing). Outputs are strings except where noted
(``generalize`` with ``method: age`` keeps an integer age at or below the cap).

Keys come from a :class:`TransformKeys`: ``secret(purpose)`` with purpose
``"<transform>:<key name>"`` (``hash:default``, ``encrypt_fpe:cards``, ``tokenize:default``,
``date_shift:default``). A :class:`Transformer` caches what it derives from them and is
safe to share between threads.

Speed: when the optional native core ``trustzones_native`` is installed (``native/`` in the
source tree), FF1, the keyed HMACs of ``hash`` and ``date_shift``, ``mask`` of ASCII text and
the walk of a compiled plan whose paths are all object keys run there. Inside that walk,
every transform but ``tokenize`` also runs natively on the values where it succeeds (ASCII
text, ISO dates in their common forms, numbers of 64 bits) and passes any other value to
this module's function. The outputs and errors are the same as this module's
(``tests/dlp/test_dlp_native_transforms.py``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import threading
import unicodedata
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Annotated, Any, Literal, NoReturn, Protocol, TypeAlias, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from trustzones.dlp._ff1 import FF1
from trustzones.dlp._keyed import hmac_sha256
from trustzones.dlp._native import (
    ExecutorStep,
    NativeExecutor,
    NativeHmac,
    NativeModule,
    load_native,
)
from trustzones.dlp._validators import luhn_check_digit, luhn_valid
from trustzones.dlp.scanner import ENTITY_TYPES, Finding, Scanner, default_scanner
from trustzones.dlp.vault import TokenVault
from trustzones.errors import TransformError

__all__ = [
    "SUPPRESSED",
    "DateShiftSpec",
    "EncryptFpeSpec",
    "GeneralizeSpec",
    "HashSpec",
    "InMemoryKeys",
    "MaskSpec",
    "RedactTextSpec",
    "SuppressSpec",
    "TokenizeSpec",
    "TransformKeys",
    "TransformPlan",
    "TransformSpec",
    "Transformer",
    "apply_transform",
    "parse_transform",
    "redact_spans",
]


# -- keys ------------------------------------------------------------------------------


@runtime_checkable
class TransformKeys(Protocol):
    """Where transforms get their secrets. ``purpose`` is ``"<transform>:<key name>"``.

    Raise any exception when the secret is not available; the transform turns it into a
    :class:`~trustzones.errors.TransformError` (fail closed).
    """

    def secret(self, purpose: str) -> bytes: ...


class InMemoryKeys:
    """Secrets derived from one master key with HKDF-SHA-256 (``info`` = purpose): 32 bytes
    per purpose. For tests and demos; zones use the keys part."""

    def __init__(self, master: bytes) -> None:
        if len(master) < 16:
            raise ValueError("the master key must have at least 16 bytes")
        self._master = master

    def __repr__(self) -> str:
        return "InMemoryKeys(<hidden>)"

    def secret(self, purpose: str) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"trustzones/dlp/transform-keys/v1",
            info=purpose.encode(),
        ).derive(self._master)


# -- specs -----------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MaskSpec(_Spec):
    """Replace letters and digits by ``char``, keeping the first ``keep_first`` and last
    ``keep_last`` of them; other characters (separators) stay when ``keep_separators``.
    A value with no more letters and digits than would be kept is masked entirely."""

    type: Literal["mask"] = "mask"
    keep_first: int = Field(default=0, ge=0)
    keep_last: int = Field(default=4, ge=0)
    char: str = Field(default="*", min_length=1, max_length=1)
    keep_separators: bool = True


class HashSpec(_Spec):
    """Keyed HMAC-SHA-256 of the value (``secret("hash:<key>")``): stable for one key, so
    hashed fields still join. ``normalize`` first: ``casefold`` (e-mail addresses),
    ``digits`` (keep only digits, any digit form as ASCII: card numbers with any separators
    hash alike)."""

    type: Literal["hash"] = "hash"
    key: str = "default"
    encoding: Literal["hex", "base64url"] = "hex"
    length: int | None = Field(default=None, ge=16, le=64)
    normalize: Literal["none", "casefold", "digits"] = "none"
    prefix: str = ""


class TokenizeSpec(_Spec):
    """Replace the value by a token kept in the source zone's vault (``domain`` separates
    kinds of values). ``format: preserve`` makes a token of the same shape (digits stay
    digits, the last ``keep_last`` letters or digits stay as they are)."""

    type: Literal["tokenize"] = "tokenize"
    key: str = "default"
    domain: str = Field(default="default", min_length=1)
    format: Literal["random", "preserve"] = "random"
    prefix: str = "tok_"
    keep_last: int = Field(default=0, ge=0)


class EncryptFpeSpec(_Spec):
    """NIST SP 800-38G FF1 over the characters of the value that are in ``alphabet`` (the
    others stay in place), with AES key ``secret("encrypt_fpe:<key>")`` (16, 24 or 32
    bytes). The first ``keep_first`` and last ``keep_last`` numerals stay in clear.
    Full-width and other Unicode digits are folded to ASCII first (the output uses ASCII).
    ``luhn: invalid`` (digits only, ``keep_last: 0``) encrypts all but the check digit of
    a Luhn-valid number and appends a wrong check digit, so the output never passes as a
    card number and still decrypts."""

    type: Literal["encrypt_fpe"] = "encrypt_fpe"
    key: str = "default"
    alphabet: str = Field(default="0123456789", min_length=2)
    tweak: str = ""
    keep_first: int = Field(default=0, ge=0)
    keep_last: int = Field(default=0, ge=0)
    luhn: Literal["any", "invalid"] = "any"

    @model_validator(mode="after")
    def _check(self) -> EncryptFpeSpec:
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("alphabet must not repeat a character")
        if self.luhn == "invalid" and (self.alphabet != "0123456789" or self.keep_last):
            raise ValueError("luhn: invalid needs alphabet 0123456789 and keep_last 0")
        return self


class GeneralizeSpec(_Spec):
    """Coarsen a value. ``bucket``: a number to ``"30-39"`` (``width`` required);
    ``zip``: ``"12345"`` to ``"123**"`` (``keep`` digits; ``hipaa_zip`` turns the
    3-digit prefixes of areas under 20,000 people into ``000``); ``date``: an ISO date or
    date-time to ``"YYYY-MM"`` or ``"YYYY"``; ``age``: ages above ``cap`` to
    ``"<cap+1>+"`` (HIPAA: ``90+``), others kept (or bucketed when ``width`` is set)."""

    type: Literal["generalize"] = "generalize"
    method: Literal["bucket", "zip", "date", "age"]
    width: int | None = Field(default=None, ge=1)
    keep: int = Field(default=3, ge=0, le=5)
    hipaa_zip: bool = False
    granularity: Literal["month", "year"] = "month"
    cap: int = Field(default=89, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GeneralizeSpec:
        if self.method == "bucket" and self.width is None:
            raise ValueError("generalize method bucket needs width (e.g. width: 10)")
        return self


class DateShiftSpec(_Spec):
    """Shift an ISO date or date-time by a whole number of days, between ``-max_days`` and
    ``max_days`` and never 0, the same for every date of one subject: the shift is derived
    from HMAC(``secret("date_shift:<key>")``, value of the field at path ``subject``)."""

    type: Literal["date_shift"] = "date_shift"
    key: str = "default"
    max_days: int = Field(default=30, ge=1, le=36_500)
    subject: str = Field(min_length=1)


class SuppressSpec(_Spec):
    """Remove the field (an array element is removed from its array)."""

    type: Literal["suppress"] = "suppress"


class RedactTextSpec(_Spec):
    """Scan free text and replace each finding by ``[TYPE]`` (``style: type``) or by
    ``mask_char`` over its letters and digits (``style: mask``), keeping the rest."""

    type: Literal["redact_text"] = "redact_text"
    style: Literal["type", "mask"] = "type"
    types: tuple[str, ...] | None = None
    mask_char: str = Field(default="*", min_length=1, max_length=1)
    min_confidence: float = Field(default=0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _check(self) -> RedactTextSpec:
        if self.types is not None:
            unknown = sorted(set(self.types) - set(ENTITY_TYPES))
            if unknown:
                raise ValueError(f"unknown entity type(s) {unknown}; known: {ENTITY_TYPES}")
        return self


TransformSpec: TypeAlias = Annotated[
    MaskSpec
    | HashSpec
    | TokenizeSpec
    | EncryptFpeSpec
    | GeneralizeSpec
    | DateShiftSpec
    | SuppressSpec
    | RedactTextSpec,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[TransformSpec] = TypeAdapter(TransformSpec)


def parse_transform(data: object) -> TransformSpec:
    """Validate a mapping such as ``{"type": "mask", "keep_last": 4}`` into a spec
    (raises ``pydantic.ValidationError``)."""
    if isinstance(data, BaseModel):
        return _ADAPTER.validate_python(data.model_dump())
    return _ADAPTER.validate_python(data)


class _Suppressed:
    _instance: _Suppressed | None = None

    def __new__(cls) -> _Suppressed:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SUPPRESSED"


#: Returned by :meth:`Transformer.apply` for ``suppress``: the caller removes the field.
SUPPRESSED: Any = _Suppressed()


# -- helpers ---------------------------------------------------------------------------


def _fail(spec: _Spec | str, path: str, why: str) -> TransformError:
    name = spec if isinstance(spec, str) else getattr(spec, "type", "transform")
    return TransformError(f"{name} at {path or '<value>'}: {why}")


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def fold_digits(text: str) -> str:
    """NFKC, every Unicode decimal digit as its ASCII digit, and no format characters
    (zero-width spaces, bidi controls). Transforms that keep or encrypt digits work on this
    form, so a full-width or Arabic-Indic digit is never passed through untouched."""
    if text.isascii():
        return text
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        dec = unicodedata.decimal(ch, None)
        if dec is not None:
            out.append(chr(48 + dec))
        elif unicodedata.category(ch) not in ("Cf", "Mn", "Me"):
            out.append(ch)
    return "".join(out)


def _as_text(spec: _Spec, value: object, path: str) -> str:
    """Strings as they are, numbers as their decimal text; anything else fails."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise _fail(spec, path, f"expects a string or a number, got {_kind(value)}")


_ASCII_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DROP_ALNUM = str.maketrans(dict.fromkeys(_ASCII_ALNUM))
_MASK_TABLES: dict[str, dict[int, str]] = {}


def mask_text(
    text: str, *, keep_first: int, keep_last: int, char: str, keep_separators: bool
) -> str:
    """The masking of :class:`MaskSpec` on a string."""
    if not keep_separators:
        n = sum(1 for ch in text if ch.isalnum())
        if keep_first + keep_last >= n:
            keep_first = keep_last = 0
        out = []
        seen = 0
        for ch in text:
            if ch.isalnum():
                out.append(ch if seen < keep_first or seen >= n - keep_last else char)
                seen += 1
            else:
                out.append(char)
        return "".join(out)
    # Separators stay: keep the head and the tail, mask the letters and digits between.
    is_ascii = text.isascii()
    if is_ascii:
        n = len(text) - len(text.translate(_DROP_ALNUM))
    else:
        n = sum(1 for ch in text if ch.isalnum())
    if keep_first + keep_last >= n:
        keep_first = keep_last = 0
    start = 0
    if keep_first:
        seen = 0
        for start, ch in enumerate(text):  # noqa: B007 (used after the loop)
            if ch.isalnum():
                seen += 1
                if seen == keep_first:
                    break
        start += 1
    end = len(text)
    if keep_last:
        seen = 0
        for end in range(len(text) - 1, -1, -1):
            if text[end].isalnum():
                seen += 1
                if seen == keep_last:
                    break
    middle = text[start:end]
    if is_ascii:
        table = _MASK_TABLES.get(char)
        if table is None:
            table = str.maketrans(dict.fromkeys(_ASCII_ALNUM, char))
            _MASK_TABLES[char] = table
        middle = middle.translate(table)
    else:
        middle = "".join(char if ch.isalnum() else ch for ch in middle)
    return text[:start] + middle + text[end:]


def redact_spans(
    text: str,
    spans: list[tuple[int, int, str]],
    *,
    style: Literal["type", "mask"] = "type",
    mask_char: str = "*",
) -> str:
    """Replace each ``(start, end, type)`` span of ``text`` (non-overlapping) by ``[TYPE]``
    or by ``mask_char`` over its letters and digits."""
    out = []
    pos = 0
    for start, end, type_ in sorted(spans):
        if start < pos:
            start = pos
        if start >= end:
            continue
        out.append(text[pos:start])
        if style == "type":
            out.append(f"[{type_}]")
        else:
            out.append("".join(mask_char if ch.isalnum() else ch for ch in text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


# The 3-digit ZIP prefixes that HHS lists as covering fewer than 20,000 people (2000
# census); Safe Harbor de-identification replaces them with 000.
_HIPAA_ZIP3 = frozenset(
    [
        "036",
        "059",
        "063",
        "102",
        "203",
        "556",
        "692",
        "790",
        "821",
        "823",
        "830",
        "831",
        "878",
        "879",
        "884",
        "890",
        "893",
    ]
)
_ZIP = re.compile(r"(\d{5})(?:-\d{4})?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _parse_iso_date(spec: _Spec, text: str, path: str) -> dt.date:
    if not _ISO_DATE.match(text):
        raise _fail(spec, path, "expects an ISO 8601 date or date-time (YYYY-MM-DD...)")
    try:
        day = dt.date.fromisoformat(text[:10])
        if len(text) > 10:
            dt.datetime.fromisoformat(text)
    except ValueError:
        raise _fail(spec, path, "not a valid ISO 8601 date or date-time") from None
    return day


def _number(spec: _Spec, value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(spec, path, f"expects a number, got {_kind(value)}")
    if isinstance(value, str):
        try:
            return float(value.strip()) if value.strip() else float("nan")
        except ValueError:
            raise _fail(spec, path, "expects a number, got a non-numeric string") from None
    return float(value)


# -- the transformer -------------------------------------------------------------------

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PLAN_TOKEN = re.compile(
    rf'\.?(?P<ident>{_IDENT})|\[(?P<index>\d+)\]|\[(?P<star>\*)\]|\[(?P<key>"(?:[^"\\]|\\.)*")\]'
)
_STAR = object()
_MISSING = object()
PlanSegment: TypeAlias = str | int | object


def parse_field_path(path: str) -> tuple[PlanSegment, ...]:
    """Parse a field path of a transform plan: ``customer.cards[*].number``,
    ``items[0]``, ``["odd key"]``; ``[*]`` is every element of an array (or every value of
    an object). Raises ``ValueError`` when malformed."""
    import orjson

    out: list[PlanSegment] = []
    i = 0
    while i < len(path):
        m = _PLAN_TOKEN.match(path, i)
        if m is None:
            raise ValueError(f"malformed field path {path!r} at character {i}")
        tok = m.group(0)
        if m.group("ident") is not None:
            if (tok.startswith(".") and not out) or (out and not tok.startswith(".")):
                raise ValueError(f"malformed field path {path!r} at character {i}")
            out.append(m.group("ident"))
        elif m.group("index") is not None:
            out.append(int(m.group("index")))
        elif m.group("star") is not None:
            out.append(_STAR)
        else:
            out.append(orjson.loads(m.group("key")))
        i = m.end()
    if not out:
        raise ValueError("empty field path")
    return tuple(out)


class TransformPlan:
    """A validated, parsed ``{field path: spec}`` plan, ready to apply to many records."""

    __slots__ = ("_simple", "steps")

    def __init__(
        self,
        steps: list[
            tuple[str, TransformSpec, tuple[PlanSegment, ...], tuple[PlanSegment, ...] | None]
        ],
    ) -> None:
        self.steps = steps
        #: Per step, the concrete path of its field when every segment is a key (no index,
        #: no ``[*]``): such steps are applied in place on copies made once per record.
        self._simple: list[str | None] = [
            ".".join(segs) if all(type(seg) is str for seg in segs) else None  # type: ignore[arg-type]
            for _, _, segs, _ in steps
        ]

    @classmethod
    def compile(cls, plan: Mapping[str, TransformSpec | Mapping[str, Any]]) -> TransformPlan:
        """Parse every path and spec; raises :class:`~trustzones.errors.TransformError` for
        a malformed path and ``pydantic.ValidationError`` for a malformed spec."""
        steps = []
        for path, raw in plan.items():
            spec = raw if isinstance(raw, _Spec) else parse_transform(raw)
            try:
                segs = parse_field_path(path)
            except ValueError as exc:
                raise _fail(spec, path, str(exc)) from None
            subject_segs = None
            if isinstance(spec, DateShiftSpec):
                try:
                    subject_segs = parse_field_path(spec.subject)
                except ValueError:
                    raise _fail(
                        spec, path, f"subject {spec.subject!r} is not a field path"
                    ) from None
                if _STAR in subject_segs:
                    raise _fail(spec, path, f"subject {spec.subject} must name one field")
            steps.append((path, spec, segs, subject_segs))
        return cls(steps)


class Transformer:
    """Applies transform specs to values and records with one set of keys, one vault and
    one scanner (for ``redact_text``); caches derived keys and FF1 ciphers."""

    def __init__(
        self,
        *,
        keys: TransformKeys | None = None,
        vault: TokenVault | None = None,
        scanner: Scanner | None = None,
    ) -> None:
        self._keys = keys
        self._vault = vault
        self._scanner = scanner
        self._lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        self._hmacs: dict[str, Any] = {}
        #: The keyed digest of ``date_shift``, per (key name, native core in use).
        self._shift_hmacs: dict[tuple[str, bool], Callable[[bytes], bytes]] = {}
        self._ff1: dict[tuple[str, str], FF1] = {}
        #: The native core (``trustzones_native``) when installed: ``mask``, ``hash``,
        #: ``encrypt_fpe``, the HMAC of ``date_shift`` and the walk of plans of key paths run
        #: there, with the same outputs. None: all in Python.
        self._native: NativeModule | None = load_native()
        self._native_hmacs: dict[str, NativeHmac] = {}
        #: Per compiled plan of key paths: its native executor (None: not applicable).
        self._executors: dict[TransformPlan, NativeExecutor | None] = {}
        #: The plan that ran natively last, with its executor: a flow applies one plan to
        #: every record, and :meth:`apply_record` then goes straight to it. One tuple, read
        #: and replaced whole, so a thread never sees one plan with another's executor.
        self._last: tuple[TransformPlan, NativeExecutor] | None = None
        self._scanners: dict[tuple[tuple[str, ...] | None, float], Scanner] = {}
        self._dispatch: dict[type[_Spec], Callable[[Any, object, str, object], object]] = {
            MaskSpec: self._mask,
            HashSpec: self._hash,
            TokenizeSpec: self._tokenize,
            EncryptFpeSpec: self._fpe_encrypt,
            GeneralizeSpec: self._generalize,
            DateShiftSpec: self._date_shift,
            SuppressSpec: lambda spec, value, path, subject: SUPPRESSED,
            RedactTextSpec: self._redact_text,
        }

    # -- public ------------------------------------------------------------------------

    def batch(self) -> AbstractContextManager[None]:
        """Group the new tokens of many :meth:`apply_record` calls into one vault
        transaction (see :meth:`TokenVault.batch`): every token handed out inside the block
        is stored once the block exits normally; write the records that carry them after
        that. Without a vault this does nothing."""
        return self._vault.batch() if self._vault is not None else nullcontext()

    def apply(
        self, spec: TransformSpec, value: object, *, path: str = "", subject: object = None
    ) -> object:
        """Transform one value. ``path`` names the field in errors; ``subject`` is the
        subject's identifier for ``date_shift``. Returns :data:`SUPPRESSED` for
        ``suppress``."""
        if value is None and not isinstance(spec, SuppressSpec):
            return None
        fn = self._dispatch.get(type(spec))
        if fn is None:
            raise _fail("transform", path, f"unknown transform spec {type(spec).__name__}")
        try:
            return fn(spec, value, path, subject)
        except TransformError:
            raise
        except Exception as exc:
            # Never pass on a message that might quote the value.
            raise _fail(spec, path, f"failed ({type(exc).__name__})") from None

    def apply_record(
        self,
        record: object,
        plan: TransformPlan | Mapping[str, TransformSpec | Mapping[str, Any]],
    ) -> object:
        """A copy of ``record`` with each ``path: spec`` of ``plan`` applied in order
        (paths as in :func:`parse_field_path`). A missing field is skipped; a field whose
        container has the wrong type fails. ``date_shift`` subjects are read from the
        original record. Compile a plan once with :meth:`TransformPlan.compile` when it is
        applied to many records."""
        last = self._last
        if last is not None and last[0] is plan:
            return last[1].apply(record)
        compiled = plan if isinstance(plan, TransformPlan) else TransformPlan.compile(plan)
        if self._native is not None and compiled is plan:
            try:
                executor = self._executors[compiled]
            except KeyError:
                executor = self._native_executor(self._native, compiled)
                with self._lock:
                    if len(self._executors) >= 64:
                        self._executors.clear()
                    self._executors[compiled] = executor
            if executor is not None:
                self._last = (compiled, executor)
                return executor.apply(record)
        result = record
        # Containers this call copied (by id, holding them alive): only these are changed in
        # place, so the input is never modified and each container is copied at most once.
        owned: dict[int, object] = {}
        for (path, spec, segs, subject_segs), where in zip(
            compiled.steps, compiled._simple, strict=True
        ):
            subject = None
            if subject_segs is not None:
                assert isinstance(spec, DateShiftSpec)
                subject = self._subject(spec, subject_segs, record, path)
            if where is not None:
                result = self._apply_simple(result, spec, segs, where, path, subject, owned)
                continue

            def fn(
                value: object, where: str, spec: TransformSpec = spec, subject: object = subject
            ) -> object:
                return self.apply(spec, value, path=where, subject=subject)

            result = _apply_at(result, segs, 0, fn, path, "")
            owned.clear()  # the generic walk shares containers; copy afresh after it
        return result

    def _native_executor(self, native: NativeModule, plan: TransformPlan) -> NativeExecutor | None:
        """The native form of the loop of :meth:`apply_record` over :meth:`_apply_simple`
        steps, for a plan whose every path is made of keys: navigation and copy-on-write in
        Rust, ``suppress``, ``mask`` of any text (Python's ``str.isalnum`` decides, cached per
        character, outside ASCII), ``hash`` of ASCII text (any text without normalisation),
        ``redact_text`` of any text (without lone surrogates) with a native scanner, and
        ``encrypt_fpe`` (decimal digits; outside ASCII only full-width, Arabic-Indic and
        extended Arabic-Indic digits and zero-width or bidi format characters, which
        ``fold_simple_digits`` in ``native/src/transforms.rs`` folds as :func:`fold_digits`
        does), ``generalize`` and ``date_shift`` of the values on
        which they succeed (ISO dates in the forms of ``iso::parse`` in
        ``native/src/transforms.rs``) there too,
        every other transform (or value) through the same Python functions, with the same
        errors. None when the plan has another kind of step."""
        if any(where is None for where in plan._simple):
            return None
        steps: list[ExecutorStep] = []
        for (path, spec, segs, subject_segs), where in zip(plan.steps, plan._simple, strict=True):
            fn = self._dispatch.get(type(spec))
            if fn is None or where is None:
                return None  # the Python loop raises the error of an unknown spec

            def call(
                value: object,
                subject: object,
                spec: TransformSpec = spec,
                where: str = where,
                fn: Callable[[Any, object, str, object], object] = fn,
            ) -> object:
                try:
                    return fn(spec, value, where, subject)
                except TransformError:
                    raise
                except Exception as exc:
                    # Never pass on a message that might quote the value.
                    raise _fail(spec, where, f"failed ({type(exc).__name__})") from None

            subject_fn: Callable[[object], object] | None = None
            if subject_segs is not None:
                assert isinstance(spec, DateShiftSpec)

                def subject_fn(
                    record: object,
                    spec: DateShiftSpec = spec,
                    subject_segs: tuple[PlanSegment, ...] = subject_segs,
                    path: str = path,
                ) -> object:
                    return self._subject(spec, subject_segs, record, path)

            op: tuple[object, ...] | None = None
            if isinstance(spec, SuppressSpec):
                op = ("suppress",)
            elif isinstance(spec, MaskSpec):
                op = ("mask", spec.keep_first, spec.keep_last, spec.char, spec.keep_separators)
            elif isinstance(spec, HashSpec):
                secret = self._secret_or_none(spec, spec.key, where)
                if secret is not None:
                    op = (
                        "hash",
                        secret,
                        spec.encoding == "hex",
                        spec.length,
                        spec.prefix,
                        spec.normalize,
                    )
            elif isinstance(spec, GeneralizeSpec):
                op = self._native_generalize(spec)
            elif isinstance(spec, RedactTextSpec):
                engine = self._redact_scanner(spec)._native
                if engine is not None:
                    op = ("redact", engine, spec.style == "type", spec.mask_char)
            elif isinstance(spec, EncryptFpeSpec) and spec.alphabet == "0123456789":
                op = self._native_fpe(spec, where)
            elif isinstance(spec, DateShiftSpec) and subject_segs is not None:
                secret = self._secret_or_none(spec, spec.key, where)
                if secret is not None:
                    keyed_path = all(isinstance(seg, str) for seg in subject_segs)
                    native_subject = [str(seg) for seg in subject_segs] if keyed_path else None
                    op = ("date_shift", secret, spec.max_days, native_subject)
            steps.append(([str(seg) for seg in segs], op, call, subject_fn))

        def fail(step: int, depth: int, node: object) -> NoReturn:
            path, _spec, segs, _subject = plan.steps[step]
            at = ".".join(segs[:depth]) or "the top"  # type: ignore[arg-type]
            raise _fail("transform", path, f"expected an object at {at}, got {_kind(node)}")

        return native.PlanExecutor(steps, SUPPRESSED, fail)

    def _secret_or_none(self, spec: _Spec, key: str, where: str) -> bytes | None:
        """The secret for a native step; None leaves the step to its Python function, which
        raises the error of a missing key when a value comes."""
        try:
            return self._secret(spec, key, where)
        except TransformError:
            return None

    def _native_fpe(self, spec: EncryptFpeSpec, where: str) -> tuple[object, ...] | None:
        """The native op of an ``encrypt_fpe`` step over decimal digits; None when the key
        is missing or of the wrong size (the Python function raises that error)."""
        secret = self._secret_or_none(spec, spec.key, where)
        if secret is None or len(secret) not in (16, 24, 32):
            return None
        try:
            tweak = spec.tweak.encode()
        except UnicodeEncodeError:
            return None
        luhn_invalid = spec.luhn == "invalid"
        return ("fpe", secret, tweak, spec.keep_first, spec.keep_last, luhn_invalid)

    @staticmethod
    def _native_generalize(spec: GeneralizeSpec) -> tuple[object, ...] | None:
        """The native op of a ``generalize`` step (it handles the values on which the
        Python function succeeds, and passes every other value to it)."""
        if spec.method == "zip":
            return ("zip", spec.keep, spec.hipaa_zip)
        if spec.method == "date":
            return ("date_trunc", spec.granularity == "year")
        # Native floats represent integers exactly only up to 2**53.
        if spec.cap > 2**53 or (spec.width is not None and spec.width > 2**53):
            return None
        return ("number", spec.method == "age", spec.width, spec.cap)

    def _apply_simple(
        self,
        result: object,
        spec: TransformSpec,
        segs: tuple[PlanSegment, ...],
        where: str,
        path: str,
        subject: object,
        owned: dict[int, object],
    ) -> object:
        """One step whose path is all keys: what :func:`_apply_at` does (same errors, same
        result), with copy-on-write shared between the steps of one record."""
        node = result
        last = len(segs) - 1
        for i, seg in enumerate(segs):
            if node is None:
                return result
            if type(node) is not dict and not isinstance(node, dict):
                at = ".".join(segs[:i]) or "the top"  # type: ignore[arg-type]
                raise _fail("transform", path, f"expected an object at {at}, got {_kind(node)}")
            child = node.get(seg, _MISSING)
            if child is _MISSING:
                return result
            node = child
        # What :meth:`apply` does, without the extra call.
        value = node
        if value is None and not isinstance(spec, SuppressSpec):
            r: object = None
        else:
            fn = self._dispatch.get(type(spec))
            if fn is None:
                raise _fail("transform", where, f"unknown transform spec {type(spec).__name__}")
            try:
                r = fn(spec, value, where, subject)
            except TransformError:
                raise
            except Exception as exc:
                # Never pass on a message that might quote the value.
                raise _fail(spec, where, f"failed ({type(exc).__name__})") from None
        if id(result) not in owned:
            result = dict(result)  # type: ignore[call-overload]
            owned[id(result)] = result
        parent: dict[object, object] = result  # type: ignore[assignment]
        for seg in segs[:last]:
            child = parent[seg]
            if id(child) not in owned:
                child = dict(child)  # type: ignore[call-overload]
                owned[id(child)] = child
                parent[seg] = child
            parent = child
        if r is SUPPRESSED:
            del parent[segs[last]]
        else:
            parent[segs[last]] = r
        return result

    def decrypt_fpe(self, spec: EncryptFpeSpec, value: object, *, path: str = "") -> str:
        """Invert ``encrypt_fpe`` with the same spec and keys."""
        try:
            return self._fpe(spec, _as_text(spec, value, path), path, decrypt=True)
        except TransformError:
            raise
        except Exception as exc:
            raise _fail(spec, path, f"decryption failed ({type(exc).__name__})") from None

    # -- keys ----------------------------------------------------------------------------

    def _secret(self, spec: _Spec, key: str, path: str) -> bytes:
        purpose = f"{getattr(spec, 'type', 'transform')}:{key}"
        hit = self._secrets.get(purpose)
        if hit is not None:
            return hit
        if self._keys is None:
            raise _fail(spec, path, f"no keys configured (needs the secret {purpose!r})")
        try:
            secret = self._keys.secret(purpose)
        except Exception as exc:
            raise _fail(
                spec, path, f"key {purpose!r} is not available ({type(exc).__name__})"
            ) from None
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise _fail(spec, path, f"key {purpose!r} must be at least 16 bytes")
        with self._lock:
            self._secrets[purpose] = secret
        return secret

    # -- transforms ----------------------------------------------------------------------

    def _mask(self, spec: MaskSpec, value: object, path: str, _s: object) -> str:
        native = self._native
        if native is not None and type(value) is str and value.isascii():
            masked = native.mask_ascii(
                value,
                keep_first=spec.keep_first,
                keep_last=spec.keep_last,
                char=spec.char,
                keep_separators=spec.keep_separators,
            )
            if masked is not None:
                return masked
        return mask_text(
            _as_text(spec, value, path),
            keep_first=spec.keep_first,
            keep_last=spec.keep_last,
            char=spec.char,
            keep_separators=spec.keep_separators,
        )

    def _hash(self, spec: HashSpec, value: object, path: str, _s: object) -> str:
        text = _as_text(spec, value, path)
        if spec.normalize == "casefold":
            text = fold_digits(text).strip().casefold()
        elif spec.normalize == "digits":
            text = "".join(ch for ch in fold_digits(text) if "0" <= ch <= "9")
        if self._native is not None:
            keyed = self._native_hmacs.get(spec.key)
            if keyed is None:
                keyed = self._native.HmacSha256(self._secret(spec, spec.key, path))
                with self._lock:
                    self._native_hmacs[spec.key] = keyed
            return keyed.hash_text(
                text, hex=spec.encoding == "hex", length=spec.length, prefix=spec.prefix
            )
        base = self._hmacs.get(spec.key)
        if base is None:
            base = hmac.new(self._secret(spec, spec.key, path), digestmod=hashlib.sha256)
            with self._lock:
                self._hmacs[spec.key] = base
        h = base.copy()
        h.update(text.encode("utf-8", "surrogatepass"))
        digest = h.digest()
        if spec.encoding == "hex":
            out = digest.hex()
        else:
            out = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if spec.length is not None:
            out = out[: spec.length]
        return spec.prefix + out

    def _tokenize(self, spec: TokenizeSpec, value: object, path: str, _s: object) -> str:
        if self._vault is None:
            raise _fail(spec, path, "no token vault configured for this zone")
        text = _as_text(spec, value, path)
        try:
            return self._vault.tokenize(
                text,
                domain=spec.domain,
                index_key=self._secret(spec, spec.key, path),
                format=spec.format,
                prefix=spec.prefix,
                keep_last=spec.keep_last,
                scanner=self._scanner,
                field=path or None,  # a new token is checked as the content of its field
            )
        except TransformError as exc:
            if str(exc).startswith(f"tokenize at {path or '<value>'}:"):
                raise
            raise _fail(spec, path, str(exc)) from None

    def _cipher(self, spec: EncryptFpeSpec, path: str) -> FF1:
        native = self._native is not None
        ck = (spec.key, spec.alphabet)
        ff1 = self._ff1.get(ck)
        if ff1 is None or ff1.native != native:
            secret = self._secret(spec, spec.key, path)
            if len(secret) not in (16, 24, 32):
                raise _fail(spec, path, f"key encrypt_fpe:{spec.key} must be 16, 24 or 32 bytes")
            ff1 = FF1(secret, spec.alphabet, native=native)
            with self._lock:
                self._ff1[ck] = ff1
        return ff1

    def _fpe_encrypt(self, spec: EncryptFpeSpec, value: object, path: str, _s: object) -> str:
        # Full-width and other digit forms are folded to ASCII first: left as they are,
        # they would pass through unencrypted.
        return self._fpe(spec, fold_digits(_as_text(spec, value, path)), path, decrypt=False)

    def _fpe(self, spec: EncryptFpeSpec, text: str, path: str, *, decrypt: bool) -> str:
        ff1 = self._cipher(spec, path)
        alphabet = set(spec.alphabet)
        positions = [i for i, ch in enumerate(text) if ch in alphabet]
        numerals = "".join(text[i] for i in positions)
        lo = spec.keep_first
        hi = len(numerals) - spec.keep_last
        if spec.luhn == "invalid":
            if not decrypt and not (len(numerals) >= 2 and luhn_valid(numerals)):
                raise _fail(spec, path, "luhn: invalid needs a Luhn-valid number")
            hi = len(numerals) - 1
        middle = numerals[lo:hi] if hi > lo else ""
        if len(middle) < ff1.minlen:
            raise _fail(
                spec,
                path,
                f"needs at least {ff1.minlen} numerals to encrypt (FF1 domain of at least "
                f"10^6), got {len(middle)}",
            )
        tweak = spec.tweak.encode()
        done = ff1.decrypt(middle, tweak) if decrypt else ff1.encrypt(middle, tweak)
        out_numerals = numerals[:lo] + done
        if spec.luhn == "invalid":
            check = luhn_check_digit(out_numerals)
            last = check if decrypt else str((int(check) + 1) % 10)
            out_numerals += last
        else:
            out_numerals += numerals[hi:]
        out = list(text)
        for i, ch in zip(positions, out_numerals, strict=True):
            out[i] = ch
        return "".join(out)

    def _generalize(self, spec: GeneralizeSpec, value: object, path: str, _s: object) -> object:
        if spec.method == "zip":
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 99999:
                text = f"{value:05d}"
            elif isinstance(value, str):
                text = value.strip()
            else:
                raise _fail(spec, path, f"expects a ZIP code, got {_kind(value)}")
            m = _ZIP.fullmatch(text)
            if m is None:
                raise _fail(spec, path, "expects a 5-digit ZIP code (or ZIP+4)")
            prefix = m.group(1)[: spec.keep]
            if spec.hipaa_zip and m.group(1)[:3] in _HIPAA_ZIP3:
                prefix = "0" * len(prefix)
            return prefix + "*" * (5 - len(prefix))
        if spec.method == "date":
            if not isinstance(value, str):
                raise _fail(spec, path, f"expects an ISO 8601 date string, got {_kind(value)}")
            day = _parse_iso_date(spec, value, path)
            return (
                f"{day.year:04d}"
                if spec.granularity == "year"
                else f"{day.year:04d}-{day.month:02d}"
            )
        x = _number(spec, value, path)
        if x != x or x in (float("inf"), float("-inf")):
            raise _fail(spec, path, "expects a finite number")
        if spec.method == "age":
            if x < 0:
                raise _fail(spec, path, "an age cannot be negative")
            if x > spec.cap:
                return f"{spec.cap + 1}+"
            if spec.width is None:
                return int(x)
        width = spec.width
        assert width is not None  # checked by the model
        lo = int(x // width) * width
        return f"{lo}-{lo + width - 1}"

    def _subject(
        self,
        spec: DateShiftSpec,
        segs: tuple[PlanSegment, ...],
        record: object,
        path: str,
    ) -> object:
        node = record
        for seg in segs:
            if isinstance(seg, str) and isinstance(node, dict) and seg in node:
                node = node[seg]
                continue
            if isinstance(seg, int) and isinstance(node, list) and seg < len(node):
                node = node[seg]
                continue
            raise _fail(spec, path, f"subject field {spec.subject} is missing")
        if node is None or isinstance(node, dict | list | bool):
            raise _fail(spec, path, f"subject field {spec.subject} must be a string or number")
        return node

    def _date_shift(self, spec: DateShiftSpec, value: object, path: str, subject: object) -> str:
        if subject is None or isinstance(subject, dict | list | bool):
            raise _fail(spec, path, f"needs the value of the subject field {spec.subject}")
        if not isinstance(value, str):
            raise _fail(spec, path, f"expects an ISO 8601 date string, got {_kind(value)}")
        day = _parse_iso_date(spec, value, path)
        data = str(subject).encode()
        ck = (spec.key, self._native is not None)
        keyed = self._shift_hmacs.get(ck)
        if keyed is None:
            keyed = hmac_sha256(self._secret(spec, spec.key, path), native=ck[1])
            with self._lock:
                self._shift_hmacs[ck] = keyed
        digest = keyed(data)
        k = int.from_bytes(digest[:8], "big") % (2 * spec.max_days)
        days = k - spec.max_days if k < spec.max_days else k - spec.max_days + 1
        try:
            shifted = day + dt.timedelta(days=days)
        except OverflowError:
            raise _fail(spec, path, "the shifted date is out of range") from None
        return shifted.isoformat() + value[10:]

    def _redact_scanner(self, spec: RedactTextSpec) -> Scanner:
        key = (spec.types, spec.min_confidence)
        scanner = self._scanners.get(key)
        if scanner is None:
            if spec.types is None and spec.min_confidence == 0.5 and self._scanner is not None:
                scanner = self._scanner
            elif spec.types is None and spec.min_confidence == 0.5:
                scanner = default_scanner()
            else:
                scanner = Scanner(types=spec.types, min_confidence=spec.min_confidence)
            with self._lock:
                self._scanners[key] = scanner
        return scanner

    def _redact_text(self, spec: RedactTextSpec, value: object, path: str, _s: object) -> str:
        if not isinstance(value, str):
            raise _fail(spec, path, f"expects a string, got {_kind(value)}")
        findings: list[Finding] = self._redact_scanner(spec).scan_text(value)
        return redact_spans(
            value,
            [(f.start, f.end, f.type) for f in findings],
            style=spec.style,
            mask_char=spec.mask_char,
        )


def _apply_at(
    node: object,
    segs: tuple[PlanSegment, ...],
    i: int,
    fn: Callable[[object, str], object],
    plan_path: str,
    where: str,
) -> object:
    """Copy-on-write application of ``fn`` at ``segs[i:]`` under ``node``."""
    if i == len(segs):
        return fn(node, where or plan_path)
    if node is None:
        return None
    seg = segs[i]
    if seg is _STAR:
        if isinstance(node, list):
            out_list = []
            for j, child in enumerate(node):
                r = _apply_at(child, segs, i + 1, fn, plan_path, f"{where}[{j}]")
                if r is not SUPPRESSED:
                    out_list.append(r)
            return out_list
        if isinstance(node, dict):
            out_dict = {}
            for k, child in node.items():
                r = _apply_at(child, segs, i + 1, fn, plan_path, f"{where}[{_quote(k)}]")
                if r is not SUPPRESSED:
                    out_dict[k] = r
            return out_dict
        raise _fail("transform", plan_path, f"expected an array or object at {where or 'the top'}")
    if isinstance(seg, int):
        if not isinstance(node, list):
            raise _fail(
                "transform",
                plan_path,
                f"expected an array at {where or 'the top'}, got {_kind(node)}",
            )
        if seg >= len(node):
            return node
        r = _apply_at(node[seg], segs, i + 1, fn, plan_path, f"{where}[{seg}]")
        copy = list(node)
        if r is SUPPRESSED:
            del copy[seg]
        else:
            copy[seg] = r
        return copy
    assert isinstance(seg, str)
    if not isinstance(node, dict):
        raise _fail(
            "transform", plan_path, f"expected an object at {where or 'the top'}, got {_kind(node)}"
        )
    if seg not in node:
        return node
    r = _apply_at(node[seg], segs, i + 1, fn, plan_path, f"{where}.{seg}" if where else seg)
    new = dict(node)
    if r is SUPPRESSED:
        del new[seg]
    else:
        new[seg] = r
    return new


def _quote(key: object) -> str:
    import orjson

    return orjson.dumps(str(key)).decode()


def apply_transform(
    spec: TransformSpec | Mapping[str, Any],
    value: object,
    *,
    keys: TransformKeys | None = None,
    vault: TokenVault | None = None,
    path: str = "",
    subject: object = None,
) -> object:
    """Apply one spec to one value (see :meth:`Transformer.apply`). For many values,
    build one :class:`Transformer` and reuse it: it caches keys and ciphers."""
    parsed = spec if isinstance(spec, _Spec) else parse_transform(spec)
    return Transformer(keys=keys, vault=vault).apply(parsed, value, path=path, subject=subject)
