"""The native core's transforms (``trustzones_native``: FF1, keyed hash, mask) give exactly
the outputs of the Python code, which stays the reference: checked with hypothesis on
keys, alphabets, tweaks and texts of every kind, and on whole records."""

from __future__ import annotations

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


def outcome_record(t: Transformer, record: object, plan: TransformPlan) -> object:
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
