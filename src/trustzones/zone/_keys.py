"""The workspace's zone keys: where they live and how a process gets a key ring.

Layout (the state directory ``.trustzones/`` sits outside every zone):

- ``.trustzones/master/<zone>.key`` — one master key per zone (mode 0600). It wraps the
  private halves of the zone's KEKs. ``TRUSTZONES_MASTER_KEY_<ZONE>`` (zone upper-cased,
  ``-`` and ``.`` as ``_``) overrides the file, so a deployment can hand each process only
  the master keys of the zones it acts for;
- ``.trustzones/keys/<zone>.kek.json`` — the local keystore's KEK files;
- ``<zone data dir>/<zone>.keys.db`` — the zone's wrapped data keys, stored with the zone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trustzones.config import Config
from trustzones.keys import KeyRing, LocalKeystore, MasterKey, SqliteKeyTable
from trustzones.keys._table import KeyTable
from trustzones.streams._embedded import RecordSealer

__all__ = ["WorkspaceKeys", "master_key_env"]


def master_key_env(zone: str) -> str:
    return "TRUSTZONES_MASTER_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", zone).upper()


class WorkspaceKeys:
    """Key rings for the zones of one workspace (local keystore)."""

    def __init__(
        self, config: Config, *, emit: Callable[[str, dict[str, Any]], None] | None = None
    ) -> None:
        self.config = config
        self._emit = emit
        self.master_dir = config.state_dir / "master"
        self.keystore_dir = config.state_dir / "keys"
        self._rings: dict[str, KeyRing] = {}
        self._keystore: LocalKeystore | None = None

    def _master_keys(self) -> dict[str, MasterKey]:
        out: dict[str, MasterKey] = {}
        for zone in self.config.zones:
            env = master_key_env(zone)
            if os.environ.get(env):
                out[zone] = MasterKey.from_env(env)
                continue
            p = self.master_dir / f"{zone}.key"
            if p.exists():
                out[zone] = MasterKey.from_file(p)
        return out

    def keystore(self) -> LocalKeystore:
        if self._keystore is None:
            self._keystore = LocalKeystore(self.keystore_dir, master_key=self._master_keys())
        return self._keystore

    def provision(self) -> list[Path]:
        """Create missing master keys and KEKs (idempotent). Returns the files written."""
        written: list[Path] = []
        for d in (self.config.state_dir, self.master_dir, self.keystore_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        for zone in self.config.zones:
            p = self.master_dir / f"{zone}.key"
            if not p.exists() and not os.environ.get(master_key_env(zone)):
                MasterKey.create_file(p)
                written.append(p)
        self._keystore = None
        ks = self.keystore()
        for zone in self.config.zones:
            ks.create_kek(zone, exist_ok=True)
        return written

    def table(self, zone: str) -> KeyTable:
        """A new connection to ``zone``'s key table (stored with the zone's data)."""
        return self._table(zone)

    def _table(self, zone: str) -> KeyTable:
        # Each ring opens (and closes) its own connection to a zone's key table.
        d = self.config.data_dir(zone)
        d.mkdir(parents=True, exist_ok=True)
        return SqliteKeyTable(d / f"{zone}.keys.db")

    def ring(self, acting_zone: str) -> KeyRing:
        """The keys a process acting for ``acting_zone`` may use (see KeyRing's rule)."""
        r = self._rings.get(acting_zone)
        if r is None:
            c = self.config
            r = KeyRing(
                acting_zone,
                classifications=c.classifications,
                zones={z.name: z.classification for z in c.zones.values()},
                keystore=self.keystore(),
                tables=self._table,
                audit=self._audit if self._emit is not None else None,
            )
            self._rings[acting_zone] = r
        return r

    def record_sealing(self, zone: str, acting_zone: str) -> tuple[RecordSealer, bytes]:
        """How a process acting for ``acting_zone`` seals ``zone``'s records on Kafka.

        The cipher opens records too when the zone is the acting zone (a wrap-only sealer
        otherwise: a flow writing down). The secret keys the HMAC pseudonyms of record keys
        on the broker; it comes from the *acting* zone's keys (a wrap-only writer holds no
        secret of the zone it writes into), bound to ``zone`` by its purpose.
        """
        ring = self.ring(acting_zone)
        cipher: RecordSealer = ring.cipher(zone) if zone == acting_zone else ring.wrap_only(zone)
        return cipher, ring.secret(acting_zone, f"streams/kafka-key/{zone}")

    def _audit(self, event: Mapping[str, Any]) -> None:
        assert self._emit is not None
        self._emit(str(event.get("type", "keys.event")), dict(event))

    def close(self) -> None:
        for r in self._rings.values():
            r.close()
        self._rings.clear()
        if self._keystore is not None:
            self._keystore.close()
            self._keystore = None
