"""The Hyperscan engine and the pure-Python fallback give identical findings."""

from __future__ import annotations

import re

import hyperscan
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustzones.dlp import Scanner, hyperscan_available
from trustzones.dlp._rules import KEYWORDS, RULES
from trustzones.dlp.synth import Synth

HS = Scanner(engine="hyperscan")
PY = Scanner(engine="python")


def test_hyperscan_loads_here() -> None:
    # The project depends on hyperscan; the fallback is for platforms without a wheel.
    assert hyperscan_available()
    assert HS.engine == "hyperscan"
    assert PY.engine == "python"


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
    assert HS.scan_records(records) == PY.scan_records(records)
    assert [HS.scan_record(r) for r in records[:50]] == [PY.scan_record(r) for r in records[:50]]


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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_strategy)
def test_engines_agree_on_generated_text(text: str) -> None:
    assert HS.scan_text(text) == PY.scan_text(text)
    for f in HS.scan_text(text):
        assert 0 <= f.start < f.end <= len(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_engines_agree_on_generated_records(record: object) -> None:
    assert HS.scan_record(record) == PY.scan_record(record)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_engines_agree_on_arbitrary_unicode(text: str) -> None:
    assert HS.scan_text(text) == PY.scan_text(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=6))
def test_a_batch_scans_like_its_records_one_by_one(records: list[object]) -> None:
    # One pass over the batch must give each record exactly its own findings, paths
    # included (a key that holds a finding in one record hides nothing in another).
    for scanner in (HS, PY):
        assert scanner.scan_records(records) == [scanner.scan_record(r) for r in records]
