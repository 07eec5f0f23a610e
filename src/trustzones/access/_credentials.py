"""The credential store: SCRAM password credentials, API key digests and TOTP enrolments.

One SQLite file, kept by the workspace outside every zone. What it holds and why it is safe:

* passwords: only SCRAM ``salt``/``StoredKey``/``ServerKey``/iterations, never the password
  or a password equivalent (the salted password is not stored);
* API keys: only ``SHA-256`` of the random secret (256 bits of entropy, so a fast hash is
  enough) under the key id, compared in constant time;
* TOTP secrets must be recoverable to compute codes, so they cannot be hashed. They are
  **encrypted** with AES-256-GCM under a store key the caller supplies (kept in a separate
  file or a keystore), with the principal name as associated data so an entry moved to
  another principal fails to decrypt; a copy of the database alone (a backup, a stray commit)
  does not reveal them.
* and the file itself is created ``0600`` and refused if group or others can read it, as
  ``ssh`` does with private keys (SQLite gives its journal the same mode).

Replay protection: a TOTP code is accepted only for a time step later than the last accepted
one, and the update is one conditional ``UPDATE`` so two processes cannot both accept it.
Five wrong codes in a row lock TOTP for five minutes.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
import sqlite3
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustzones.access._errors import CredentialStoreError
from trustzones.access._model import epoch_seconds, from_epoch
from trustzones.access._scram import ScramCredential, ScramMechanism
from trustzones.access._totp import (
    TotpAlgorithm,
    hotp,
    new_totp_secret,
    provisioning_uri,
    time_step,
)

__all__ = [
    "ApiKey",
    "CredentialStore",
    "TotpEnrolment",
    "create_store_key_file",
    "read_store_key_file",
]

API_KEY_PREFIX = "tzk_"
_KEY_ID_HEX = 16
_KEY_CHECK = b"trustzones credential store key check v1"
_TOTP_WINDOW = 1  # accept the previous, current and next 30-second step (RFC 6238 §5.2)
_TOTP_MAX_FAILURES = 5
_TOTP_LOCKOUT = timedelta(minutes=5)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS scram (
    principal TEXT NOT NULL, mechanism TEXT NOT NULL, salt BLOB NOT NULL,
    stored_key BLOB NOT NULL, server_key BLOB NOT NULL, iterations INTEGER NOT NULL,
    PRIMARY KEY (principal, mechanism));
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, principal TEXT NOT NULL, digest BLOB NOT NULL,
    label TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER,
    revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS totp (
    principal TEXT PRIMARY KEY, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
    algorithm TEXT NOT NULL, digits INTEGER NOT NULL, period INTEGER NOT NULL,
    confirmed INTEGER NOT NULL, last_step INTEGER NOT NULL,
    failures INTEGER NOT NULL, locked_until INTEGER NOT NULL);
"""


def create_store_key_file(path: Path) -> bytes:
    """Write a new random 32-byte store key to ``path`` (mode 0600) and return it."""
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.hex().encode() + b"\n")
    return key


def read_store_key_file(path: Path) -> bytes:
    """Read a key written by :func:`create_store_key_file`; refuses a group/world-readable file."""
    _check_private(path)
    try:
        key = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise CredentialStoreError(f"{path} is not a credential store key file") from None
    if len(key) != 32:
        raise CredentialStoreError(f"{path} is not a credential store key file")
    return key


def _check_private(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CredentialStoreError(f"{path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialStoreError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A new API key. ``secret`` is shown once and stored nowhere; only its digest is kept."""

    key_id: str
    principal: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    """A pending TOTP enrolment: show ``uri`` (as a QR code) once, then confirm with a code."""

    principal: str
    secret_base32: str = field(repr=False)
    uri: str = field(repr=False)


@functools.cache
def _dummy_credential() -> ScramCredential:
    return ScramCredential.derive(secrets.token_urlsafe(16), iterations=8192)


def _api_key_digest(key_id: str, secret: str) -> bytes:
    return hashlib.sha256(f"trustzones-api-key\0{key_id}\0{secret}".encode()).digest()


def parse_api_key(key: str) -> tuple[str, str] | None:
    """Split ``tzk_<16 hex key id>_<secret>``; ``None`` when it is not of that form."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    body = key[len(API_KEY_PREFIX) :]
    key_id, sep, secret = body[:_KEY_ID_HEX], body[_KEY_ID_HEX : _KEY_ID_HEX + 1], body[17:]
    if sep != "_" or len(secret) < 32 or any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


class CredentialStore:
    """Hashed credentials and encrypted TOTP secrets in one private SQLite file.

    Open with :meth:`create` (new file) or :meth:`open`; both take the 32-byte store key.
    Safe to share between threads (one lock) and processes (SQLite transactions).
    """

    def __init__(self, path: Path, key: bytes, conn: sqlite3.Connection) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._conn = conn
        self._lock = threading.Lock()

    # 1. construction -----------------------------------------------------------------------

    @classmethod
    def create(cls, path: Path, *, key: bytes) -> CredentialStore:
        """Create a new store file (mode 0600); fails if it exists."""
        if len(key) != 32:
            raise ValueError("the credential store key is 32 bytes")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CredentialStoreError(
                f"{path} already exists; open it instead of creating it"
            ) from None
        os.close(fd)
        store = cls(path, key, cls._connect(path))
        nonce = secrets.token_bytes(12)
        check = nonce + store._aead.encrypt(nonce, _KEY_CHECK, b"key-check")
        with store._tx() as cur:
            cur.execute("INSERT INTO meta VALUES ('key_check', ?)", (check,))
        return store

    @classmethod
    def open(cls, path: Path, *, key: bytes) -> CredentialStore:
        """Open an existing store; refuses a file others can read and a wrong key."""
        if len(key) != 32:
            raise ValueError("the credential store key is 32 bytes")
        _check_private(path)
        store = cls(path, key, cls._connect(path))
        row = store._conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
        try:
            if row is None:
                raise InvalidTag
            blob = bytes(row[0])
            store._aead.decrypt(blob[:12], blob[12:], b"key-check")
        except InvalidTag:
            store.close()
            raise CredentialStoreError(
                f"the key does not open the credential store {path}; use the key it was "
                "created with"
            ) from None
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CredentialStoreError(f"{path} is not a credential store: {exc}") from exc
        return conn

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> CredentialStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    # 2. passwords (SCRAM) -------------------------------------------------------------------

    def set_password(
        self,
        principal: str,
        password: str,
        *,
        mechanisms: tuple[ScramMechanism, ...] = ("SCRAM-SHA-512",),
        iterations: int = 8192,
    ) -> tuple[ScramCredential, ...]:
        """Store SCRAM credentials for ``password`` (replacing old ones); returns them."""
        creds = tuple(
            ScramCredential.derive(password, mechanism=m, iterations=iterations) for m in mechanisms
        )
        with self._tx() as cur:
            cur.execute("DELETE FROM scram WHERE principal = ?", (principal,))
            cur.executemany(
                "INSERT INTO scram VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (principal, c.mechanism, c.salt, c.stored_key, c.server_key, c.iterations)
                    for c in creds
                ],
            )
        return creds

    def scram_credential(
        self, principal: str, mechanism: ScramMechanism = "SCRAM-SHA-512"
    ) -> ScramCredential | None:
        """The stored credential (for a SCRAM exchange or provisioning to a broker)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT salt, stored_key, server_key, iterations FROM scram "
                "WHERE principal = ? AND mechanism = ?",
                (principal, mechanism),
            ).fetchone()
        if row is None:
            return None
        return ScramCredential(mechanism, bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3])

    def verify_password(self, principal: str, password: str) -> bool:
        """True when ``password`` matches; an unknown principal costs the same work."""
        credential = self.scram_credential(principal)
        if credential is None:
            _dummy_credential().verify_password(password)  # same cost as a real check
            return False
        return credential.verify_password(password)

    # 3. API keys ------------------------------------------------------------------------------

    def create_api_key(
        self,
        principal: str,
        *,
        now: datetime,
        expires_at: datetime | None = None,
        label: str = "",
    ) -> ApiKey:
        """Make a key ``tzk_<key id>_<secret>``; only the digest of the secret is stored."""
        key_id = secrets.token_hex(_KEY_ID_HEX // 2)
        secret = secrets.token_urlsafe(32)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    key_id,
                    principal,
                    _api_key_digest(key_id, secret),
                    label,
                    epoch_seconds(now),
                    None if expires_at is None else epoch_seconds(expires_at),
                ),
            )
        return ApiKey(key_id, principal, f"{API_KEY_PREFIX}{key_id}_{secret}")

    def revoke_api_key(self, key_id: str, *, now: datetime) -> bool:
        """Revoke a key by id; True if a live key was revoked."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (epoch_seconds(now), key_id),
            )
            return cur.rowcount == 1

    def verify_api_key_at_time(self, key: str, now: datetime) -> str | None:
        """The principal of a live, matching key, or ``None``."""
        parsed = parse_api_key(key)
        key_id, secret = parsed if parsed else ("0" * _KEY_ID_HEX, "x" * 43)
        with self._lock:
            row = self._conn.execute(
                "SELECT principal, digest, expires_at, revoked_at FROM api_keys WHERE key_id = ?",
                (key_id,),
            ).fetchone()
        digest = _api_key_digest(key_id, secret)
        stored = bytes(row[1]) if row else b"\0" * 32
        matches = hmac.compare_digest(digest, stored)
        if parsed is None or row is None or not matches or row[3] is not None:
            return None
        if row[2] is not None and row[2] <= epoch_seconds(now):
            return None
        return str(row[0])

    # 4. TOTP ------------------------------------------------------------------------------------

    def _seal(self, principal: str, secret: bytes) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, secret, f"totp\0{principal}".encode())

    def _open_secret(self, principal: str, nonce: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, f"totp\0{principal}".encode())
        except InvalidTag:
            raise CredentialStoreError(
                "a TOTP entry of the credential store does not decrypt; re-enrol the user"
            ) from None

    def begin_totp_enrolment(
        self,
        principal: str,
        *,
        issuer: str = "trustzones",
        algorithm: TotpAlgorithm = "SHA1",
        digits: int = 6,
        period: int = 30,
    ) -> TotpEnrolment:
        """Start (or restart) an enrolment; refused while a confirmed one exists."""
        secret = new_totp_secret(algorithm)
        nonce, ciphertext = self._seal(principal, secret)
        with self._tx() as cur:
            row = cur.execute(
                "SELECT confirmed FROM totp WHERE principal = ?", (principal,)
            ).fetchone()
            if row is not None and row[0]:
                raise CredentialStoreError(
                    f"{principal} already has TOTP enrolled; remove it first to re-enrol"
                )
            cur.execute(
                "INSERT OR REPLACE INTO totp VALUES (?, ?, ?, ?, ?, ?, 0, -1, 0, 0)",
                (principal, nonce, ciphertext, algorithm, digits, period),
            )
        b32 = secret_base32(secret)
        uri = provisioning_uri(
            secret,
            account=principal,
            issuer=issuer,
            digits=digits,
            period=period,
            algorithm=algorithm,
        )
        return TotpEnrolment(principal, b32, uri)

    def confirm_totp_enrolment(self, principal: str, code: str, *, now: datetime) -> bool:
        """Finish an enrolment with a first valid code (which is then used up)."""
        return self._check_totp(principal, code, now, confirming=True)

    def verify_totp_at_time(self, principal: str, code: str, now: datetime) -> bool:
        """Accept a code of a confirmed enrolment once; a replayed or old code is refused."""
        return self._check_totp(principal, code, now, confirming=False)

    def has_totp(self, principal: str) -> bool:
        with self._lock:
            row = self._conn.execute(
                "SELECT confirmed FROM totp WHERE principal = ?", (principal,)
            ).fetchone()
        return bool(row and row[0])

    def remove_totp(self, principal: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM totp WHERE principal = ?", (principal,))

    def _check_totp(self, principal: str, code: str, now: datetime, *, confirming: bool) -> bool:
        now_s = epoch_seconds(now)
        with self._tx() as cur:
            row = cur.execute(
                "SELECT nonce, ciphertext, algorithm, digits, period, confirmed, last_step, "
                "failures, locked_until FROM totp WHERE principal = ?",
                (principal,),
            ).fetchone()
            if row is None or bool(row[5]) == confirming or row[8] > now_s:
                return False
            nonce, ciphertext, algorithm, digits, period, _, last_step, failures, _ = row
            secret = self._open_secret(principal, bytes(nonce), bytes(ciphertext))
            current = time_step(now, period=period)
            matched: int | None = None
            for step in range(current - _TOTP_WINDOW, current + _TOTP_WINDOW + 1):
                candidate = hotp(secret, step, digits=digits, algorithm=algorithm)
                # compare every candidate so timing does not say which step matched
                if hmac.compare_digest(candidate.encode(), code.encode()) and matched is None:
                    matched = step
            if matched is None or matched <= last_step:
                failures += 1
                locked = now_s + int(_TOTP_LOCKOUT.total_seconds())
                cur.execute(
                    "UPDATE totp SET failures = ?, locked_until = ? WHERE principal = ?",
                    (
                        0 if failures >= _TOTP_MAX_FAILURES else failures,
                        locked if failures >= _TOTP_MAX_FAILURES else 0,
                        principal,
                    ),
                )
                return False
            cur.execute(
                "UPDATE totp SET last_step = ?, failures = 0, confirmed = 1 "
                "WHERE principal = ? AND last_step < ?",
                (matched, principal, matched),
            )
            return cur.rowcount == 1

    def totp_locked_until(self, principal: str) -> datetime | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT locked_until FROM totp WHERE principal = ?", (principal,)
            ).fetchone()
        return from_epoch(row[0]) if row and row[0] else None


def secret_base32(secret: bytes) -> str:
    return base64.b32encode(secret).decode().rstrip("=")
