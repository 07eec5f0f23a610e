"""HOTP (RFC 4226) and TOTP (RFC 6238) one-time codes.

These are pure functions of a secret and a counter or time; enrolment, the replay guard and
the lock-out live in the credential store.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import struct
from datetime import datetime
from typing import Literal
from urllib.parse import quote, urlencode

from trustzones.access._model import epoch_seconds

__all__ = ["TotpAlgorithm", "hotp", "new_totp_secret", "provisioning_uri", "totp_at_time"]

TotpAlgorithm = Literal["SHA1", "SHA256", "SHA512"]
_DIGEST = {"SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}


def hotp(secret: bytes, counter: int, *, digits: int = 6, algorithm: TotpAlgorithm = "SHA1") -> str:
    """RFC 4226 §5.3: HMAC the 8-byte counter, dynamically truncate, keep ``digits`` digits."""
    if not 6 <= digits <= 10:
        raise ValueError("a one-time code has 6 to 10 digits")
    mac = hmac.digest(secret, struct.pack(">Q", counter), _DIGEST[algorithm])
    offset = mac[-1] & 0x0F
    binary = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(binary % 10**digits).zfill(digits)


def time_step(now: datetime, *, period: int = 30, t0: int = 0) -> int:
    """RFC 6238 §4.2: ``T = floor((Current Unix time - T0) / X)``."""
    return (epoch_seconds(now) - t0) // period


def totp_at_time(
    secret: bytes,
    now: datetime,
    *,
    digits: int = 6,
    period: int = 30,
    algorithm: TotpAlgorithm = "SHA1",
) -> str:
    """The TOTP code valid at ``now``."""
    return hotp(secret, time_step(now, period=period), digits=digits, algorithm=algorithm)


def new_totp_secret(algorithm: TotpAlgorithm = "SHA1") -> bytes:
    """A random secret as long as the HMAC output (RFC 4226 §4 asks for at least 128 bits)."""
    return secrets.token_bytes({"SHA1": 20, "SHA256": 32, "SHA512": 64}[algorithm])


def provisioning_uri(
    secret: bytes,
    *,
    account: str,
    issuer: str = "trustzones",
    digits: int = 6,
    period: int = 30,
    algorithm: TotpAlgorithm = "SHA1",
) -> str:
    """An ``otpauth://totp/`` URI that authenticator apps read (usually from a QR code)."""
    label = quote(f"{issuer}:{account}", safe="")
    query = urlencode(
        {
            "secret": base64.b32encode(secret).decode().rstrip("="),
            "issuer": issuer,
            "algorithm": algorithm,
            "digits": digits,
            "period": period,
        }
    )
    return f"otpauth://totp/{label}?{query}"
