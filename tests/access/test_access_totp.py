"""TOTP and HOTP against RFC 6238 appendix B and RFC 4226 appendix D."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

import pytest

from trustzones.access import hotp, totp_at_time
from trustzones.access._totp import provisioning_uri

SEEDS = {
    "SHA1": b"12345678901234567890",
    "SHA256": b"12345678901234567890123456789012",
    "SHA512": b"1234567890123456789012345678901234567890123456789012345678901234",
}

# RFC 6238 appendix B: (time, SHA1, SHA256, SHA512), 8 digits, X = 30, T0 = 0
RFC6238 = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("unix", "sha1", "sha256", "sha512"), RFC6238)
def test_rfc6238_appendix_b(unix: int, sha1: str, sha256: str, sha512: str) -> None:
    at = datetime.fromtimestamp(unix, UTC)
    assert totp_at_time(SEEDS["SHA1"], at, digits=8, algorithm="SHA1") == sha1
    assert totp_at_time(SEEDS["SHA256"], at, digits=8, algorithm="SHA256") == sha256
    assert totp_at_time(SEEDS["SHA512"], at, digits=8, algorithm="SHA512") == sha512


def test_rfc4226_appendix_d() -> None:
    expected = [
        "755224", "287082", "359152", "969429", "338314",
        "254676", "287922", "162583", "399871", "520489",
    ]  # fmt: skip
    assert [hotp(SEEDS["SHA1"], counter) for counter in range(10)] == expected


def test_wrong_secret_gives_another_code() -> None:
    at = datetime.fromtimestamp(59, UTC)
    assert totp_at_time(b"12345678901234567891", at, digits=8) != "94287082"


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        totp_at_time(SEEDS["SHA1"], datetime(2025, 1, 1))


def test_provisioning_uri_carries_base32_secret_and_parameters() -> None:
    uri = provisioning_uri(SEEDS["SHA1"], account="alice", issuer="trustzones")
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth" and parsed.netloc == "totp"
    assert parsed.path == "/trustzones%3Aalice"
    query = parse_qs(parsed.query)
    assert query["secret"] == ["GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"]
    assert query["digits"] == ["6"] and query["period"] == ["30"]
    assert query["algorithm"] == ["SHA1"]
