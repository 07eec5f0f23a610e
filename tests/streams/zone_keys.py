"""Real zone keys for the streams tests: a local keystore and key tables in a temp directory.

The ciphers are the keys part's own (:class:`~trustzones.keys.ZoneCipher`,
:class:`~trustzones.keys.WrapOnlyCipher`), not stand-ins, so the tests exercise the envelope
format, the associated data and the key isolation rule as the workspace uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from trustzones.keys import (
    KeyRing,
    LocalKeystore,
    MasterKey,
    SqliteKeyTable,
    WrapOnlyCipher,
    ZoneCipher,
)

CLASSES = ("public", "internal", "confidential", "restricted")


class ZoneKeys:
    """Key rings for the zones in ``levels`` (zone → classification); ``events`` collects
    every audit event of every ring."""

    def __init__(self, root: Path, levels: Mapping[str, str]) -> None:
        self.levels = dict(levels)
        self.events: list[dict[str, object]] = []
        keks = root / "keks"
        keks.mkdir(parents=True, exist_ok=True)
        keks.chmod(0o700)
        self._keystore = LocalKeystore(keks, master_key=MasterKey.generate())
        for zone in self.levels:
            self._keystore.create_kek(zone)
        self._root = root
        self._rings: dict[str, KeyRing] = {}

    def ring(self, acting: str) -> KeyRing:
        ring = self._rings.get(acting)
        if ring is None:
            ring = KeyRing(
                acting,
                classifications=CLASSES,
                zones=self.levels,
                keystore=self._keystore,
                tables=lambda z: SqliteKeyTable(self._root / f"{z}.keys.db"),
                audit=lambda e: self.events.append(dict(e)),
            )
            self._rings[acting] = ring
        return ring

    def cipher(self, zone: str) -> ZoneCipher:
        return self.ring(zone).cipher(zone)

    def wrap_only(self, zone: str, *, acting: str) -> WrapOnlyCipher:
        return self.ring(acting).wrap_only(zone)

    def secret(self, zone: str, *, acting: str | None = None) -> bytes:
        """The broker-key secret the workspace derives (``WorkspaceKeys.record_sealing``)."""
        acting = acting or zone
        return self.ring(acting).secret(acting, f"streams/kafka-key/{zone}")

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._keystore.close()
