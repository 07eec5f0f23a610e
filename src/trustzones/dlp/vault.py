"""The token vault: an SQLite file in the source zone that maps tokens back to real values.

>>> import os, tempfile
>>> from trustzones.dlp.vault import TokenVault, aesgcm_cipher
>>> path = os.path.join(tempfile.mkdtemp(), "tokens.sqlite3")
>>> with TokenVault(path, cipher=aesgcm_cipher(bytes(32))) as vault:
...     token = vault.tokenize("4111111111111111", domain="pan", index_key=bytes(32))
...     assert vault.tokenize("4111111111111111", domain="pan", index_key=bytes(32)) == token
...     vault.detokenize(token, domain="pan")
'4111111111111111'

Real values are stored sealed by a pluggable :class:`VaultCipher` (the keys part seals with
the zone's keys); the associated data binds each sealed value to its domain and token, so a
row copied onto another token does not open. Lookups go through an HMAC fingerprint of the
value (``index_key``), so the file holds no plaintext and no unkeyed hash. The same value in
the same domain always gets the same token (joins keep working downstream).

``detokenize`` does not check who is asking: callers authorise first (a grant in the source
zone). One vault object may be shared by threads; several processes may open the same file
(WAL mode, ``BEGIN IMMEDIATE`` around each new token).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import string
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustzones.dlp._validators import luhn_valid
from trustzones.errors import DecryptionFailed, TransformError, TrustzonesError

__all__ = ["TokenFormat", "TokenVault", "UnknownToken", "VaultCipher", "aesgcm_cipher"]

TokenFormat = Literal["random", "preserve"]
_SCHEMA_VERSION = 1
_MAX_TRIES = 32
#: Fewest random characters a format-preserving token may have.
MIN_RANDOM_CHARS = 6


class UnknownToken(TrustzonesError):
    """The token is not in this vault (or not in this domain)."""


@dataclass(frozen=True, slots=True)
class VaultCipher:
    """How the vault seals stored values: ``seal(plaintext, aad)`` and ``open(sealed, aad)``.

    ``open`` must raise on a wrong key or tampered data; the vault turns any failure into
    :class:`~trustzones.errors.DecryptionFailed`.
    """

    seal: Callable[[bytes, bytes], bytes]
    open: Callable[[bytes, bytes], bytes]


def aesgcm_cipher(key: bytes) -> VaultCipher:
    """A :class:`VaultCipher` using AES-256-GCM with a random 96-bit nonce per value."""
    aead = AESGCM(key)

    def seal(plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, plaintext, aad)

    def open_(sealed: bytes, aad: bytes) -> bytes:
        return aead.decrypt(sealed[:12], sealed[12:], aad)

    return VaultCipher(seal, open_)


def _aad(domain: str, token: str) -> bytes:
    return b"trustzones/vault/v1\x00" + domain.encode() + b"\x00" + token.encode()


def _random_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(16)


_TOKEN_ATTEMPTS = 64


def _preserving_token(value: str, keep_last: int) -> str:
    """A random string shaped like ``value`` (see :func:`_one_preserving_token`) in which the
    scanner finds nothing: neither the whole token nor any part of it (a 16-digit run inside
    a 19-digit token, say) may pass as a card number, an SSN or another sensitive value, or
    the flow's own output scan would hold it back as a leak."""
    from trustzones.dlp.scanner import default_scanner

    scanner = default_scanner()
    for _ in range(_TOKEN_ATTEMPTS):
        token = _one_preserving_token(value, keep_last)
        if not scanner.scan_text(token):
            return token
    raise ValueError(
        f"no format-preserving token free of detectable patterns after {_TOKEN_ATTEMPTS} tries"
    )


def _one_preserving_token(value: str, keep_last: int) -> str:
    """A random string shaped like ``value``: each digit and letter (any script) replaced by
    a random ASCII one of its kind (the last ``keep_last`` of them kept), everything else
    kept. A Luhn-valid digit string gets a Luhn-invalid token, so a token is never
    mistaken for a card number."""
    # Every letter and digit, in any script, is a position: a full-width digit left in
    # place would leak.
    positions = [i for i, ch in enumerate(value) if ch.isalnum()]
    random_positions = positions[: len(positions) - keep_last] if keep_last else positions
    if len(random_positions) < MIN_RANDOM_CHARS:
        raise ValueError(
            f"a format-preserving token needs at least {MIN_RANDOM_CHARS} random letters or "
            f"digits; this value has {len(random_positions)}"
        )
    out = list(value)
    for i in random_positions:
        ch = value[i]
        if ch.isdigit() or ch.isnumeric():
            out[i] = secrets.choice(string.digits)
        elif ch.islower():
            out[i] = secrets.choice(string.ascii_lowercase)
        else:
            out[i] = secrets.choice(string.ascii_uppercase)
    token = "".join(out)
    digits = "".join(str(unicodedata.digit(ch)) for ch in token if ch.isdigit())
    all_digits = len(digits) == sum(ch.isalnum() for ch in token)
    if all_digits and 13 <= len(digits) <= 19 and luhn_valid(digits):
        # Change the last random digit so that the Luhn check fails.
        i = next(i for i in reversed(random_positions) if value[i].isdigit())
        out[i] = str((int(out[i]) + 1) % 10)
        token = "".join(out)
    return token


class TokenVault:
    """Tokens and their sealed values in one SQLite file. Use as a context manager."""

    def __init__(self, path: str | os.PathLike[str], *, cipher: VaultCipher) -> None:
        self.path = Path(path)
        self._cipher = cipher
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS tokens ("
                " domain TEXT NOT NULL,"
                " token TEXT NOT NULL,"
                " fingerprint BLOB NOT NULL,"
                " sealed BLOB NOT NULL,"
                " created_at REAL NOT NULL,"
                " PRIMARY KEY (domain, token),"
                " UNIQUE (domain, fingerprint))"
            )
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise TransformError(
                f"cannot open the token vault {self.path}: {exc}; check that the zone's data "
                "directory exists and is writable"
            ) from exc

    def __enter__(self) -> TokenVault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def fingerprint(value: str, *, domain: str, index_key: bytes) -> bytes:
        """The keyed lookup fingerprint of a value: HMAC-SHA-256(index_key, domain NUL value)."""
        return hmac.new(
            index_key, domain.encode() + b"\x00" + value.encode(), hashlib.sha256
        ).digest()

    def tokenize(
        self,
        value: str,
        *,
        domain: str,
        index_key: bytes,
        format: TokenFormat = "random",
        prefix: str = "tok_",
        keep_last: int = 0,
    ) -> str:
        """The token of ``value`` in ``domain``, created (random, or shaped like the value
        when ``format="preserve"``) and stored sealed on first use."""
        fp = self.fingerprint(value, domain=domain, index_key=index_key)
        with self._lock:
            row = self._db.execute(
                "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
            ).fetchone()
            if row is not None:
                return str(row[0])
            for _ in range(_MAX_TRIES):
                if format == "preserve":
                    try:
                        token = _preserving_token(value, keep_last)
                    except ValueError as exc:
                        raise TransformError(f"domain {domain!r}: {exc}") from None
                else:
                    token = _random_token(prefix)
                sealed = self._cipher.seal(value.encode(), _aad(domain, token))
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
                    ).fetchone()
                    if row is not None:  # another process tokenized it meanwhile
                        self._db.execute("COMMIT")
                        return str(row[0])
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?, ?)",
                        (domain, token, fp, sealed, time.time()),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if cur.rowcount == 1:
                    return token
        raise TransformError(
            f"domain {domain!r}: no free token after {_MAX_TRIES} tries; the value has too "
            "few characters for a format-preserving token"
        )

    def detokenize(self, token: str, *, domain: str) -> str:
        """The real value behind ``token``. Callers check the principal's grant first."""
        with self._lock:
            row = self._db.execute(
                "SELECT sealed FROM tokens WHERE domain=? AND token=?", (domain, token)
            ).fetchone()
        if row is None:
            raise UnknownToken(f"no such token in domain {domain!r} of vault {self.path}")
        try:
            return self._cipher.open(bytes(row[0]), _aad(domain, token)).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError, TrustzonesError) as exc:
            raise DecryptionFailed("token vault entry could not be opened") from exc

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM tokens").fetchone()[0])
