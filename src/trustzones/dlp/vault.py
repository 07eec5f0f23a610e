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
(WAL mode, ``BEGIN IMMEDIATE`` around each new token, or around each :meth:`TokenVault.batch`).

Speed: tokens already issued are remembered in a bounded LRU keyed by the keyed fingerprint
(never by the clear value), and :meth:`TokenVault.batch` groups the new tokens of many
records into one transaction, committed when the block ends: a flow commits its batch's
tokens before it writes any record that carries one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustzones.dlp._validators import luhn_valid
from trustzones.errors import DecryptionFailed, TransformError, TrustzonesError

if TYPE_CHECKING:
    from trustzones.dlp.scanner import Scanner

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


def _preserving_token(value: str, keep_last: int, scanner: Scanner | None = None) -> str:
    """A random string shaped like ``value`` (see :func:`_one_preserving_token`) in which
    ``scanner`` (default: the default scanner) finds nothing: neither the whole token nor
    any part of it (a 16-digit run inside a 19-digit token, say) may pass as a card number,
    an SSN or another sensitive value, or the flow's own output scan would hold it back as
    a leak."""
    if scanner is None:
        from trustzones.dlp.scanner import default_scanner

        scanner = default_scanner()
    for _ in range(_TOKEN_ATTEMPTS):
        token = _one_preserving_token(value, keep_last)
        if not scanner.detects(token):
            return token
    raise ValueError(
        f"no format-preserving token free of detectable patterns after {_TOKEN_ATTEMPTS} tries"
    )


_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The kind of each ASCII character: ``d`` digit, ``l`` lower case, ``u`` upper case letter,
#: ``.`` anything else (kept as it is).
_ASCII_KIND = str.maketrans(
    {
        chr(c): "d"
        if chr(c) in _DIGITS
        else "l"
        if chr(c) in _LOWER
        else "u"
        if chr(c) in _UPPER
        else "."
        for c in range(128)
    }
)
_ONLY_DIGITS = str.maketrans({chr(c): None for c in range(128) if chr(c) not in _DIGITS})
#: Per kind: the alphabet, and the first random byte value rejected so that ``byte % len``
#: stays uniform.
_ALPHABETS = {"d": (_DIGITS, 250), "l": (_LOWER, 234), "u": (_UPPER, 234)}


def _kind(ch: str) -> str:
    """The kind (see ``_ASCII_KIND``) of a letter or digit in any script."""
    if ch.isdigit() or ch.isnumeric():
        return "d"
    return "l" if ch.islower() else "u"


def _one_preserving_token(value: str, keep_last: int) -> str:
    """A random string shaped like ``value``: each digit and letter (any script) replaced by
    a random ASCII one of its kind (the last ``keep_last`` of them kept), everything else
    kept. A Luhn-valid digit string gets a Luhn-invalid token, so a token is never
    mistaken for a card number."""
    # Every letter and digit, in any script, is a position: a full-width digit left in
    # place would leak.
    if value.isascii():
        kinds = value.translate(_ASCII_KIND)
    else:
        kinds = "".join(_kind(ch) if ch.isalnum() else "." for ch in value)
    n_alnum = len(kinds) - kinds.count(".")
    n_random = n_alnum - keep_last if keep_last else n_alnum
    if n_random < MIN_RANDOM_CHARS:
        raise ValueError(
            f"a format-preserving token needs at least {MIN_RANDOM_CHARS} random letters or "
            f"digits; this value has {max(n_random, 0)}"
        )
    out = list(value)
    # One call to the CSPRNG per token; bytes that would bias the choice are skipped.
    pool = secrets.token_bytes(n_random + 16)
    k = 0
    left = n_random
    last_random = -1
    for i, kind in enumerate(kinds):
        if kind == ".":
            continue
        alphabet, limit = _ALPHABETS[kind]
        while True:
            if k == len(pool):
                pool = secrets.token_bytes(16)
                k = 0
            b = pool[k]
            k += 1
            if b < limit:
                break
        out[i] = alphabet[b % len(alphabet)]
        if kind == "d":
            last_random = i
        left -= 1
        if not left:
            break
    token = "".join(out)
    if token.isascii():
        digits = token.translate(_ONLY_DIGITS)
    else:
        digits = "".join(str(unicodedata.digit(ch)) for ch in token if ch.isdigit())
    all_digits = len(digits) == n_alnum and kinds.count("d") == n_alnum
    if all_digits and 13 <= len(digits) <= 19 and luhn_valid(digits):
        # Change the last random digit so that the Luhn check fails.
        out[last_random] = str((int(out[last_random]) + 1) % 10)
        token = "".join(out)
    return token


class TokenVault:
    """Tokens and their sealed values in one SQLite file. Use as a context manager.

    ``cache_size`` bounds the in-memory LRU of issued tokens (keyed by fingerprint; 0
    turns it off). Tokens never change once issued, so the cache stays right when other
    processes add tokens to the same file.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, cipher: VaultCipher, cache_size: int = 65_536
    ) -> None:
        self.path = Path(path)
        self._cipher = cipher
        # Re-entrant: a batch holds it from start to commit (see :meth:`batch`).
        self._lock = threading.RLock()
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._hmacs: dict[bytes, Any] = {}
        self._batch_depth = 0
        self._in_tx = False
        #: Tokens inserted by the open batch transaction, not yet committed.
        self._pending: dict[tuple[str, bytes], str] = {}
        #: Why the open batch can no longer commit (its tokens may be lost).
        self._batch_error: str | None = None
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

    def _fingerprint(self, value: str, domain: str, index_key: bytes) -> bytes:
        """:meth:`fingerprint`, with the keyed HMAC state computed once per key."""
        base = self._hmacs.get(index_key)
        if base is None:
            base = hmac.new(index_key, digestmod=hashlib.sha256)
            if len(self._hmacs) < 64:
                self._hmacs[index_key] = base
        h = base.copy()
        h.update(domain.encode() + b"\x00" + value.encode())
        return bytes(h.digest())

    def _remember(self, ck: tuple[str, bytes], token: str) -> None:
        if self._cache_size <= 0:
            return
        cache = self._cache
        cache[ck] = token
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the new tokens made inside the block into one transaction, committed when
        the block ends (rolled back when it raises).

        Every token handed out inside the block is durable once the block has exited
        normally; write records that carry them only after that. If the transaction cannot
        commit, or a new token could not be stored, leaving the block raises
        :class:`~trustzones.errors.TransformError` (fail closed: the tokens handed out may
        not exist). The vault is held for this thread until the block ends (other threads
        wait); the file's write lock is taken at the first new token and held to the end.
        Blocks nest; the outermost one commits.
        """
        with self._lock:
            self._batch_depth += 1
            ok = False
            try:
                yield
                ok = True
            finally:
                self._batch_depth -= 1
                if self._batch_depth == 0:
                    self._end_batch(commit=ok)

    def _end_batch(self, *, commit: bool) -> None:
        error, self._batch_error = self._batch_error, None
        pending, self._pending = self._pending, {}
        in_tx, self._in_tx = self._in_tx, False
        if in_tx:
            if commit and error is None:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    error = f"commit failed ({type(exc).__name__})"
                    self._rollback()
            else:
                self._rollback()
        if error is not None:
            if not commit:
                return  # the block is raising already
            raise TransformError(
                f"token vault {self.path}: the new tokens of this batch could not be stored "
                f"({error}); nothing that carries them may be written. Check the vault file "
                "and run again."
            )
        if commit:
            for ck, token in pending.items():
                self._remember(ck, token)

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):  # no transaction left to roll back
            self._db.execute("ROLLBACK")

    def tokenize(
        self,
        value: str,
        *,
        domain: str,
        index_key: bytes,
        format: TokenFormat = "random",
        prefix: str = "tok_",
        keep_last: int = 0,
        scanner: Scanner | None = None,
    ) -> str:
        """The token of ``value`` in ``domain``, created (random, or shaped like the value
        when ``format="preserve"``) and stored sealed on first use. A new format-preserving
        token is one in which ``scanner`` (default: the default scanner; a flow passes its
        own) finds nothing."""
        fp = self._fingerprint(value, domain, index_key)
        ck = (domain, fp)
        with self._lock:
            token = self._cache.get(ck)
            if token is not None:
                self._cache.move_to_end(ck)
                return token
            if self._batch_depth:
                token = self._pending.get(ck)
                if token is not None:
                    return token
            row = self._db.execute(
                "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
            ).fetchone()
            if row is not None:
                token = str(row[0])
                self._remember(ck, token)
                return token
            if self._batch_depth:
                return self._tokenize_in_batch(
                    value, domain, fp, ck, format, prefix, keep_last, scanner
                )
            for _ in range(_MAX_TRIES):
                token = self._new_token(value, domain, format, prefix, keep_last, scanner)
                sealed = self._cipher.seal(value.encode(), _aad(domain, token))
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
                    ).fetchone()
                    if row is not None:  # another process tokenized it meanwhile
                        self._db.execute("COMMIT")
                        token = str(row[0])
                        self._remember(ck, token)
                        return token
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?, ?)",
                        (domain, token, fp, sealed, time.time()),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if cur.rowcount == 1:
                    self._remember(ck, token)
                    return token
        raise self._no_free_token(domain)

    def _tokenize_in_batch(
        self,
        value: str,
        domain: str,
        fp: bytes,
        ck: tuple[str, bytes],
        format: TokenFormat,
        prefix: str,
        keep_last: int,
        scanner: Scanner | None,
    ) -> str:
        """A new token inside the batch transaction (called with the lock held)."""
        if self._batch_error is not None:
            raise TransformError(f"domain {domain!r}: the token vault batch has failed")
        try:
            if not self._in_tx:
                self._db.execute("BEGIN IMMEDIATE")
                self._in_tx = True
                # Holding the write lock now: another process may have added it meanwhile.
                row = self._db.execute(
                    "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
                ).fetchone()
                if row is not None:
                    token = str(row[0])
                    self._remember(ck, token)
                    return token
            for _ in range(_MAX_TRIES):
                token = self._new_token(value, domain, format, prefix, keep_last, scanner)
                sealed = self._cipher.seal(value.encode(), _aad(domain, token))
                # No other writer while we hold the write lock, and this fingerprint is not
                # stored: only a clash of random tokens can make the insert a no-op.
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?, ?)",
                    (domain, token, fp, sealed, time.time()),
                )
                if cur.rowcount == 1:
                    self._pending[ck] = token
                    return token
        except sqlite3.Error as exc:
            # The transaction may be gone with the tokens already handed out in it.
            self._batch_error = f"{type(exc).__name__} while storing a token"
            raise TransformError(
                f"domain {domain!r}: the token vault could not store a new token "
                f"({type(exc).__name__})"
            ) from None
        raise self._no_free_token(domain)

    def _new_token(
        self,
        value: str,
        domain: str,
        format: TokenFormat,
        prefix: str,
        keep_last: int,
        scanner: Scanner | None,
    ) -> str:
        if format == "preserve":
            try:
                return _preserving_token(value, keep_last, scanner)
            except ValueError as exc:
                raise TransformError(f"domain {domain!r}: {exc}") from None
        return _random_token(prefix)

    @staticmethod
    def _no_free_token(domain: str) -> TransformError:
        return TransformError(
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
