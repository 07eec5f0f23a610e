"""Deterministic field encryption (AES-256-SIV) and crypto-shredding per data subject.

A field token, format version 2::

    offset  size  field
    0       1     format version (0x02)
    1       16    key id (the zone's field key, or the subject's key)
    17      16    SIV (RFC 5297 synthetic IV, also the tag)
    33      n     ciphertext

    S2V associated data = ["trustzones.field.v2" || bytes 0..16 || len(zone) || zone, aad]

Equal values sealed with the same key and ``aad`` give equal tokens, so encrypted columns
still join and group. Use ``aad`` for the field's meaning (``b"customer.email"``), not for
the record's position, or equal values stop matching. Field and subject keys never change
with KEK rotation (only their wrapping does), so tokens keep matching across rotations.

With ``subject=...`` the value is sealed under a key of its own for that data subject; the
key is random, stored wrapped in the zone's key table under an HMAC of the subject id, and
:meth:`FieldCipher.shred` deletes it: every token of that subject becomes unreadable
(GDPR art. 17 erasure by crypto-shredding). Other processes stop using a shredded key within
``DekPolicy.subject_key_ttl_s``; values they seal for the subject under it meanwhile become
unreadable with the rest, and after that a new key is made for the subject. Backups of the key
table taken before the shred still hold the wrapped key; destroying them (or the KEK version
that wrapped it) completes the erasure.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from . import _primitives as prim
from ._context import KEY_ID_BYTES, ZoneContext
from ._envelope import DekPolicy
from ._table import KeyKind

__all__ = ["FIELD_FORMAT_VERSION", "FieldCipher"]

FIELD_FORMAT_VERSION = 2
_VERSION_BYTE = bytes([FIELD_FORMAT_VERSION])
_DOMAIN = b"trustzones.field.v2"
_HEADER = 1 + KEY_ID_BYTES
_MIN_LEN = _HEADER + 16


class FieldCipher:
    """AES-SIV field encryption for one zone. Get it from :attr:`ZoneCipher.fields`."""

    def __init__(self, ctx: ZoneContext, policy: DekPolicy) -> None:
        self._ctx = ctx
        self._policy = policy
        self._lock = threading.Lock()
        zone = ctx.zone_bytes
        self._zone_part = struct.pack(">I", len(zone)) + zone
        # subject (or None) -> (key id, cipher, expiry); key id -> (cipher, expiry)
        self._by_subject: dict[str | None, tuple[bytes, AESSIV, float]] = {}
        self._by_id: dict[bytes, tuple[AESSIV, float]] = {}
        self._index_key: bytes | None = None

    def subject_ref(self, subject: str) -> bytes:
        """The key table's reference for ``subject``: HMAC-SHA256 under a zone secret, so the
        table does not reveal subject ids."""
        if self._index_key is None:
            self._index_key = self._ctx.secret("keys/subject-index")
        return hmac.new(self._index_key, subject.encode(), hashlib.sha256).digest()

    def _key_for(self, subject: str | None) -> tuple[bytes, AESSIV]:
        now = self._ctx.clock()
        hit = self._by_subject.get(subject)
        if hit is not None and hit[2] > now:
            return hit[0], hit[1]
        with self._lock:
            kind: KeyKind
            if subject is None:
                kind, owner, ttl = "field", b"", self._policy.cache_ttl_s
            else:
                kind, owner, ttl = (
                    "subject",
                    self.subject_ref(subject),
                    self._policy.subject_key_ttl_s,
                )
            record = self._ctx.table.find(kind, owner)
            if record is None:
                record, key = self._ctx.new_key(kind, size=prim.SIV_KEY_BYTES, owner=owner)
            else:
                key = self._ctx.unwrap(record)
            siv = AESSIV(key)
            self._bound(self._by_subject)
            self._by_subject[subject] = (record.key_id, siv, now + ttl)
            self._bound(self._by_id)
            self._by_id[record.key_id] = (siv, now + ttl)
            return record.key_id, siv

    def _bound(self, cache: dict[Any, Any]) -> None:
        while len(cache) >= self._policy.cache_size:
            cache.pop(next(iter(cache)), None)  # oldest first

    def seal(self, value: bytes, *, aad: bytes, subject: str | None = None) -> bytes:
        """Encrypt ``value`` deterministically (under ``subject``'s own key if given)."""
        key_id, siv = self._key_for(subject)
        header = _VERSION_BYTE + key_id
        return header + siv.encrypt(value, [_DOMAIN + header + self._zone_part, aad])

    def open(self, token: bytes, *, aad: bytes) -> bytes:
        """Decrypt a token from :meth:`seal` with the same ``aad``."""
        if len(token) < _MIN_LEN or token[0] != FIELD_FORMAT_VERSION:
            self._ctx.fail("not a field token of a known format version")
        key_id = bytes(token[1:_HEADER])
        hit = self._by_id.get(key_id)
        siv = self._load(key_id) if hit is None or hit[1] <= self._ctx.clock() else hit[0]
        try:
            return siv.decrypt(token[_HEADER:], [_DOMAIN + token[:_HEADER] + self._zone_part, aad])
        except InvalidTag:
            self._ctx.fail(
                "field token does not authenticate: modified, wrong associated data or wrong key",
                key_id=key_id.hex(),
            )

    def _load(self, key_id: bytes) -> AESSIV:
        record = self._ctx.table.get(key_id)
        if record is None or record.kind not in ("field", "subject"):
            self._by_id.pop(key_id, None)
            self._ctx.fail(
                "field key id not in this zone's key table (subject shredded, or token from "
                "another zone)",
                key_id=key_id.hex(),
            )
        siv = AESSIV(self._ctx.unwrap(record))
        ttl = (
            self._policy.subject_key_ttl_s if record.kind == "subject" else self._policy.cache_ttl_s
        )
        self._bound(self._by_id)
        self._by_id[key_id] = (siv, self._ctx.clock() + ttl)
        return siv

    def shred(self, subject: str) -> int:
        """Destroy ``subject``'s key: all of its tokens become unreadable. Returns the number
        of keys destroyed (0 if nothing was ever sealed for the subject). Audited."""
        ref = self.subject_ref(subject)
        with self._lock:
            hit = self._by_subject.pop(subject, None)
            if hit is not None:
                self._by_id.pop(hit[0], None)
            record = self._ctx.table.find("subject", ref)
            if record is not None:
                self._by_id.pop(record.key_id, None)
            count = self._ctx.table.delete_owner("subject", ref)
        self._ctx.emit("keys.subject_shredded", subject_ref=ref.hex(), keys_destroyed=count)
        return count

    def forget_keys(self) -> None:
        """Drop every cached key."""
        with self._lock:
            self._by_subject.clear()
            self._by_id.clear()
