"""Key administration for one zone: create, rotate, rewrap, status, revoke, shred."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ._context import AuditSink, Clock, ZoneContext, key_aad
from ._envelope import _KEK_META, DekPolicy, ZoneCipher
from ._errors import UnwrapFailed
from ._keystore import KekStatus, Keystore
from ._table import KeyTable, WrappedUpdate

__all__ = ["KeyAdmin", "RewrapReport", "ZoneKeyStatus"]

_log = logging.getLogger("trustzones.keys")


@dataclass(frozen=True, slots=True)
class RewrapReport:
    """Outcome of rewrapping a zone's stored keys under its newest KEK version."""

    zone: str
    kek_version: int
    rewrapped: int
    failed: int
    up_to_date: int


@dataclass(frozen=True, slots=True)
class ZoneKeyStatus:
    """What ``trustzones keys status`` shows for one zone."""

    zone: str
    kek: KekStatus
    deks: int
    deks_by_kek_version: dict[int, int] = field(default_factory=dict)
    oldest_dek_age_s: float | None = None
    newest_dek_age_s: float | None = None
    encryptions: int = 0
    subject_keys: int = 0
    needs_rewrap: int = 0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "zone": self.zone,
            "backend": self.kek.backend,
            "kek": {
                "latest": self.kek.latest,
                "versions": [
                    {"version": v.version, "created_at": v.created_at, "state": v.state}
                    for v in self.kek.versions
                ],
            },
            "deks": {
                "count": self.deks,
                "by_kek_version": {str(k): v for k, v in sorted(self.deks_by_kek_version.items())},
                "oldest_age_s": self.oldest_dek_age_s,
                "newest_age_s": self.newest_dek_age_s,
                "encryptions": self.encryptions,
            },
            "subject_keys": self.subject_keys,
            "needs_rewrap": self.needs_rewrap,
        }


class KeyAdmin:
    """Administration of one zone's keys (the ``trustzones keys`` commands use this)."""

    def __init__(
        self,
        zone: str,
        *,
        keystore: Keystore,
        table: KeyTable,
        audit: AuditSink | None = None,
        clock: Clock = time.time,
        acting_zone: str | None = None,
        on_rotate: Callable[[int], None] | None = None,
    ) -> None:
        self._ctx = ZoneContext(
            zone, keystore=keystore, table=table, audit=audit, clock=clock, acting_zone=acting_zone
        )
        self._on_rotate = on_rotate

    @property
    def zone(self) -> str:
        """The zone administered."""
        return self._ctx.zone

    def create(self, *, exist_ok: bool = False) -> KekStatus:
        """Create the zone's KEK (version 1)."""
        status = self._ctx.keystore.create_kek(self.zone, exist_ok=exist_ok)
        self._ctx.table.set_meta(_KEK_META, status.latest)
        self._ctx.emit("keys.kek_created", kek_version=status.latest)
        return status

    def rotate(self, *, rewrap: bool = True) -> tuple[int, RewrapReport | None]:
        """Make a new KEK version. Writers switch to new data keys wrapped by it at once (in
        other processes within ``DekPolicy.refresh_s``); with ``rewrap``, stored keys are then
        rewrapped under it (data is never decrypted)."""
        version = self._ctx.keystore.rotate_kek(self.zone)
        self._ctx.table.set_meta(_KEK_META, version)
        self._ctx.emit("keys.kek_rotated", kek_version=version)
        if self._on_rotate is not None:
            self._on_rotate(version)
        return version, (self.rewrap() if rewrap else None)

    def rewrap(self, *, batch_size: int = 200) -> RewrapReport:
        """Rewrap every stored key still wrapped by an older KEK version.

        Only wrapped keys move; records are untouched. Safe to rerun and to run while
        writers work (each row is replaced only if nobody changed it meanwhile).
        """
        latest = self._ctx.keystore.status(self.zone).latest
        every = list(self._ctx.table.records())
        rows = [r for r in every if r.kek_version < latest]
        done = failed = 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            items = [(r.wrapped, key_aad(self.zone, r.kind, r.key_id, r.owner)) for r in chunk]
            updates = []
            for row, result in zip(
                chunk, self._ctx.keystore.rewrap_many(self.zone, items), strict=True
            ):
                if isinstance(result, UnwrapFailed):
                    failed += 1
                    self._ctx.emit(
                        "keys.rewrap_failed",
                        key_id=row.key_id.hex(),
                        kind=row.kind,
                        reason=result.reason,
                    )
                else:
                    updates.append(
                        WrappedUpdate(row.key_id, row.wrapped, result.blob, result.kek_version)
                    )
            done += self._ctx.table.replace_wrapped_many(updates)
        report = RewrapReport(self.zone, latest, done, failed, len(every) - len(rows))
        self._ctx.emit("keys.rewrapped", kek_version=latest, rewrapped=done, failed=failed)
        return report

    def start_rewrap(self, *, batch_size: int = 200) -> threading.Thread:
        """Run :meth:`rewrap` in a background thread (writers and readers keep working: rows
        change by compare-and-set). ``join()`` the thread to wait; the outcome is audited
        (``keys.rewrapped``), and an error is logged and audited as ``keys.rewrap_failed``."""

        def run() -> None:
            try:
                self.rewrap(batch_size=batch_size)
            except Exception as exc:
                _log.exception("background rewrap of zone %s failed", self.zone)
                self._ctx.emit("keys.rewrap_failed", reason=f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name=f"trustzones-rewrap-{self.zone}")
        thread.start()
        return thread

    def destroy_versions(self, *, below: int) -> None:
        """Destroy KEK versions older than ``below`` (revocation): keys still wrapped by them,
        and the records under those keys, become unreadable. Rewrap first to keep data."""
        self._ctx.keystore.destroy_versions(self.zone, below=below)
        self._ctx.emit("keys.kek_versions_destroyed", below=below)

    def status(self) -> ZoneKeyStatus:
        """KEK versions, data keys per KEK version, ages and encryption counts."""
        kek = self._ctx.keystore.status(self.zone)
        now = self._ctx.clock()
        by_version: Counter[int] = Counter()
        ages: list[float] = []
        encryptions = subjects = stale = 0
        for r in self._ctx.table.records():
            if r.kek_version < kek.latest:
                stale += 1
            if r.kind == "subject":
                subjects += 1
            if r.kind != "dek":
                continue
            by_version[r.kek_version] += 1
            ages.append(now - r.created_at)
            encryptions += r.encryptions
        return ZoneKeyStatus(
            zone=self.zone,
            kek=kek,
            deks=len(ages),
            deks_by_kek_version=dict(by_version),
            oldest_dek_age_s=max(ages) if ages else None,
            newest_dek_age_s=min(ages) if ages else None,
            encryptions=encryptions,
            subject_keys=subjects,
            needs_rewrap=stale,
        )

    def shred(self, subject: str) -> int:
        """Crypto-shred ``subject`` in this zone (see :meth:`FieldCipher.shred`)."""
        cipher = ZoneCipher(
            self.zone,
            keystore=self._ctx.keystore,
            table=self._ctx.table,
            audit=self._ctx.audit,
            policy=DekPolicy(),
            clock=self._ctx.clock,
            acting_zone=self._ctx.acting_zone,
        )
        return cipher.fields.shred(subject)
