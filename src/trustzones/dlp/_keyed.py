"""HMAC-SHA-256 under one fixed key, for per-record hot paths (vault fingerprints, watermark
tags): the native core's when it is installed, else the standard library's.

Both compute the key's inner and outer hash states once (RFC 2104); the Python one copies
them per message, which costs less than a new ``hmac`` object each time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from trustzones.dlp._native import load_native

__all__ = ["hmac_sha256"]

_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def hmac_sha256(key: bytes, *, native: bool = True) -> Callable[[bytes], bytes]:
    """``f(message) == hmac.new(key, message, sha256).digest()``. ``native=False`` takes the
    standard library's path even where the native core is installed (tests compare both)."""
    core = load_native() if native else None
    if core is not None:
        return core.HmacSha256(key).digest
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\x00")
    inner = hashlib.sha256(key.translate(_IPAD))
    outer = hashlib.sha256(key.translate(_OPAD))

    def digest(message: bytes) -> bytes:
        i = inner.copy()
        i.update(message)
        o = outer.copy()
        o.update(i.digest())
        return o.digest()

    return digest
