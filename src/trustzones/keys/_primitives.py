"""Raw primitives under the envelope layer: AES-256-GCM, AES-256-SIV, HKDF, HPKE.

Hazardous on purpose: nothing here manages keys, nonces or contexts. The ciphers in
``_envelope`` and ``_fields`` are the safe API; these functions exist so that the official
vectors (NIST CAVP, Wycheproof) test exactly the code the ciphers run.

Only the sizes trustzones uses are accepted: 256-bit AES keys, 96-bit GCM nonces and 128-bit
tags (NIST SP 800-38D section 5.2.1.1 recommends 96-bit IVs), 512-bit AES-SIV keys (two AES-256
halves, RFC 5297 section 2.2). Anything else raises ``ValueError``, before any crypto runs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "GCM_KEY_BYTES",
    "NONCE_BYTES",
    "SIV_KEY_BYTES",
    "TAG_BYTES",
    "encode_parts",
    "gcm_decrypt",
    "gcm_encrypt",
    "hkdf_sha256",
    "hpke_open",
    "hpke_seal",
    "random_bytes",
    "siv_decrypt",
    "siv_encrypt",
]

GCM_KEY_BYTES = 32
SIV_KEY_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16

# RFC 9180 base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the OS CSPRNG."""
    return os.urandom(n)


def encode_parts(*parts: bytes) -> bytes:
    """Encode byte strings unambiguously (4-byte big-endian length before each one).

    Used to build associated data and KDF info from several fields, so that
    ``("ab", "c")`` and ``("a", "bc")`` never collide.
    """
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _check(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def gcm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM: ``ciphertext || 16-byte tag``."""
    _check("AES-GCM key", key, GCM_KEY_BYTES)
    _check("AES-GCM nonce", nonce, NONCE_BYTES)
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def gcm_decrypt(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`gcm_encrypt`; raises ``cryptography.exceptions.InvalidTag``."""
    _check("AES-GCM key", key, GCM_KEY_BYTES)
    _check("AES-GCM nonce", nonce, NONCE_BYTES)
    if len(data) < TAG_BYTES:
        raise ValueError("AES-GCM ciphertext is shorter than its tag")
    return AESGCM(key).decrypt(nonce, data, aad)


def siv_encrypt(key: bytes, plaintext: bytes, associated_data: Sequence[bytes]) -> bytes:
    """AES-256-SIV (RFC 5297, S2V over CMAC): ``16-byte SIV || ciphertext``. Deterministic."""
    _check("AES-SIV key", key, SIV_KEY_BYTES)
    return AESSIV(key).encrypt(plaintext, list(associated_data))


def siv_decrypt(key: bytes, data: bytes, associated_data: Sequence[bytes]) -> bytes:
    """Inverse of :func:`siv_encrypt`; raises ``cryptography.exceptions.InvalidTag``."""
    _check("AES-SIV key", key, SIV_KEY_BYTES)
    return AESSIV(key).decrypt(data, list(associated_data))


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hpke_seal(public_key: X25519PublicKey, plaintext: bytes, *, info: bytes) -> bytes:
    """HPKE base-mode single-shot seal (RFC 9180 section 6.1): ``enc || ciphertext``.

    ``info`` is bound into the key schedule, so opening with different ``info`` fails.
    """
    return _HPKE.encrypt(plaintext, public_key, info=info)


def hpke_open(private_key: X25519PrivateKey, data: bytes, *, info: bytes) -> bytes:
    """Inverse of :func:`hpke_seal`; raises ``cryptography.exceptions.InvalidTag``."""
    return _HPKE.decrypt(data, private_key, info=info)
