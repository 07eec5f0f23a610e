"""Envelope encryption of records: AES-256-GCM under rotating, locally generated data keys.

Record ciphertext, format version 1 (all integers big-endian)::

    offset  size  field
    0       1     format version (0x01)
    1       16    data key id: a row of the zone's key table, which holds the wrapped key
    17      12    nonce: the data key's invocation counter (NIST SP 800-38D section 8.2.1)
    29      n     AES-256-GCM ciphertext of the record
    29+n    16    GCM tag

    GCM associated data = the caller's aad (the storage backend builds it from zone, topic,
    partition and offset)

A record moved to another topic or offset does not decrypt (its aad differs). The version byte
and key id need not be in the associated data: a data key is random, used for this format
only, and unwraps only in its own zone's table under its own id (the wrap binds zone, kind and
id), so a changed id selects another key or none, a changed version byte is refused, and a
record moved to another zone finds no key there.

Each :class:`WrapOnlyCipher` generates its own data keys, so a nonce counter never repeats
under a key (a forked child drops the parent's key before its first seal). A data key is
retired after ``DekPolicy.max_encryptions`` seals, after ``max_age_s`` seconds, or when the
key table announces a newer KEK version (checked every ``refresh_s``). Readers cache unwrapped
keys for ``cache_ttl_s``: revoking a KEK version reaches a running reader within that time.

The per-record paths never read the clock: one daemon thread (the janitor) calls every live
cipher's :meth:`WrapOnlyCipher.expire_keys` every ``JANITOR_INTERVAL_S`` seconds, which sends
the next seal or open through the slow path once a key is due. Time-based limits are therefore
kept to within that interval. Call ``expire_keys()`` yourself after moving an injected clock.

Example::

    from trustzones.keys import LocalKeystore, MasterKey, SqliteKeyTable, ZoneCipher

    ks = LocalKeystore("keys/", master_key=MasterKey.generate())
    ks.create_kek("payments")
    with ZoneCipher("payments", keystore=ks, table=SqliteKeyTable("payments.keys")) as zc:
        ct = zc.seal(b'{"pan": "4111..."}', aad=b"payments/cards/0/17")
        assert zc.open(ct, aad=b"payments/cards/0/17") == b'{"pan": "4111..."}'
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ClassVar, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _primitives as prim
from ._context import KEY_ID_BYTES, AuditSink, Clock, ZoneContext
from ._keystore import Keystore
from ._table import KeyTable

if TYPE_CHECKING:
    from ._fields import FieldCipher

__all__ = [
    "JANITOR_INTERVAL_S",
    "RECORD_FORMAT_VERSION",
    "DekPolicy",
    "WrapOnlyCipher",
    "ZoneCipher",
]

RECORD_FORMAT_VERSION = 1
JANITOR_INTERVAL_S = 0.25
_VERSION_BYTE = bytes([RECORD_FORMAT_VERSION])
_NONCE_AT = 1 + KEY_ID_BYTES
_BODY_AT = _NONCE_AT + prim.NONCE_BYTES
_MIN_LEN = _BODY_AT + prim.TAG_BYTES
_KEK_META = "kek_version"
_nonce = struct.Struct(">4xQ").pack  # 12 bytes: the 64-bit invocation counter, zero-padded
_log = logging.getLogger("trustzones.keys")

# A cached data key for reading: (version byte + key id, AESGCM.decrypt, expiry).
_ReadKey = tuple[bytes, Callable[[bytes, bytes, bytes], bytes], float]


def _no_decrypt(nonce: bytes, data: bytes, aad: bytes) -> bytes:
    raise InvalidTag


# Its prefix is longer than any header, so startswith() never matches it.
_NO_KEY: _ReadKey = (b"\xff" * (_NONCE_AT + 1), _no_decrypt, float("-inf"))


@dataclass(frozen=True, slots=True)
class DekPolicy:
    """When data keys rotate and how long unwrapped keys are cached.

    ``max_encryptions`` is capped at 2**32 (NIST SP 800-38D's bound for one key).
    """

    max_age_s: float = 86_400.0
    max_encryptions: int = 2**28
    refresh_s: float = 30.0
    cache_ttl_s: float = 300.0
    cache_size: int = 10_000
    subject_key_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.max_encryptions <= 2**32:
            raise ValueError("DekPolicy.max_encryptions must be in 1..2**32")
        for name in ("max_age_s", "refresh_s", "cache_ttl_s", "subject_key_ttl_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DekPolicy.{name} must be positive")
        if self.cache_size < 1:
            raise ValueError("DekPolicy.cache_size must be at least 1")


class _WriteKey:
    """The data key a cipher currently seals with."""

    __slots__ = (
        "check_at",
        "counter",
        "encrypt",
        "expires_at",
        "kek_version",
        "key_id",
        "limit",
        "prefix",
    )

    def __init__(
        self, key_id: bytes, key: bytes, kek_version: int, now: float, p: DekPolicy
    ) -> None:
        self.key_id = key_id
        self.prefix = _VERSION_BYTE + key_id
        self.encrypt = AESGCM(key).encrypt
        self.counter = itertools.count()  # next() is atomic under the GIL: no nonce twice
        # `limit` is max_encryptions, or 0 once the janitor finds the key due for a check.
        self.limit = p.max_encryptions
        self.kek_version = kek_version
        self.expires_at = now + p.max_age_s
        self.check_at = min(now + p.refresh_s, self.expires_at)


class _Janitor:
    """One daemon thread that runs ``expire_keys`` on every live cipher."""

    live: ClassVar[weakref.WeakSet[WrapOnlyCipher]] = weakref.WeakSet()
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _thread: ClassVar[threading.Thread | None] = None

    @classmethod
    def register(cls, cipher: WrapOnlyCipher) -> None:
        with cls._lock:
            cls.live.add(cipher)
            if cls._thread is None or not cls._thread.is_alive():
                cls._thread = threading.Thread(
                    target=cls._run, name="trustzones-keys-janitor", daemon=True
                )
                cls._thread.start()

    @classmethod
    def _run(cls) -> None:
        while True:
            time.sleep(JANITOR_INTERVAL_S)
            for cipher in list(cls.live):
                try:
                    cipher.expire_keys()
                except Exception:  # a broken injected clock must not stop the others
                    _log.exception("expiring keys of zone %s failed", cipher.zone)

    @classmethod
    def after_fork_in_child(cls) -> None:
        # A child must never continue the parent's nonce counter under the same key, and
        # threads do not survive fork.
        cls._lock = threading.Lock()
        cls._thread = None
        for cipher in list(cls.live):
            cipher._write = None
            cipher._lock = threading.Lock()
        if cls.live:
            cls.register(next(iter(cls.live)))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Janitor.after_fork_in_child)


class WrapOnlyCipher:
    """Seals records for a zone: creates and wraps data keys, never unwraps any.

    This is what a flow gets for its destination zone. With the local keystore it needs only
    the zone's public key; with Vault, a token allowed to ``encrypt`` only. Thread-safe.
    """

    def __init__(
        self,
        zone: str,
        *,
        keystore: Keystore,
        table: KeyTable,
        audit: AuditSink | None = None,
        policy: DekPolicy | None = None,
        clock: Clock = time.time,
        acting_zone: str | None = None,
    ) -> None:
        self._ctx = ZoneContext(
            zone, keystore=keystore, table=table, audit=audit, clock=clock, acting_zone=acting_zone
        )
        self._policy = policy or DekPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._write: _WriteKey | None = None
        _Janitor.register(self)

    @property
    def zone(self) -> str:
        """The zone this cipher encrypts for."""
        return self._ctx.zone

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Encrypt one record; ``aad`` must be given again, identical, to :meth:`open`."""
        w = self._write
        if w is None:
            w = self._slow_path(None, 0)
        i = next(w.counter)
        if i >= w.limit:
            w = self._slow_path(w, i)
            i = next(w.counter)
        nonce = _nonce(i)
        return w.prefix + nonce + w.encrypt(nonce, plaintext, aad)

    def expire_keys(self) -> None:
        """Send the next seal through the checks (age, KEK version) if they are due.

        The janitor thread calls this; call it after moving an injected clock."""
        w = self._write
        if w is not None and self._clock() >= w.check_at:
            w.limit = 0

    def rotate_dek(self) -> None:
        """Retire the current data key now; the next seal creates a new one."""
        with self._lock:
            self._retire(self._write)
            self._write = None

    def _retire(self, w: _WriteKey | None, used: int | None = None) -> None:
        if w is None:
            return
        count = next(w.counter) if used is None else used
        if count:
            self._ctx.table.add_encryptions(w.key_id, min(count, self._policy.max_encryptions))

    def _slow_path(self, seen: _WriteKey | None, i: int) -> _WriteKey:
        with self._lock:
            w = self._write
            if w is not None and w is not seen:
                return w  # another thread already replaced it
            now = self._clock()
            if w is not None and i < self._policy.max_encryptions and now < w.expires_at:
                latest = self._ctx.table.get_meta(_KEK_META)
                if latest is None or latest <= w.kek_version:
                    w.check_at = min(now + self._policy.refresh_s, w.expires_at)
                    w.limit = self._policy.max_encryptions
                    return w
            self._retire(w, i if w is not None else None)
            record, key = self._ctx.new_key("dek", size=prim.GCM_KEY_BYTES)
            self._write = _WriteKey(record.key_id, key, record.kek_version, now, self._policy)
            self._on_new_key(record.key_id, key)
            return self._write

    def _on_new_key(self, key_id: bytes, key: bytes) -> None:
        """Hook for :class:`ZoneCipher` to cache its own keys for reading."""

    def close(self) -> None:
        """Flush the encryption count of the current data key to the key table."""
        with self._lock:
            self._retire(self._write)
            self._write = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ZoneCipher(WrapOnlyCipher):
    """Seals and opens records of the zone it acts for; derives secrets; encrypts fields.

    Thread-safe. Every decryption failure raises the one opaque
    :class:`~trustzones.errors.DecryptionFailed`; the reason goes to ``audit``.
    """

    def __init__(
        self,
        zone: str,
        *,
        keystore: Keystore,
        table: KeyTable,
        audit: AuditSink | None = None,
        policy: DekPolicy | None = None,
        clock: Clock = time.time,
        acting_zone: str | None = None,
    ) -> None:
        self._read: dict[bytes, _ReadKey] = {}
        self._last: _ReadKey = _NO_KEY
        self._fields: FieldCipher | None = None
        super().__init__(
            zone,
            keystore=keystore,
            table=table,
            audit=audit,
            policy=policy,
            clock=clock,
            acting_zone=acting_zone,
        )

    def _on_new_key(self, key_id: bytes, key: bytes) -> None:
        self._cache(key_id, key)

    def _cache(self, key_id: bytes, key: bytes) -> _ReadKey:
        entry = (
            _VERSION_BYTE + key_id,
            AESGCM(key).decrypt,
            self._clock() + self._policy.cache_ttl_s,
        )
        cache = self._read
        while len(cache) >= self._policy.cache_size:
            cache.pop(next(iter(cache)), None)  # oldest first
        cache[key_id] = entry
        self._last = entry
        return entry

    def open(self, ciphertext: bytes, *, aad: bytes) -> bytes:
        """Decrypt a record sealed for this zone with the same ``aad``."""
        # Hot path: consecutive records mostly share a data key; startswith() compares the
        # version byte and key id without building a slice. The janitor resets _last when
        # it expires.
        entry = self._last
        if not ciphertext.startswith(entry[0]):
            entry = self._read.get(ciphertext[1:_NONCE_AT]) or _NO_KEY
            if entry[2] <= self._clock() or ciphertext[0] != RECORD_FORMAT_VERSION:
                entry = self._load(ciphertext)
            self._last = entry
        try:
            return entry[1](ciphertext[_NONCE_AT:_BODY_AT], ciphertext[_BODY_AT:], aad)
        except (InvalidTag, ValueError):  # ValueError: truncated nonce
            self._ctx.fail(
                "record does not authenticate: modified ciphertext, wrong associated data "
                "(zone/topic/partition/offset) or wrong key",
                key_id=ciphertext[1:_NONCE_AT].hex(),
            )

    def expire_keys(self) -> None:
        super().expire_keys()
        if self._last[2] <= self._clock():
            self._last = _NO_KEY  # the dict path checks each entry's expiry itself

    def _load(self, ciphertext: bytes) -> _ReadKey:
        if len(ciphertext) < _MIN_LEN:
            self._ctx.fail(f"record ciphertext too short ({len(ciphertext)} bytes)")
        if ciphertext[0] != RECORD_FORMAT_VERSION:
            self._ctx.fail(f"unknown record format version {ciphertext[0]}")
        key_id = bytes(ciphertext[1:_NONCE_AT])
        record = self._ctx.table.get(key_id)
        if record is None or record.kind != "dek":
            self._read.pop(key_id, None)
            self._ctx.fail(
                "data key id not in this zone's key table (record from another zone, or its "
                "key was deleted)",
                key_id=key_id.hex(),
            )
        return self._cache(key_id, self._ctx.unwrap(record))

    def forget_keys(self) -> None:
        """Drop every cached unwrapped key (after a revocation, to take effect at once)."""
        self._last = _NO_KEY
        self._read.clear()
        if self._fields is not None:
            self._fields.forget_keys()

    def secret(self, purpose: str, *, length: int = 32) -> bytes:
        """A secret for ``purpose`` (HKDF-SHA256 from the zone's root secret).

        Stable across processes and KEK rotations: DLP transforms (HMAC pseudonyms, FF1,
        token vaults) key themselves with it. Different purposes and zones get unrelated keys.
        """
        return self._ctx.secret(purpose, length)

    @property
    def fields(self) -> FieldCipher:
        """Deterministic (AES-SIV) field encryption and crypto-shredding for this zone."""
        if self._fields is None:
            from ._fields import FieldCipher

            self._fields = FieldCipher(self._ctx, self._policy)
        return self._fields
