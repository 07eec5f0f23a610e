"""Isolation: the keys a process acting for one zone may use.

A :class:`KeyRing` is built for one acting zone from the ordered classifications and each
zone's classification. Its rule (invariant 5 of DESIGN.md, "keys stay in their zone"):

* **unwrap** (open records, field tokens, secrets, administration) — the acting zone only;
* **wrap** (create data keys and seal records) — any zone whose classification is not above
  the acting zone's: a flow running in its source zone writes into a lower destination;
* anything else is refused with :class:`~trustzones.errors.KeyAccessDenied`, and the refusal
  goes to the audit callback. That includes wrapping for a *higher* zone: data moves down
  through flows, so a process of a lower zone gets no handle on a higher zone's keys at all.

The ring hands the ciphers a keystore scoped by the same rule, so even a cipher built by hand
from ``ring.keystore`` cannot unwrap another zone's keys. In-process checks are a policy, not
a wall: the wall is key material. Give each process only its own zone's master key (local
keystore) or a Vault token with :meth:`VaultTransitKeystore.policy` for its zone, and the
keystore itself cannot unwrap anything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from trustzones.errors import ConfigError, KeyAccessDenied

from ._admin import KeyAdmin
from ._context import AuditSink, Clock, log_audit_sink
from ._envelope import DekPolicy, WrapOnlyCipher, ZoneCipher
from ._errors import UnwrapFailed
from ._keystore import KekStatus, Keystore, WrappedKey
from ._table import KeyTable

__all__ = ["KeyRing"]

_log = logging.getLogger("trustzones.keys")

Access = Literal["wrap", "unwrap"]


class KeyRing:
    """The zone keys available to a process acting for ``acting_zone``.

    ``classifications`` is ordered from least to most sensitive; ``zones`` maps every zone to
    its classification; ``tables`` opens a zone's key table (called once per zone).
    """

    def __init__(
        self,
        acting_zone: str,
        *,
        classifications: Sequence[str],
        zones: Mapping[str, str],
        keystore: Keystore,
        tables: Callable[[str], KeyTable],
        audit: AuditSink | None = None,
        policy: DekPolicy | None = None,
        clock: Clock = time.time,
    ) -> None:
        rank = {c: i for i, c in enumerate(classifications)}
        problems = []
        if len(rank) != len(classifications):
            problems.append("classifications contain a duplicate")
        for zone, cls in zones.items():
            if cls not in rank:
                problems.append(f"zone {zone!r} has unknown classification {cls!r}")
        if acting_zone not in zones:
            problems.append(f"acting zone {acting_zone!r} is not a declared zone")
        if problems:
            raise ConfigError(
                "cannot build a key ring: " + "; ".join(problems) + " (fix trustzones.yaml)",
                problems,
            )
        self._acting = acting_zone
        self._rank = {zone: rank[cls] for zone, cls in zones.items()}
        self._classes = dict(zones)
        self._audit = audit or log_audit_sink
        self._policy = policy or DekPolicy()
        self._clock = clock
        self._tables_factory = tables
        self._tables: dict[str, KeyTable] = {}
        self._ciphers: dict[str, ZoneCipher] = {}
        self._writers: dict[str, WrapOnlyCipher] = {}
        self.keystore: Keystore = _ScopedKeystore(keystore, self)

    @property
    def acting_zone(self) -> str:
        """The zone this process acts for."""
        return self._acting

    def allows(self, zone: str, access: Access) -> bool:
        """Whether ``access`` to ``zone``'s keys is allowed (no audit event)."""
        if zone not in self._rank:
            return False
        if access == "unwrap":
            return zone == self._acting
        return self._rank[zone] <= self._rank[self._acting]

    def check(self, zone: str, access: Access, operation: str) -> None:
        """Raise :class:`KeyAccessDenied` (audited) unless ``access`` to ``zone`` is allowed."""
        if self.allows(zone, access):
            return
        if zone not in self._rank:
            why = f"zone {zone!r} is not declared"
        elif access == "unwrap":
            why = (
                f"a process acting for zone {self._acting!r} may unwrap only that zone's keys, "
                f"not zone {zone!r}'s"
            )
        else:
            why = (
                f"zone {zone!r} ({self._classes[zone]}) is above zone {self._acting!r} "
                f"({self._classes[self._acting]}) that this process acts for"
            )
        try:
            self._audit(
                {
                    "type": "keys.access_denied",
                    "zone": zone,
                    "acting_zone": self._acting,
                    "operation": operation,
                    "reason": why,
                    "time": time.time(),
                }
            )
        except Exception:  # the refusal stands even if it cannot be recorded
            _log.exception("audit sink failed while recording a refused key access")
        raise KeyAccessDenied(f"cannot {operation} for zone {zone!r}: {why}")

    def _table(self, zone: str) -> KeyTable:
        if zone not in self._tables:
            self._tables[zone] = self._tables_factory(zone)
        return self._tables[zone]

    def cipher(self, zone: str) -> ZoneCipher:
        """Seal and open records (and fields, secrets) of the acting zone."""
        self.check(zone, "unwrap", "open a zone cipher")
        if zone not in self._ciphers:
            self._ciphers[zone] = ZoneCipher(
                zone,
                keystore=self.keystore,
                table=self._table(zone),
                audit=self._audit,
                policy=self._policy,
                clock=self._clock,
                acting_zone=self._acting,
            )
        return self._ciphers[zone]

    def wrap_only(self, zone: str) -> WrapOnlyCipher:
        """Seal records into ``zone`` (a flow's destination) without being able to open any."""
        self.check(zone, "wrap", "open a wrap-only cipher")
        if zone not in self._writers:
            self._writers[zone] = WrapOnlyCipher(
                zone,
                keystore=self.keystore,
                table=self._table(zone),
                audit=self._audit,
                policy=self._policy,
                clock=self._clock,
                acting_zone=self._acting,
            )
        return self._writers[zone]

    def secret(self, zone: str, purpose: str, *, length: int = 32) -> bytes:
        """``cipher(zone).secret(purpose)``: derived secrets of the acting zone only."""
        return self.cipher(zone).secret(purpose, length=length)

    def admin(self, zone: str) -> KeyAdmin:
        """Rotation, status and shredding for the acting zone."""
        self.check(zone, "unwrap", "administer keys")
        return KeyAdmin(
            zone,
            keystore=self.keystore,
            table=self._table(zone),
            audit=self._audit,
            clock=self._clock,
            acting_zone=self._acting,
            on_rotate=lambda _version: self._retire_writers(zone),
        )

    def shred(self, zone: str, subject: str) -> int:
        """Crypto-shred ``subject`` in ``zone`` (the acting zone): every field sealed for the
        subject becomes unreadable. Returns the number of keys destroyed; audited."""
        if zone in self._ciphers:  # evict this process's cached copy at once
            return self._ciphers[zone].fields.shred(subject)
        return self.admin(zone).shred(subject)

    def _retire_writers(self, zone: str) -> None:
        # New data in this process uses the new KEK version from the next record on.
        for c in (self._ciphers.get(zone), self._writers.get(zone)):
            if c is not None:
                c.rotate_dek()

    def close(self) -> None:
        """Flush and close every cipher and key table the ring opened."""
        for c in (*self._ciphers.values(), *self._writers.values()):
            c.close()
        for t in self._tables.values():
            t.close()
        self._ciphers.clear()
        self._writers.clear()
        self._tables.clear()

    def __enter__(self) -> KeyRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ScopedKeystore(Keystore):
    """A keystore that applies a :class:`KeyRing`'s rule before every call."""

    def __init__(self, inner: Keystore, ring: KeyRing) -> None:
        self._inner = inner
        self._ring = ring
        self.backend = inner.backend

    def create_kek(self, zone: str, *, exist_ok: bool = False) -> KekStatus:
        self._ring.check(zone, "unwrap", "create a KEK")
        return self._inner.create_kek(zone, exist_ok=exist_ok)

    def rotate_kek(self, zone: str) -> int:
        self._ring.check(zone, "unwrap", "rotate a KEK")
        return self._inner.rotate_kek(zone)

    def wrap(self, zone: str, key: bytes, *, aad: bytes) -> WrappedKey:
        self._ring.check(zone, "wrap", "wrap a key")
        return self._inner.wrap(zone, key, aad=aad)

    def unwrap(self, zone: str, blob: bytes, *, aad: bytes) -> bytes:
        self._ring.check(zone, "unwrap", "unwrap a key")
        return self._inner.unwrap(zone, blob, aad=aad)

    def rewrap(self, zone: str, blob: bytes, *, aad: bytes) -> WrappedKey:
        self._ring.check(zone, "unwrap", "rewrap a key")
        return self._inner.rewrap(zone, blob, aad=aad)

    def rewrap_many(
        self, zone: str, items: Sequence[tuple[bytes, bytes]]
    ) -> list[WrappedKey | UnwrapFailed]:
        self._ring.check(zone, "unwrap", "rewrap keys")
        return self._inner.rewrap_many(zone, items)

    def status(self, zone: str) -> KekStatus:
        self._ring.check(zone, "wrap", "read KEK status")
        return self._inner.status(zone)

    def zones(self) -> list[str]:
        return [z for z in self._inner.zones() if self._ring.allows(z, "wrap")]

    def destroy_versions(self, zone: str, *, below: int) -> None:
        self._ring.check(zone, "unwrap", "destroy KEK versions")
        self._inner.destroy_versions(zone, below=below)

    def destroy_kek(self, zone: str) -> None:
        self._ring.check(zone, "unwrap", "destroy a KEK")
        self._inner.destroy_kek(zone)

    def close(self) -> None:
        """The ring does not own the keystore: whoever opened it closes it."""
