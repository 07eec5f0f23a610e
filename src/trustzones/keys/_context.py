"""What every cipher of one zone shares: keystore, key table, audit callback, clock.

Internal. :class:`ZoneContext` creates keys (generate locally, wrap, store), unwraps stored
keys (turning every failure into the one opaque ``DecryptionFailed`` after auditing the
reason), and holds the zone's root secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import NoReturn

import orjson

from trustzones.errors import DecryptionFailed, KeyAccessDenied

from . import _primitives as prim
from ._errors import OPAQUE_MESSAGE, UnwrapFailed
from ._keystore import Keystore, check_zone_name
from ._table import KeyKind, KeyRecord, KeyTable

__all__ = ["AuditSink", "Clock", "ZoneContext", "key_aad", "log_audit_sink"]

#: Receives one event dict per audited action; the audit part provides the real sink.
AuditSink = Callable[[Mapping[str, object]], None]
Clock = Callable[[], float]

_log = logging.getLogger("trustzones.keys")
KEY_ID_BYTES = 16


def log_audit_sink(event: Mapping[str, object]) -> None:
    """Default sink: one JSON line per event on the ``trustzones.keys`` logger."""
    _log.warning("audit %s", orjson.dumps(event, option=orjson.OPT_SORT_KEYS).decode())


def key_aad(zone: str, kind: KeyKind, key_id: bytes, owner: bytes) -> bytes:
    """Associated data binding a wrapped key to its zone, kind, id and owner: a wrapped key
    copied to another row, kind or zone does not unwrap."""
    return prim.encode_parts(
        b"trustzones.keys.wrap.v1", zone.encode(), kind.encode(), key_id, owner
    )


class ZoneContext:
    """Keys of one zone, as seen by one process. Thread-safe."""

    def __init__(
        self,
        zone: str,
        *,
        keystore: Keystore,
        table: KeyTable,
        audit: AuditSink | None,
        clock: Clock,
        acting_zone: str | None = None,
    ) -> None:
        self.zone = check_zone_name(zone)
        self.zone_bytes = zone.encode()
        self.keystore = keystore
        self.table = table
        self.audit = audit or log_audit_sink
        self.clock = clock
        self.acting_zone = acting_zone
        self._root: bytes | None = None

    def emit(self, type_: str, **fields: object) -> None:
        event: dict[str, object] = {"type": type_, "zone": self.zone, "time": time.time()}
        if self.acting_zone is not None:
            event["acting_zone"] = self.acting_zone
        event.update(fields)
        self.audit(event)

    def fail(self, reason: str, **fields: object) -> NoReturn:
        """Audit ``reason`` and raise the opaque error (even if the audit sink fails)."""
        try:
            self.emit("keys.decryption_failed", reason=reason, **fields)
        except Exception:
            _log.exception("audit sink failed while recording a decryption failure")
        raise DecryptionFailed(OPAQUE_MESSAGE)

    def new_key(self, kind: KeyKind, *, size: int, owner: bytes = b"") -> tuple[KeyRecord, bytes]:
        """Generate a key locally, wrap it with the zone KEK and store it.

        For unique kinds another process may win the race; then its key is used.
        """
        key_id = prim.random_bytes(KEY_ID_BYTES)
        key = prim.random_bytes(size)
        wrapped = self.keystore.wrap(self.zone, key, aad=key_aad(self.zone, kind, key_id, owner))
        record = KeyRecord(key_id, kind, owner, wrapped.kek_version, wrapped.blob, self.clock())
        stored = self.table.insert(record)
        if stored is not record:
            return stored, self.unwrap(stored)
        self.emit(
            "keys.key_created", kind=kind, key_id=key_id.hex(), kek_version=wrapped.kek_version
        )
        return record, key

    def unwrap(self, record: KeyRecord) -> bytes:
        aad = key_aad(self.zone, record.kind, record.key_id, record.owner)
        try:
            return self.keystore.unwrap(self.zone, record.wrapped, aad=aad)
        except UnwrapFailed as exc:
            self.fail(exc.reason, key_id=record.key_id.hex(), kind=record.kind)
        except KeyAccessDenied as exc:
            try:
                self.emit("keys.access_denied", operation="unwrap", reason=str(exc))
            except Exception:
                _log.exception("audit sink failed while recording a refused key access")
            raise

    def root_secret(self) -> bytes:
        """The zone's root secret (32 bytes; created on first use, never rotated)."""
        if self._root is None:
            record = self.table.find("root")
            if record is None:
                _, self._root = self.new_key("root", size=32)
            else:
                self._root = self.unwrap(record)
        return self._root

    def secret(self, purpose: str, length: int = 32) -> bytes:
        """HKDF-SHA256 of the root secret for ``purpose`` (RFC 5869)."""
        if not purpose:
            raise ValueError("purpose must name what the secret is for, e.g. 'dlp/hmac'")
        if not 16 <= length <= 64:
            raise ValueError("secret length must be 16 to 64 bytes")
        return prim.hkdf_sha256(
            self.root_secret(),
            salt=b"trustzones.keys.secret.v1",
            info=prim.encode_parts(self.zone_bytes, purpose.encode()),
            length=length,
        )
