"""redact_findings: the redact action of a flow."""

from __future__ import annotations

import pytest

from trustzones.dlp import Finding, redact_findings, scan_record
from trustzones.errors import TransformError


def test_redact_by_type_and_mask() -> None:
    record = {
        "customer": {"cards": [{"number": "4111 1111 1111 1111"}], "email": "ann@example.com"},
        "note": "call +1 415 555 0132 or ssn 123-45-6789, thanks",
        "pan": 5555555555554444,
        "ok": "nothing here",
    }
    found = scan_record(record)
    out = redact_findings(record, found)
    assert out == {
        "customer": {"cards": [{"number": "[CREDIT_CARD]"}], "email": "[EMAIL_ADDRESS]"},
        "note": "call [PHONE_NUMBER] or ssn [US_SSN], thanks",
        "pan": "[CREDIT_CARD]",
        "ok": "nothing here",
    }
    masked = redact_findings(record, found, style="mask")
    assert isinstance(masked, dict)
    assert masked["note"] == "call +* *** *** **** or ssn ***-**-****, thanks"
    assert record["pan"] == 5555555555554444  # the input is not modified
    assert scan_record(out) == [] and scan_record(masked) == []


def test_redact_keys() -> None:
    record = {"balances": {"4111111111111111": {"owner": "ann@example.com"}, "x": 1}}
    out = redact_findings(record, scan_record(record))
    assert out == {"balances": {"[CREDIT_CARD]": {"owner": "[EMAIL_ADDRESS]"}, "x": 1}}


def test_redact_unicode_offsets() -> None:
    record = {"n": "カード４１１１\u200b１１１１ １１１１ １１１１です"}
    assert redact_findings(record, scan_record(record)) == {"n": "カード[CREDIT_CARD]です"}


@pytest.mark.parametrize(
    "finding",
    [
        Finding("US_SSN", "missing", 0, 3, 0.9),
        Finding("US_SSN", "a", 0, 99, 0.9),
        Finding("US_SSN", "a[0]", 0, 1, 0.9),
        Finding("US_SSN", "a..b", 0, 1, 0.9),
        Finding("US_SSN", "b", 0, 1, 0.9),
    ],
)
def test_redaction_that_does_not_fit_fails_closed(finding: Finding) -> None:
    with pytest.raises(TransformError, match="redact"):
        redact_findings({"a": "123-45-6789", "b": {"c": 1}}, [finding])
