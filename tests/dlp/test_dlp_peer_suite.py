"""A peer suite in the style of Presidio's predefined-recognizer tests: free-text sentences
with the exact spans expected. The cases are our own; where we deliberately differ from
Presidio's recognizers the case says so."""

from __future__ import annotations

import pytest

from trustzones.dlp import Scanner

SCANNERS = {engine: Scanner(engine=engine) for engine in ("native", "hyperscan", "python")}


def _case(text: str, *expected: tuple[str, str]) -> tuple[str, list[tuple[str, int, int]]]:
    spans = []
    pos = 0
    for type_, value in expected:
        start = text.index(value, pos)
        spans.append((type_, start, start + len(value)))
        pos = start + len(value)
    return text, spans


CASES = [
    # credit cards
    _case("my credit card: 4012888888881881", ("CREDIT_CARD", "4012888888881881")),
    _case("card 4012-8888-8888-1881 expires soon", ("CREDIT_CARD", "4012-8888-8888-1881")),
    _case("4012 8888 8888 1881 was declined", ("CREDIT_CARD", "4012 8888 8888 1881")),
    _case("two cards 4012888888881881 and 4012888888881882", ("CREDIT_CARD", "4012888888881881")),
    _case(
        "amex 371449635398431, diners 30569309025904",
        ("CREDIT_CARD", "371449635398431"),
        ("CREDIT_CARD", "30569309025904"),
    ),
    # Presidio's card pattern misses the Mastercard 2-series; we find it.
    _case("mc 2223003122003222 on file", ("CREDIT_CARD", "2223003122003222")),
    _case("order 4012888888881880 (not Luhn-valid)"),
    # US SSN
    _case("my ssn is 123-45-6789", ("US_SSN", "123-45-6789")),
    _case("SSN 123 45 6789.", ("US_SSN", "123 45 6789")),
    _case("social security number: 123456789", ("US_SSN", "123456789")),
    _case("invalid ssn 000-12-3456 and 666-45-6789"),
    _case("the Woolworth card number 078-05-1120 is void"),
    _case("ticket 123456789 was closed"),
    # IBAN
    _case("IBAN: DE89 3704 0044 0532 0130 00", ("IBAN", "DE89 3704 0044 0532 0130 00")),
    _case("pay GB29NWBK60161331926819 today", ("IBAN", "GB29NWBK60161331926819")),
    _case("bad iban GB29NWBK60161331926818"),
    # e-mail
    _case("contact info@example.org for help", ("EMAIL_ADDRESS", "info@example.org")),
    _case(
        "a.b-c+d@mail.example.co.uk, e@f.io",
        ("EMAIL_ADDRESS", "a.b-c+d@mail.example.co.uk"),
        ("EMAIL_ADDRESS", "e@f.io"),
    ),
    _case("retina image logo@2x.png"),
    # phone numbers
    _case("call (425) 882-9090 now", ("PHONE_NUMBER", "(425) 882-9090")),
    _case("my number is +1-425-882-9090", ("PHONE_NUMBER", "+1-425-882-9090")),
    _case(
        "office +44 20 7946 0958, home +49 30 1234567",
        ("PHONE_NUMBER", "+44 20 7946 0958"),
        ("PHONE_NUMBER", "+49 30 1234567"),
    ),
    # Presidio's phone recognizer fires on fractions of timestamps like this one.
    _case("took 04.507236 seconds"),
    # IP addresses
    _case("my ip is 192.168.0.1", ("IP_ADDRESS", "192.168.0.1")),
    _case(
        "ipv6 2001:db8::ff00:42:8329 and ::1",
        ("IP_ADDRESS", "2001:db8::ff00:42:8329"),
        ("IP_ADDRESS", "::1"),
    ),
    _case("not an ip 192.168.0.256 nor 1.2.3"),
    # secrets (Presidio has no recognizer for these)
    _case(
        "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
        ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
    ),
    _case("token ghp_" + "Ab1" * 12 + " leaked", ("GITHUB_TOKEN", "ghp_" + "Ab1" * 12)),
    # mixed
    _case(
        "Jane (jane@example.com, +1 415 555 0132) paid with 5555 5555 5555 4444 from 10.1.2.3",
        ("EMAIL_ADDRESS", "jane@example.com"),
        ("PHONE_NUMBER", "+1 415 555 0132"),
        ("CREDIT_CARD", "5555 5555 5555 4444"),
        ("IP_ADDRESS", "10.1.2.3"),
    ),
]


@pytest.mark.parametrize("engine", list(SCANNERS))
@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_peer_case(engine: str, text: str, expected: list[tuple[str, int, int]]) -> None:
    assert [(f.type, f.start, f.end) for f in SCANNERS[engine].scan_text(text)] == expected
