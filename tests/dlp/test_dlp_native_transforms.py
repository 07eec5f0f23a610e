"""The native core's transforms (``trustzones_native``: FF1, keyed hash, mask) give exactly
the outputs of the Python code, which stays the reference: checked with hypothesis on
keys, alphabets, tweaks and texts of every kind, and on whole records."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustzones.dlp import InMemoryKeys, Transformer, TransformPlan, parse_transform
from trustzones.dlp._ff1 import FF1
from trustzones.dlp.synth import Synth
from trustzones.dlp.transforms import mask_text
from trustzones.errors import TransformError

KEYS = InMemoryKeys(b"native transforms test master key")


def transformers() -> tuple[Transformer, Transformer]:
    native = Transformer(keys=KEYS)
    python = Transformer(keys=KEYS)
    python._native = None
    assert native._native is not None, "build the native core: python -m pip install ./native"
    return native, python


NATIVE, PYTHON = transformers()


def outcome(t: Transformer, spec: Any, value: object) -> object:
    try:
        return t.apply(spec, value, path="f")
    except TransformError as exc:
        return ("TransformError", str(exc))


# -- FF1 ----------------------------------------------------------------------------------

alphabets = st.one_of(
    st.just("0123456789"),
    st.just("01"),
    st.lists(st.characters(codec="utf-8"), min_size=2, max_size=80, unique=True).map("".join),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    alphabets,
    st.data(),
    st.binary(max_size=40),
)
def test_native_ff1_equals_the_python_ff1(
    key: bytes, alphabet: str, data: st.DataObject, tweak: bytes
) -> None:
    python = FF1(key, alphabet, native=False)
    native = FF1(key, alphabet, native=True)
    text = data.draw(
        st.text(alphabet=alphabet, min_size=python.minlen, max_size=python.minlen + 40)
    )
    ct = python.encrypt(text, tweak)
    assert native.encrypt(text, tweak) == ct
    assert native.decrypt(ct, tweak) == text
    assert python.decrypt(text, tweak) == native.decrypt(text, tweak)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.text(alphabet="0123456789", min_size=6, max_size=40),
    st.binary(max_size=48),
)
def test_native_decimal_ff1_equals_the_python_ff1(key: bytes, text: str, tweak: bytes) -> None:
    # Radix 10 up to 36 numerals has its own native path (one AES call per round): every
    # tweak length moves the round input within the blocks of Q.
    python = FF1(key, native=False)
    native = FF1(key, native=True)
    ct = python.encrypt(text, tweak)
    assert native.encrypt(text, tweak) == ct
    assert native.decrypt(ct, tweak) == text
    assert native.decrypt(text, tweak) == python.decrypt(text, tweak)


def test_native_ff1_keeps_the_python_errors() -> None:
    native = FF1(bytes(16), native=True)
    with pytest.raises(
        ValueError, match=r"^FF1 input must have 6 or more numerals \(radix 10\), got 5$"
    ):
        native.encrypt("12345")
    with pytest.raises(ValueError, match=r"^FF1 input has a character outside the alphabet$"):
        native.encrypt("12345x")


# -- hash and mask ----------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789-. ()abcXYZ", max_size=30),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),  # surrogates too
    st.integers(),
    st.floats(allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(
    texts,
    st.sampled_from(["hex", "base64url"]),
    st.one_of(st.none(), st.integers(min_value=16, max_value=64)),
    st.sampled_from(["none", "casefold", "digits"]),
    st.sampled_from(["", "h_"]),
)
def test_native_hash_equals_python(
    value: object, encoding: str, length: int | None, normalize: str, prefix: str
) -> None:
    spec = parse_transform(
        {
            "type": "hash",
            "encoding": encoding,
            "length": length,
            "normalize": normalize,
            "prefix": prefix,
        }
    )
    assert outcome(NATIVE, spec, value) == outcome(PYTHON, spec, value)


@settings(max_examples=400, deadline=None)
@given(
    texts,
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=0, max_value=8),
    st.sampled_from(["*", "#", "x", "•"]),
    st.booleans(),
)
def test_native_mask_equals_python(
    value: object, keep_first: int, keep_last: int, char: str, keep_separators: bool
) -> None:
    spec = parse_transform(
        {
            "type": "mask",
            "keep_first": keep_first,
            "keep_last": keep_last,
            "char": char,
            "keep_separators": keep_separators,
        }
    )
    got = outcome(NATIVE, spec, value)
    assert got == outcome(PYTHON, spec, value)
    if isinstance(value, str):
        assert got == mask_text(
            value,
            keep_first=keep_first,
            keep_last=keep_last,
            char=char,
            keep_separators=keep_separators,
        )


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(texts, st.text(alphabet="0123456789０１２３- ", max_size=25)),
    st.sampled_from(
        [
            {},
            {"keep_last": 4},
            {"luhn": "invalid"},
            {"alphabet": "abcdefghij"},
            {"keep_first": 6, "tweak": "t"},
        ]
    ),
)
def test_native_encrypt_fpe_equals_python(value: object, extra: dict[str, Any]) -> None:
    spec = parse_transform({"type": "encrypt_fpe", **extra})
    assert outcome(NATIVE, spec, value) == outcome(PYTHON, spec, value)


def test_records_transform_alike() -> None:
    plan = TransformPlan.compile(
        {
            "customer.email": {"type": "hash", "normalize": "casefold", "length": 32},
            "customer.phone": {"type": "mask", "keep_last": 2},
            "customer.ssn": {"type": "mask", "keep_last": 4},
            "payment.card_number": {"type": "encrypt_fpe", "keep_last": 4},
            "payment.iban": {"type": "mask", "keep_last": 4},
            "source.ip": {"type": "hash", "length": 16, "encoding": "base64url"},
        }
    )
    synth = Synth(seed=31)
    changed = 0
    for _ in range(300):
        record = synth.event()
        before = orjson.dumps(record)
        got = [outcome_record(t, record, plan) for t in (NATIVE, PYTHON)]
        assert got[0] == got[1]
        assert orjson.dumps(record) == before  # the input is never modified
        changed += got[0] != record
    assert changed > 200


def outcome_record(t: Transformer, record: object, plan: TransformPlan | dict[str, Any]) -> object:
    try:
        return t.apply_record(record, plan)
    except TransformError as exc:
        return ("TransformError", str(exc))


# -- whole plans: the native executor of apply_record -------------------------------------


class Sub(dict):  # type: ignore[type-arg]
    """A dict subclass: looked up with its own ``get``, copied with ``dict()``."""


_keys = st.sampled_from(["a", "b", "c", "d"])
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**18), max_value=10**18),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(alphabet="0123456789- ", max_size=20),
    st.sampled_from(["2024-02-29", "2024-02-29T10:11:12", "12345-6789", "ann@example.com"]),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=8),
)
_records = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.dictionaries(_keys, children, max_size=4),
        st.dictionaries(_keys, children, max_size=3).map(Sub),
        st.lists(children, max_size=2),
    ),
    max_leaves=10,
)


def _maybe(**members: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    obj = st.fixed_dictionaries({}, optional=members)
    return st.one_of(_leaves, obj, obj.map(Sub))


# Records shaped like the plans below, so that most steps find their field.
_shaped = st.fixed_dictionaries(
    {},
    optional={
        "a": _maybe(b=_maybe(c=_leaves)),
        "b": _maybe(c=_leaves),
        "c": _maybe(a=_leaves),
        "d": _maybe(d=_leaves),
    },
)
_specs = st.sampled_from(
    [
        {"type": "mask"},
        {"type": "mask", "keep_first": 2, "keep_last": 0, "keep_separators": False},
        {"type": "hash"},
        {"type": "hash", "encoding": "base64url", "length": 20, "prefix": "h:"},
        {"type": "hash", "normalize": "casefold"},
        {"type": "suppress"},
        {"type": "encrypt_fpe", "keep_last": 2},
        {"type": "generalize", "method": "zip"},
        {"type": "generalize", "method": "date", "granularity": "month"},
        {"type": "date_shift", "subject": "d", "max_days": 10},
        {"type": "redact_text"},
    ]
)
_plans = st.dictionaries(
    st.sampled_from(["a", "b", "a.b", "a.b.c", "b.c", "c.a", "d.d"]), _specs, min_size=1, max_size=5
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_shaped, _shaped.map(Sub), _records), _plans)
def test_native_plan_executor_equals_the_python_loop(record: object, raw: dict[str, Any]) -> None:
    plan = TransformPlan.compile(raw)
    before = repr(record)
    native = outcome_record(NATIVE, record, plan)
    python = outcome_record(PYTHON, record, plan)
    assert repr(native) == repr(python)
    assert (native is record) == (python is record)  # unchanged records are not copied
    assert repr(record) == before  # the input is never modified
    assert NATIVE._executors[plan] is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_shaped, st.integers(0, 3)), min_size=1, max_size=8), _plans, _plans)
def test_one_transformer_applies_each_plan_it_is_given(
    calls: list[tuple[object, int]], raw_a: dict[str, Any], raw_b: dict[str, Any]
) -> None:
    # ``apply_record`` goes straight to the executor of the plan it ran last: plans given in
    # turn (compiled ones, a mapping, one of index paths without an executor) must each be
    # applied as themselves, also twice in a row.
    plans: list[TransformPlan | dict[str, Any]] = [
        TransformPlan.compile(raw_a),
        TransformPlan.compile(raw_b),
        raw_a,
        TransformPlan.compile({"a[0]": {"type": "mask"}, **raw_b}),
    ]
    native = Transformer(keys=KEYS)
    for record, which in calls:
        plan = plans[which]
        compiled = plan if isinstance(plan, TransformPlan) else TransformPlan.compile(plan)
        want = outcome_record(PYTHON, record, compiled)
        assert repr(outcome_record(native, record, plan)) == repr(want)


def test_the_executor_finds_keys_of_any_object() -> None:
    # The executor learns the key objects of the first record (decoders hand out one
    # object per key text); records whose keys are other, equal objects transform alike.
    plan = TransformPlan.compile(
        {"customer.phone": {"type": "mask"}, "customer.address.zip": {"type": "suppress"}}
    )

    def record(build: Any) -> dict[str, Any]:
        address = {build("zip"): "12345", build("street"): "Main St 1"}
        return {build("customer"): {build("phone"): "555 0100", build("address"): address}}

    for build in (
        lambda k: k,
        lambda k: "".join(list(k)),  # equal text, a new object each time
        lambda k: orjson.loads(orjson.dumps(k)),
    ):
        for make in (record, lambda b: Sub(record(b))):
            r = make(build)
            before = repr(r)
            want = outcome_record(PYTHON, r, plan)
            assert want == {"customer": {"phone": "*** 0100", "address": {"street": "Main St 1"}}}
            assert outcome_record(NATIVE, r, plan) == want
            assert repr(r) == before


def test_the_executor_is_used_only_for_plans_of_key_paths() -> None:
    keyed = TransformPlan.compile({"a.b": {"type": "mask"}})
    indexed = TransformPlan.compile({"a[0]": {"type": "mask"}, "b[*]": {"type": "mask"}})
    record = {"a": {"b": "12345678"}}
    assert NATIVE.apply_record(record, keyed) == {"a": {"b": "****5678"}}
    assert PYTHON.apply_record(record, keyed) == {"a": {"b": "****5678"}}
    record = {"a": ["12345678"], "b": ["123456"]}
    assert NATIVE.apply_record(record, indexed) == {"a": ["****5678"], "b": ["**3456"]}
    assert PYTHON.apply_record(record, indexed) == {"a": ["****5678"], "b": ["**3456"]}
    assert NATIVE._executors[keyed] is not None
    assert NATIVE._executors[indexed] is None


def test_the_executor_fails_closed_like_python() -> None:
    plan = TransformPlan.compile({"a.b": {"type": "mask"}, "c": {"type": "hash"}})
    for record in ({"a": [1]}, {"a": {"b": ["x"]}}, {"a": 1}, [1], "x"):
        native = outcome_record(NATIVE, record, plan)
        assert native == outcome_record(PYTHON, record, plan)
        assert isinstance(native, tuple) and native[0] == "TransformError"
    no_keys = Transformer()
    assert no_keys._native is not None
    assert outcome_record(no_keys, {"c": "x"}, plan) == (
        "TransformError",
        "hash at c: no keys configured (needs the secret 'hash:default')",
    )


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["2024-02-29", "1999-12-31T23:59:59+01:00", "0001-01-02", "9999-12-30"]),
    st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=False)),
    st.integers(min_value=1, max_value=4000),
)
def test_native_date_shift_equals_python(value: str, subject: object, max_days: int) -> None:
    spec = parse_transform({"type": "date_shift", "subject": "id", "max_days": max_days})

    def shifted(t: Transformer) -> object:
        try:
            return t.apply(spec, value, path="f", subject=subject)
        except TransformError as exc:
            return ("TransformError", str(exc))

    assert shifted(NATIVE) == shifted(PYTHON)


# -- transforms run inside the native executor ---------------------------------------------
# Each one-step plan below runs in the executor (native) and in the Python loop; outputs
# and error messages must be the same for any value, including those the native code
# passes back to Python.

_iso_dates = st.builds(
    lambda moment, sep, timespec, tz, suffix: (
        moment.replace(tzinfo=tz).isoformat(sep=sep, timespec=timespec) + suffix
    ),
    st.datetimes(),
    st.sampled_from(["T", " ", "t", "_"]),
    st.sampled_from(["auto", "seconds", "milliseconds", "microseconds", "minutes", "hours"]),
    st.one_of(
        st.none(),
        st.timedeltas(
            min_value=dt.timedelta(hours=-23, minutes=-59),
            max_value=dt.timedelta(hours=23, minutes=59),
        ).map(dt.timezone),
    ),
    st.sampled_from(["", "", "", "Z", "z", "x", " ", "+01:00", "-24:00", "+00:60"]),
)
_date_values = st.one_of(
    _iso_dates,
    st.dates().map(str),
    _iso_dates.map(lambda s: s[:10]),
    st.text(alphabet="0123456789-T:.+Z ", max_size=32),
    st.text(max_size=12),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)


def _same_in_executor(spec: dict[str, Any], record: dict[str, Any]) -> None:
    plan = TransformPlan.compile({"v": spec})
    before = repr(record)
    native = outcome_record(NATIVE, record, plan)
    assert NATIVE._executors[plan] is not None
    assert repr(native) == repr(outcome_record(PYTHON, record, plan))
    assert repr(record) == before


@settings(max_examples=400, deadline=None)
@given(
    _date_values,
    st.one_of(
        st.text(max_size=12),
        st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.booleans(),
        st.none(),
        st.dictionaries(st.just("x"), st.integers(), max_size=1),
    ),
    st.booleans(),
    st.integers(min_value=1, max_value=36_500),
    st.sampled_from(["id", "who.id"]),
)
def test_executor_date_shift_equals_python(
    value: object, subject: object, present: bool, max_days: int, subject_path: str
) -> None:
    spec = {"type": "date_shift", "subject": subject_path, "max_days": max_days}
    record: dict[str, Any] = {"v": value}
    if present:
        if subject_path == "id":
            record["id"] = subject
        else:
            record["who"] = {"id": subject}
    _same_in_executor(spec, record)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _date_values,
        st.integers(min_value=-10, max_value=100_010),
        st.from_regex(r"\s?\d{5}(-\d{4})?\s?", fullmatch=True),
        st.from_regex(r"[0-9\-]{4,11}", fullmatch=True),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(),
        st.from_regex(r" ?-?\d{1,6}(\.\d{0,3})? ?", fullmatch=True),
    ),
    st.sampled_from(
        [
            {"method": "zip"},
            {"method": "zip", "keep": 0},
            {"method": "zip", "keep": 5, "hipaa_zip": True},
            {"method": "zip", "keep": 2, "hipaa_zip": True},
            {"method": "date"},
            {"method": "date", "granularity": "year"},
            {"method": "bucket", "width": 10},
            {"method": "bucket", "width": 7},
            {"method": "bucket", "width": 2**53},
            {"method": "bucket", "width": 2**60},
            {"method": "age"},
            {"method": "age", "cap": 0},
            {"method": "age", "width": 5},
            {"method": "age", "cap": 2**60},
        ]
    ),
)
def test_executor_generalize_equals_python(value: object, extra: dict[str, Any]) -> None:
    _same_in_executor({"type": "generalize", **extra}, {"v": value})


def test_executor_generalize_hipaa_and_buckets() -> None:
    plan = TransformPlan.compile(
        {
            "zip": {"type": "generalize", "method": "zip", "hipaa_zip": True},
            "age": {"type": "generalize", "method": "age"},
            "n": {"type": "generalize", "method": "bucket", "width": 10},
            "day": {"type": "generalize", "method": "date"},
        }
    )
    record = {"zip": " 03601-1234", "age": 93, "n": -0.5, "day": "2024-02-29T10:11:12Z"}
    want = {"zip": "000**", "age": "90+", "n": "-10--1", "day": "2024-02"}
    assert NATIVE.apply_record(record, plan) == want
    assert PYTHON.apply_record(record, plan) == want


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=30),
        st.text(alphabet=" \t\x1c\x1fAbC@x.0123456789-", max_size=30),
        st.integers(),
        st.floats(),
    ),
    st.sampled_from(["casefold", "digits"]),
    st.sampled_from(["hex", "base64url"]),
)
def test_executor_normalised_hash_equals_python(
    value: object, normalize: str, encoding: str
) -> None:
    _same_in_executor({"type": "hash", "normalize": normalize, "encoding": encoding}, {"v": value})


_pii = st.sampled_from(
    [
        "4111 1111 1111 1111",
        "123-45-6789",
        "ann@example.com",
        "DE89 3704 0044 0532 0130 00",
        "10.0.0.1",
        "+1 415 555 0100",
        "AKIAIOSFODNN7EXAMPLE",
        "ssn",
        " ",
        "card ",
        "４１１１ １１１１ １１１１ １１１１",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(st.one_of(_pii, st.text(max_size=6)), max_size=6).map("".join),
        st.integers(),
        st.none(),
    ),
    st.sampled_from(
        [
            {},
            {"style": "mask"},
            {"style": "mask", "mask_char": "#"},
            {"types": ["EMAIL_ADDRESS", "US_SSN"]},
            {"min_confidence": 0.9},
        ]
    ),
)
def test_executor_redact_text_equals_python(value: object, extra: dict[str, Any]) -> None:
    _same_in_executor({"type": "redact_text", **extra}, {"v": value})


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(max_size=30),
        # Full-width and Arabic-Indic digits, zero-width and combining characters, letters
        # of other scripts: Python's str.isalnum decides what is masked.
        st.text(alphabet="0123456789０１２٣٤+-. ()\u200b\u0301éßΩж中\u2160\u00bd", max_size=25),
        st.text(st.characters(codec=None, exclude_categories=()), max_size=12),  # surrogates too
        st.integers(),
    ),
    st.integers(min_value=0, max_value=6),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(["*", "•"]),
    st.booleans(),
)
def test_executor_mask_of_any_text_equals_python(
    value: object, keep_first: int, keep_last: int, char: str, keep_separators: bool
) -> None:
    spec = {
        "type": "mask",
        "keep_first": keep_first,
        "keep_last": keep_last,
        "char": char,
        "keep_separators": keep_separators,
    }
    _same_in_executor(spec, {"v": value})


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="0123456789- ", max_size=25),
        st.text(max_size=12),
        st.integers(),
        st.floats(),
    ),
    st.sampled_from(
        [
            {},
            {"keep_last": 4},
            {"keep_first": 6, "keep_last": 4, "tweak": "t"},
            {"luhn": "invalid"},
            {"luhn": "invalid", "keep_first": 3},
        ]
    ),
)
def test_executor_encrypt_fpe_equals_python(value: object, extra: dict[str, Any]) -> None:
    _same_in_executor({"type": "encrypt_fpe", **extra}, {"v": value})


def test_executor_encrypt_fpe_of_a_card_stays_luhn_invalid() -> None:
    from trustzones.dlp._validators import luhn_valid

    plan = TransformPlan.compile({"v": {"type": "encrypt_fpe", "luhn": "invalid"}})
    out = NATIVE.apply_record({"v": "4111-1111-1111-1111"}, plan)
    assert isinstance(out, dict)
    assert out == PYTHON.apply_record({"v": "4111-1111-1111-1111"}, plan)
    digits = out["v"].replace("-", "")
    assert len(digits) == 16 and not luhn_valid(digits)


# -- text outside ASCII in redact_text and encrypt_fpe ------------------------------------

# Digits and separators of other forms (full-width, Arabic-Indic, extended Arabic-Indic,
# Devanagari, superscript), zero-width and bidi format characters, a combining mark and
# letters of other scripts: the native paths fold some of these themselves and must leave
# the rest to Python with the same result.
_WIDE = (
    "0123456789０１２３４５６７８９٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹०१२³"
    "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad"
)
_wide_pii = st.builds(
    lambda digits, seps: "".join(d + s for d, s in zip(digits, seps, strict=False)),
    st.text(alphabet=_WIDE, min_size=6, max_size=22),
    st.lists(st.sampled_from(["", "", "", " ", "-", "\u200b", "．", "\u3000"]), max_size=22),
)


def _counting(t: Transformer, spec_type: type) -> list[int]:
    """Count the calls of ``t``'s Python function for ``spec_type`` (before any plan runs)."""
    calls = [0]
    fn = t._dispatch[spec_type]

    def counted(*args: Any) -> object:
        calls[0] += 1
        return fn(*args)

    t._dispatch[spec_type] = counted
    return calls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            _pii,
            _wide_pii,
            st.sampled_from(["my card: ", " ssn ", " tel ", "Ω", "é", "中文 ", "e\u0301", "ß"]),
            st.text(max_size=6),
        ),
        max_size=6,
    ).map("".join),
    st.sampled_from(
        [
            {},
            {"style": "mask"},
            {"style": "mask", "mask_char": "•"},
            {"types": ["CREDIT_CARD", "US_SSN"]},
        ]
    ),
)
def test_executor_redact_text_outside_ascii_equals_python(
    value: str, extra: dict[str, Any]
) -> None:
    _same_in_executor({"type": "redact_text", **extra}, {"v": value})


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(_wide_pii, st.text(alphabet=_WIDE + " -", max_size=25)),
    st.sampled_from(
        [
            {},
            {"keep_last": 4},
            {"keep_first": 6, "keep_last": 4, "tweak": "t"},
            {"luhn": "invalid"},
        ]
    ),
)
def test_executor_encrypt_fpe_outside_ascii_equals_python(
    value: str, extra: dict[str, Any]
) -> None:
    _same_in_executor({"type": "encrypt_fpe", **extra}, {"v": value})


def test_redact_text_and_encrypt_fpe_outside_ascii_run_natively() -> None:
    from trustzones.dlp.transforms import EncryptFpeSpec, RedactTextSpec

    t = Transformer(keys=KEYS)
    redacts, fpes = _counting(t, RedactTextSpec), _counting(t, EncryptFpeSpec)
    plan = TransformPlan.compile(
        {"notes": {"type": "redact_text"}, "card": {"type": "encrypt_fpe", "keep_last": 4}}
    )
    record = {
        "notes": "new card: ٥٤٩١٤٥٠٥٧٠٤٧٣٩١٠ and SSN 735 08 7222, café",
        "card": "４８９９-９８４８-１６０３-４８４８",
    }
    out = t.apply_record(record, plan)
    assert out == PYTHON.apply_record(record, plan)
    assert isinstance(out, dict) and "[US_SSN]" in out["notes"]
    assert redacts == [0] and fpes == [0]
    # A character the native fold does not know (superscript three): Python folds it.
    odd = {"notes": "x", "card": "4899 9848 1603 48\u00b34"}
    assert t.apply_record(odd, plan) == PYTHON.apply_record(odd, plan)
    assert fpes == [1]
    # Too few digits once folded: Python raises its error, the record is refused.
    with pytest.raises(TransformError):
        t.apply_record({"card": "１２３\u200b４５"}, plan)
