"""scan_record / scan_text: paths, offsets, normalisation, context, keys, and the promise
that a finding never carries the value; on every engine, and how the engine is chosen."""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterator

import pytest

from trustzones.dlp import (
    ENTITY_TYPES,
    EngineUnavailable,
    Finding,
    Scanner,
    scan_record,
    scan_text,
)
from trustzones.dlp import (
    scanner as scanner_module,
)
from trustzones.dlp._normalize import normalize, to_original
from trustzones.dlp._paths import parse_path, render_path

CARD = "4111 1111 1111 1111"


@pytest.fixture(autouse=True, params=["native", "hyperscan", "python"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test of this module runs on each engine: ``Scanner()`` and the module-level
    functions pick it up from the environment."""
    monkeypatch.setenv("TRUSTZONES_DLP_ENGINE", request.param)
    monkeypatch.setattr(scanner_module, "_default", None)
    yield request.param
    used = scanner_module._default
    assert used is None or used.engine == request.param


def spans(findings: list[Finding]) -> list[tuple[str, str, int, int]]:
    return [(f.type, f.path, f.start, f.end) for f in findings]


def test_paths_of_nested_values() -> None:
    record = {
        "customer": {"cards": [{"number": CARD}, {"number": "5555555555554444"}]},
        "odd key": {"e-mail": "ann@example.com"},
        "list": [[1, "x"], ["+1 415 555 0132"]],
    }
    assert spans(scan_record(record)) == [
        ("CREDIT_CARD", "customer.cards[0].number", 0, 19),
        ("CREDIT_CARD", "customer.cards[1].number", 0, 16),
        ("EMAIL_ADDRESS", '["odd key"]["e-mail"]', 0, 15),
        ("PHONE_NUMBER", "list[1][0]", 0, 15),
    ]


def test_top_level_values() -> None:
    assert spans(scan_record(CARD)) == [("CREDIT_CARD", "", 0, 19)]
    assert spans(scan_record(4111111111111111)) == [("CREDIT_CARD", "", 0, 16)]
    assert spans(scan_record([None, True, 1.5, CARD])) == [("CREDIT_CARD", "[3]", 0, 19)]
    assert scan_record(None) == []
    assert scan_record({}) == []


def test_numbers_are_scanned_as_decimal_text() -> None:
    found = scan_record({"a": 5555555555554444, "b": 0.5, "c": True})
    assert spans(found) == [("CREDIT_CARD", "a", 0, 16)]


def test_offsets_point_into_the_original_string() -> None:
    text = "Paid with ４１１１\u200b１１１１ １１１１ １１１１, thanks"
    (f,) = scan_text(text)
    assert text[f.start : f.end] == "４１１１\u200b１１１１ １１１１ １１１１"


def test_zero_width_and_combining_characters_do_not_hide_an_ssn() -> None:
    text = "ssn 1\u200d2\u03013-4\ufeff5-6789!"
    (f,) = scan_text(text)
    assert (f.type, text[f.start : f.end]) == ("US_SSN", "1\u200d2\u03013-4\ufeff5-6789")


def test_normalize_maps_offsets_back() -> None:
    norm, imap = normalize("a\u200bb０")
    assert norm == "ab0"
    assert imap == [0, 2, 3]
    assert to_original(imap, 1, 3) == (2, 4)
    assert normalize("plain ascii") == ("plain ascii", None)
    assert normalize("ÉTÉ ①②")[0] == "ETE 12"
    assert normalize("番号")[0] == "\x1a\x1a"


def test_cjk_text_next_to_a_number_still_has_a_word_boundary() -> None:
    text = "カード番号4111111111111111です"
    (f,) = scan_text(text)
    assert text[f.start : f.end] == "4111111111111111"


def test_field_name_context_from_camel_and_snake_case() -> None:
    for key in ("ssn", "SSN", "customer_ssn", "socialSecurityNumber", "social_security"):
        assert spans(scan_record({key: "123456789"})) == [("US_SSN", key, 0, 9)], key
    assert scan_record({"order_id": "123456789"}) == []


def test_context_is_inherited_by_nested_fields() -> None:
    record = {"ssn_history": [{"value": "123456789"}]}
    assert spans(scan_record(record)) == [("US_SSN", "ssn_history[0].value", 0, 9)]


def test_a_key_holding_a_finding_is_hidden_in_paths() -> None:
    record = {"balances": {"x": 1, "4111111111111111": {"amount": "ann@example.com"}}}
    found = scan_record(record)
    assert spans(found) == [
        ("CREDIT_CARD", "balances{#1}", 0, 16),
        ("EMAIL_ADDRESS", "balances{#1}.amount", 0, 15),
    ]
    assert found[0].in_key
    assert all("4111" not in repr(f) for f in found)


def test_keys_are_not_scanned_when_disabled() -> None:
    scanner = Scanner(scan_keys=False)
    assert scanner.scan_record({"4111111111111111": 1}) == []


def test_finding_repr_never_contains_the_value() -> None:
    secret = "AKIAIOSFODNN7EXAMPLE"
    (f,) = scan_record({"note": f"key {secret}"})
    assert secret not in repr(f)
    assert secret not in str(f.to_dict())
    assert f.to_dict() == {
        "path": "note",
        "type": "AWS_ACCESS_KEY_ID",
        "start": 4,
        "end": 24,
        "confidence": 0.9,
    }


def test_unsupported_types_are_refused() -> None:
    with pytest.raises(TypeError, match=r"cannot scan a bytes at data\[0\]"):
        scan_record({"data": [b"4111111111111111"]})


def test_subclasses_of_json_types_are_scanned() -> None:
    class Code(enum.IntEnum):
        PAN = 4111111111111111

    found = scan_record(OrderedDict(a=Code.PAN, b=("ann@example.com",)))
    assert spans(found) == [("CREDIT_CARD", "a", 0, 16), ("EMAIL_ADDRESS", "b[0]", 0, 15)]


def test_scan_records_equals_one_by_one() -> None:
    records = [{"a": CARD}, {"b": "nothing"}, ["ann@example.com", {"c": "SSN 123-45-6789"}]]
    scanner = Scanner()
    assert scanner.scan_records(records) == [scanner.scan_record(r) for r in records]


def test_types_filter_and_min_confidence() -> None:
    text = f"{CARD} ann@example.com"
    assert [f.type for f in Scanner(types=["EMAIL_ADDRESS"]).scan_text(text)] == ["EMAIL_ADDRESS"]
    assert Scanner(min_confidence=0.95).scan_text("ann@example.com") == []
    with pytest.raises(ValueError, match="unknown entity type"):
        Scanner(types=["NOPE"])


def test_overlapping_candidates_keep_the_best() -> None:
    # "+1 415 555 0132" matches both phone rules; one finding remains.
    assert [f.type for f in scan_text("+1 415 555 0132")] == ["PHONE_NUMBER"]


def test_entity_type_names() -> None:
    for name in (
        "CREDIT_CARD",
        "US_SSN",
        "IBAN",
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "IP_ADDRESS",
        "AWS_ACCESS_KEY_ID",
        "GITHUB_TOKEN",
        "JWT",
        "PRIVATE_KEY",
    ):
        assert name in ENTITY_TYPES


@pytest.mark.parametrize(
    "segments",
    [
        (("a", 0), ("b", 1), 3, ("c d", 0)),
        ((".x", 0), ('q"uote', 1)),
        (0, 1, ("_k9", 2)),
        (),
    ],
)
def test_paths_round_trip(segments: tuple[tuple[str, int] | int, ...]) -> None:
    path = render_path(segments, frozenset())
    parsed = parse_path(path)
    assert [arg for _, arg in parsed] == [s if isinstance(s, int) else s[0] for s in segments]


def test_parse_path_rejects_garbage() -> None:
    for bad in (".a", "a..b", "a[", "a[x]", "{#}", "a b"):
        with pytest.raises(ValueError, match="malformed"):
            parse_path(bad)


# -- choosing the engine ---------------------------------------------------------------


def test_the_environment_picks_the_engine_and_the_keyword_wins(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Scanner().engine == engine
    assert Scanner(engine="python").engine == "python"
    monkeypatch.delenv("TRUSTZONES_DLP_ENGINE")
    assert Scanner().engine == "native"  # the fastest that loads


def test_an_unknown_engine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        EngineUnavailable,
        match=r"^unknown DLP engine 'rust'; use one of auto, native, hyperscan, python$",
    ):
        Scanner(engine="rust")  # type: ignore[arg-type]
    monkeypatch.setenv("TRUSTZONES_DLP_ENGINE", "fast")
    with pytest.raises(
        EngineUnavailable,
        match=r"^TRUSTZONES_DLP_ENGINE='fast' is not a DLP engine; "
        r"use one of auto, native, hyperscan, python$",
    ):
        Scanner()


def test_asking_for_an_engine_that_is_not_installed_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scanner_module, "native_available", lambda: False)
    with pytest.raises(
        EngineUnavailable,
        match=r"^the DLP engine 'native' is not installed here: build and install it from "
        r"the trustzones source tree with `python -m pip install \./native` \(needs Rust and "
        r"cargo\); or choose another engine \(native, hyperscan, python\)$",
    ):
        Scanner(engine="native")
    monkeypatch.setattr(scanner_module, "hyperscan_available", lambda: False)
    with pytest.raises(EngineUnavailable, match=r"^the DLP engine 'hyperscan' is not installed"):
        Scanner(engine="hyperscan")
    # auto falls back to the pure-Python reference, which is always there.
    monkeypatch.delenv("TRUSTZONES_DLP_ENGINE")
    assert Scanner().engine == "python"
