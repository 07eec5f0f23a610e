"""The three engines give identical findings: the pure-Python reference, Hyperscan, and the
native (Rust) core ``trustzones_native`` built from ``native/``."""

from __future__ import annotations

import re
from collections.abc import Callable

import hyperscan
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustzones.dlp import Finding, Scanner, hyperscan_available, native_available
from trustzones.dlp._native import load_native
from trustzones.dlp._rules import KEYWORDS, RULES
from trustzones.dlp.synth import Synth

HS = Scanner(engine="hyperscan")
PY = Scanner(engine="python")
NA = Scanner(engine="native")


def test_all_engines_load_here() -> None:
    # The project depends on hyperscan; the fallback is for platforms without a wheel.
    # scripts/test.sh builds and installs the native core (python -m pip install ./native).
    assert hyperscan_available()
    assert native_available(), "build the native core: python -m pip install ./native"
    assert HS.engine == "hyperscan"
    assert PY.engine == "python"
    assert NA.engine == "native"
    assert Scanner().engine == "native"


def outcome(fn: Callable[[], object]) -> object:
    """What a call returns, or the type and message of what it raises."""
    try:
        return fn()
    except Exception as exc:  # the engines must fail alike too
        return (type(exc), str(exc))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rules_compile_in_both_engines_and_never_match_nul_or_empty(rule: object) -> None:
    regex = rule.regex  # type: ignore[attr-defined]
    rx = re.compile(regex, re.ASCII)
    assert rx.search("") is None
    db = hyperscan.Database()
    exprs = [regex.encode()]
    if rule.prefilter:  # type: ignore[attr-defined]
        exprs.append(rule.prefilter.encode())  # type: ignore[attr-defined]
    db.compile(
        expressions=exprs, ids=list(range(len(exprs))), elements=len(exprs), flags=[0] * len(exprs)
    )
    for m in rx.finditer("\x00".join(["a", "4111 1111 1111 1111", "b@c.de", "::1", "\x00\x00"])):
        assert "\x00" not in m.group(0)


def test_keyword_patterns_compile_in_hyperscan() -> None:
    db = hyperscan.Database()
    exprs = [rx.encode() for rx in KEYWORDS.values()]
    db.compile(
        expressions=exprs,
        ids=list(range(len(exprs))),
        elements=len(exprs),
        flags=[hyperscan.HS_FLAG_CASELESS] * len(exprs),
    )


def test_engines_agree_on_a_generated_corpus() -> None:
    synth = Synth(seed=424242)
    records = [synth.event() for _ in range(400)]
    want = PY.scan_records(records)
    assert sum(map(len, want)) > 1000  # the corpus does hold findings
    assert HS.scan_records(records) == want
    assert NA.scan_records(records) == want
    assert [HS.scan_record(r) for r in records[:50]] == want[:50]
    assert [NA.scan_record(r) for r in records[:50]] == want[:50]


def test_native_findings_are_findings() -> None:
    (f,) = NA.scan_record({"card": "4111 1111 1111 1111"})
    assert type(f) is Finding
    assert f == Finding("CREDIT_CARD", "card", 0, 19, 0.99, False)
    assert f._replace(start=1).start == 1


_FRAGMENTS = [
    "4111 1111 1111 1111",
    "5555555555554444",
    "378282246310005",
    "123-45-6789",
    "123 45 6789",
    "DE89 3704 0044 0532 0130 00",
    "GB29NWBK60161331926819",
    "ann@example.com",
    "@",
    ".",
    "+1 415 555 0132",
    "(415) 555-0132",
    "+44 20 7946 0958",
    "192.168.0.1",
    "2001:db8::1",
    "::",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a" * 36,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.",
    "ssn",
    "-----BEGIN PRIVATE KEY-----",
    "-----END PRIVATE KEY-----",
    "AIza",
    "xoxb-",
    "sk_live_",
    "４",
    "٣",
    "\u200b",
    "\u0301",
    "番",
    " ",
    "-",
    ":",
    "\n",
    "\\n",
    "SSN: ",
    "card ",
]
_ALPHABET = "0123456789 -.:+()@_abcdefABCDEFxyzXYZ/=\\\n\u200b４٣é番"

text_strategy = st.lists(
    st.one_of(st.sampled_from(_FRAGMENTS), st.text(alphabet=_ALPHABET, max_size=20)), max_size=12
).map("".join)

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        text_strategy,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["ssn", "phone", "card_number", "version", "x"]), text_strategy
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=12,
)


_FIELDS = ["ssn", "phone", "card_number", "version", "x", "ipAddress", "Email", "iban", "note"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_strategy, st.one_of(st.none(), st.sampled_from(_FIELDS)))
def test_engines_agree_on_generated_text(text: str, field: str | None) -> None:
    want = PY.scan_text(text, field=field)
    assert HS.scan_text(text, field=field) == want
    assert NA.scan_text(text, field=field) == want
    assert NA.detects(text) == PY.detects(text) == bool(PY.scan_text(text))
    for f in want:
        assert 0 <= f.start < f.end <= len(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_engines_agree_on_generated_records(record: object) -> None:
    want = PY.scan_record(record)
    assert HS.scan_record(record) == want
    assert NA.scan_record(record) == want


# Flat records of many fields: the native engine splits such a text at field boundaries
# and walks the pieces in step (``Engine::fire_lanes``); findings must not depend on
# where the pieces start or end, nor on a key seen before as the same object or not.
_many_fields = st.one_of(
    st.lists(text_strategy, min_size=3, max_size=16),
    st.dictionaries(
        st.one_of(st.sampled_from(_FIELDS), st.text(alphabet="abcxyz_", min_size=1, max_size=6)),
        text_strategy,
        min_size=3,
        max_size=16,
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_many_fields)
def test_native_agrees_on_records_of_many_fields(record: object) -> None:
    want = PY.scan_record(record)
    assert NA.scan_record(record) == want
    assert NA.scan_record(record) == want  # again, with the keys' objects cached
    assert NA.scan_records([record, record]) == [want, want]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200))
def test_engines_agree_on_arbitrary_unicode(text: str) -> None:
    want = PY.scan_text(text)
    assert HS.scan_text(text) == want
    assert NA.scan_text(text) == want


# Lone surrogates cannot be UTF-8: the native engine hands such strings to Python.
_any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
_odd_records = st.recursive(
    st.one_of(_any_text, st.sampled_from(["4111 1111 1111 1111", "ssn 123-45-6789"])),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(_any_text, st.sampled_from(_FIELDS)), children, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_odd_records)
def test_native_agrees_on_any_code_point_including_surrogates(record: object) -> None:
    assert outcome(lambda: NA.scan_record(record)) == outcome(lambda: PY.scan_record(record))


_odd_values = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.binary(max_size=3),
    st.tuples(st.integers(min_value=10**12, max_value=10**19)),
    st.dictionaries(
        st.one_of(st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False)),
        st.integers(min_value=4 * 10**15, max_value=5 * 10**15),
        max_size=3,
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _odd_values, max_size=4))
def test_native_agrees_on_numbers_non_string_keys_and_unsupported_types(record: object) -> None:
    assert outcome(lambda: NA.scan_record(record)) == outcome(lambda: PY.scan_record(record))


# Values of every kind under keys the native engine already knows by their object (the
# interned names of ``_FIELDS``): it reads such members without Python's help, borrowing
# the dict's references, and must convert each value exactly as the Python walk does.
class _Text(str):
    pass


_known_key_values = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.booleans(),
    st.none(),
    text_strategy,
    _any_text,
    text_strategy.map(_Text),
    st.lists(text_strategy, max_size=2),
    st.dictionaries(st.sampled_from(_FIELDS), text_strategy, max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(_FIELDS), _known_key_values, min_size=1, max_size=6))
def test_native_agrees_on_values_under_known_keys(record: dict[str, object]) -> None:
    want = outcome(lambda: PY.scan_record(record))
    for _ in range(2):  # the second time, every clean key is known by its object
        assert outcome(lambda: NA.scan_record(record)) == want


def test_native_refuses_a_dict_changed_while_it_is_scanned() -> None:
    # A key that is not a str is converted by calling str() on it, which runs Python code:
    # the native walk borrows the dict's entries, so a change meanwhile must stop it.
    record: dict[object, object] = {}

    class Grows:
        def __str__(self) -> str:
            record[len(record)] = "x"
            return "k"

    record[Grows()] = "4111 1111 1111 1111"
    record["name"] = "x"
    with pytest.raises(RuntimeError, match="changed size"):
        NA.scan_record(record)


# ``_VERSION_WORDS`` (``version|\bver\b|\bv\.?\s*$|release|build``) in the 12 characters
# before an IPv4 address: a ``str`` pattern, whose ``\s`` takes the separators 0x1c-0x1f.
@pytest.mark.parametrize(
    "prefix",
    ["v", "v ", "v.", "v.\x1c", "v\x1c", "v\x1f ", "V\t", "xv ", "_v ", "v.a ", "ver ", "vers ",
     "over ", "Ver:", "build ", "rebuild", "Release", "releas ", "version", "-v ", "(v.",
     "app v9 ", "ver\x1c"],
)  # fmt: skip
def test_native_version_words_before_an_ip_address(prefix: str) -> None:
    for text in (prefix + "10.1.2.3", "x " + prefix + "10.1.2.3 y"):
        assert NA.scan_text(text) == PY.scan_text(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="vVerEsionRlabud ._-\t\x1c\x1f9", max_size=16))
def test_native_version_words_agree_on_generated_prefixes(prefix: str) -> None:
    text = prefix + "10.1.2.3"
    assert NA.scan_text(text) == PY.scan_text(text)


@pytest.mark.parametrize(
    "options",
    [
        {"scan_keys": False},
        {"min_confidence": 0.8},
        {"types": ["US_SSN", "PHONE_NUMBER", "IP_ADDRESS"]},
    ],
)
def test_native_agrees_with_scanner_options(options: dict[str, object]) -> None:
    synth = Synth(seed=99)
    records = [synth.event() for _ in range(200)]
    records.append({"4111111111111111": {"ssn": "123456789"}, "phone": "call 415 555 0132"})
    py = Scanner(engine="python", **options)  # type: ignore[arg-type]
    na = Scanner(engine="native", **options)  # type: ignore[arg-type]
    assert na.scan_records(records) == py.scan_records(records)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=6))
def test_a_batch_scans_like_its_records_one_by_one(records: list[object]) -> None:
    # One pass over the batch must give each record exactly its own findings, paths
    # included (a key that holds a finding in one record hides nothing in another).
    for scanner in (HS, PY, NA):
        assert scanner.scan_records(records) == [scanner.scan_record(r) for r in records]


def test_native_keeps_no_state_between_batches() -> None:
    # The native engine caches what keys need, only for keys that held nothing: a key
    # that holds a card is found every time, and a clean key stays clean.
    records = [{"4111111111111111": "x", "name": "4111111111111111"}] * 3
    for _ in range(2):
        assert NA.scan_records(records) == PY.scan_records(records)


_FLOAT_EDGES = [
    0.0, -0.0, 1.0, -1.5, 0.1, 1e-4, 1e-5, 9.999e-5, 1e15, 1e16, 9999999999999998.0,
    1234567890123456.0, 12345678901234567.0, 5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, 2.0**53, 2.0**53 + 2, 1024.35, 0.30000000000000004, 1e22, 1e23,
]  # fmt: skip


@pytest.mark.parametrize("x", _FLOAT_EDGES)
def test_native_float_text_is_repr_on_edges(x: float) -> None:
    # The native walk writes a float's text itself; it must be Python's repr exactly,
    # or offsets (and findings) in numbers would differ from the reference.
    native = load_native()
    assert native is not None
    assert native.float_text(x) == repr(x)
    assert native.float_text(-x) == repr(-x)


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_native_float_text_is_repr(x: float) -> None:
    native = load_native()
    assert native is not None
    assert native.float_text(x) == repr(x)


@settings(max_examples=2000, deadline=None)
@given(
    st.decimals(
        min_value=-(10**15), max_value=10**15, allow_nan=False, allow_infinity=False, places=6
    ),
    st.integers(min_value=0, max_value=12),
)
def test_native_float_text_is_repr_for_short_decimals(x: object, places: int) -> None:
    # Amounts, coordinates, latencies: the native fast path for floats of few decimals.
    value = round(float(x), places)  # type: ignore[arg-type]
    native = load_native()
    assert native is not None
    assert native.float_text(value) == repr(value)
    assert native.float_text(value / 1000) == repr(value / 1000)


def test_native_float_text_leaves_inf_and_nan_to_python() -> None:
    native = load_native()
    assert native is not None
    for x in (float("inf"), float("-inf"), float("nan")):
        assert native.float_text(x) is None
    # ... and a record holding them still scans like the reference.
    record = {"a": float("inf"), "b": [float("nan"), -float("inf")], "card": 4111111111111111.0}
    assert NA.scan_record(record) == PY.scan_record(record)


# Text made of the validators' candidates: digit runs with separators (cards in groups,
# long international phone numbers whose digits pass the validators' in-place buffers),
# SSN and NANP shapes, compact and spaced IBANs in either case, Slack-like tokens.
_VALIDATOR_PIECES = st.one_of(
    st.text(alphabet="0123456789", min_size=1, max_size=19),
    st.sampled_from([" ", "-", ".", "(", ")", "+", "+1 ", "+44 ", "+49-", " (0)", "\n"]),
    st.sampled_from(["4111", "1111", "5500", "0000", "3782", "822463", "10005", "6011"]),
    st.sampled_from(
        ["4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005", "5500 0000 0000 0004"]
    ),
    st.sampled_from(["6011 0009 9013 9424", "4111 1111 1111 1", " 1234 5678 9012 3456 789"]),
    st.lists(st.text(alphabet="0123456789", min_size=1, max_size=4), min_size=8, max_size=20).map(
        lambda groups: "+44 " + " ".join(groups)
    ),
    st.sampled_from(["078-05-1120", "123-45-6789", "123 45 6789", "(415) 555-0132"]),
    st.sampled_from(["GB82 WEST 1234 5698 7654 32", "gb82west12345698765432", "DE89 3704"]),
    st.sampled_from(["xoxb-", "xoxp-12-", "-a-", "SSN ", "phone ", "card "]),
)
_validator_text = st.lists(_VALIDATOR_PIECES, max_size=40).map("".join)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_validator_text, st.one_of(st.none(), st.sampled_from(_FIELDS)))
def test_native_validators_agree_on_candidate_rich_text(text: str, field: str | None) -> None:
    assert NA.scan_text(text, field=field) == PY.scan_text(text, field=field)
