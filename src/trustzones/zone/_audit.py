"""The workspace's audit zone: every event the parts emit, appended to the tamper-evident log.

Layout: the log is ``<audit.data_dir>/audit.db`` (its own SQLite file: the audit zone); its
Ed25519 signing key is ``.trustzones/audit.key`` (mode 0600, outside every audited zone) and
the public verifier key ``.trustzones/audit.pub`` is what a third party needs to check a proof.

The parts hand events to :meth:`Workspace.emit` as ``(kind, data)``; this module turns them
into CloudEvents (type ``io.trustzones.<kind>``) under the audit part's contract: strings are
references or short reasons, anything else that is not an integer or a boolean is reduced to
a digest. An event that cannot be recorded raises, so the action it describes does not go on
(fail closed).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import SecretStr

from trustzones.audit import AuditLog, NoteSigner, content_hash
from trustzones.audit.events import AuditEvent, new_event, record_accesses
from trustzones.audit.notes import write_key_files
from trustzones.audit.windows import RecordWindows, recover_pending
from trustzones.config import Config
from trustzones.config.model import AuditKafkaBackend
from trustzones.errors import AuditError

if TYPE_CHECKING:  # the Kafka modules need confluent-kafka (the `kafka` extra): imported on use
    from trustzones.audit._kafka import KafkaAuditLog
    from trustzones.streams._kafka_admin import KafkaConnection

__all__ = ["WorkspaceAudit"]

_REF = re.compile(r"^[A-Za-z0-9._:/@+=,-]{1,200}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{24,}")
_STANDARD = (
    "principal",
    "action",
    "resource",
    "zone",
    "decision",
    "reason",
    "policy_version",
    "grant_id",
)


def _extra_value(value: Any) -> Any:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        if _HEX64.match(value):  # a definition hash is already a digest
            return "sha256:" + value
        if _LONG_HEX.search(value) or not _REF.match(value):
            return content_hash(value.encode())
        return value
    if isinstance(value, list | tuple):
        items = [_extra_value(v) for v in value][:64]
        return [v for v in items if v is not None]
    if isinstance(value, Mapping):
        return [f"{k}:{v}" for k, v in value.items()][:64]
    return None


class WorkspaceAudit:
    """Appends the workspace's events to its audit log (opened on first use)."""

    def __init__(
        self, config: Config, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.config = config
        self.db = config.audit_dir / "audit.db"
        self.key_path = config.state_dir / "audit.key"
        self.public_key_path = config.state_dir / "audit.pub"
        self.pending_dir = config.audit_dir / "pending-counts"
        """Open record counts of ``aggregate`` zones, one file per live process."""
        self._clock = clock
        self._log: AuditLog | KafkaAuditLog | None = None
        self._windows: RecordWindows | None = None
        self._local = threading.local()  # .deferred: the events a deferred() block collects

    @property
    def origin(self) -> str:
        return self.config.file.audit.origin or f"trustzones/{self.config.file.name}"

    def provision(self) -> list[Path]:
        """Create the signing key pair and the log (idempotent). Returns the files written."""
        written: list[Path] = []
        if not self.key_path.exists():
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            write_key_files(NoteSigner.generate(self.origin), self.key_path, self.public_key_path)
            written += [self.key_path, self.public_key_path]
        if isinstance(self.config.file.audit.backend, AuditKafkaBackend):
            return written  # the topics and the writer come from `trustzones apply`
        self.log()
        written.append(self.db)
        return written

    def log(self) -> AuditLog | KafkaAuditLog:
        if self._log is None:
            if not self.key_path.exists():
                raise AuditError(
                    f"the audit signing key {self.key_path} is missing, so nothing can be "
                    "audited and nothing may happen; run `trustzones init` to create a workspace"
                )
            backend = self.config.file.audit.backend
            if isinstance(backend, AuditKafkaBackend):
                from trustzones.audit._kafka import KafkaAuditLog

                self._log = KafkaAuditLog(
                    self._writer_login(backend),
                    signer=NoteSigner.from_file(self.key_path),
                    prefix=backend.prefix,
                ).open()
                self._recover_counts()
                return self._log
            self.db.parent.mkdir(parents=True, exist_ok=True)
            self._log = AuditLog.open(
                self.db,
                signer=NoteSigner.from_file(self.key_path),
                checkpoint_interval=self.config.file.audit.checkpoint_every,
            )
            self._recover_counts()
        return self._log

    def _recover_counts(self) -> None:
        """Write the record counts a crashed process left (see ``audit.windows``)."""
        assert self._log is not None
        recover_pending(self.pending_dir, self._log.append_many)

    def _writer_login(self, backend: AuditKafkaBackend) -> KafkaConnection:
        """The audit writer's login: its SCRAM password as ``trustzones apply`` stored it."""
        path = self.config.state_dir / "kafka-credentials.yaml"
        try:
            doc = yaml.safe_load(path.read_text()) if path.exists() else {}
        except (OSError, yaml.YAMLError) as exc:
            raise AuditError(f"{path}: cannot read the Kafka credentials ({exc})") from exc
        password = ((doc or {}).get(backend.bootstrap) or {}).get(backend.writer)
        if not isinstance(password, str):
            raise AuditError(
                f"the audit writer {backend.writer!r} has no password in {path}, so nothing can "
                "be audited and nothing may happen; run `trustzones apply` to create it"
            )
        extra = {"ssl.ca.location": backend.ssl_ca_location} if backend.ssl_ca_location else {}
        from trustzones.streams._kafka_admin import KafkaConnection

        return KafkaConnection(
            backend.bootstrap,
            username=backend.writer,
            password=SecretStr(password),
            security_protocol=backend.security_protocol,
            sasl_mechanism=backend.sasl_mechanism,
            extra=extra,
        )

    def close(self) -> None:
        """Write the open record counts, then close the log (the log closes even if that
        fails; the counts then stay pending for the next process)."""
        try:
            if self._windows is not None:
                windows, self._windows = self._windows, None
                windows.close()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    # -- events ---------------------------------------------------------------------------
    def event(self, kind: str, data: Mapping[str, Any]) -> AuditEvent:
        d = dict(data)
        resource = str(
            d.get("resource")
            or d.get("flow")
            or d.get("subject")
            or d.get("topic")
            or d.get("zone")
            or kind
        )
        zone = str(d.get("zone") or resource.split("/")[0])
        raw = d.get("decision")
        decision: Literal["allow", "deny", "quarantine"] = (
            raw
            if raw in ("allow", "deny", "quarantine")
            else ("allow" if d.get("allowed", True) else "deny")
        )
        principal = str(
            d.get("principal")
            or d.get("approver")
            or d.get("requester")
            or d.get("acting_zone")
            or "trustzones"
        )
        reason = d.get("reason")
        extra = {}
        for k, v in d.items():
            if k in _STANDARD or k in ("allowed", "type", "time", "subject"):
                continue
            name = re.sub(r"[^a-z0-9_]", "_", str(k).lower())[:64] or "field"
            value = _extra_value(v)
            if value is not None:
                extra[
                    name
                    if not name.endswith("_hash") or str(value).startswith("sha256:")
                    else name + "_ref"
                ] = value
        return new_event(
            "io.trustzones." + re.sub(r"[^a-z0-9_.-]", "_", kind.lower()),
            source="/trustzones/" + kind.split(".")[0],
            principal=principal if _REF.match(principal) else content_hash(principal.encode()),
            action=str(d.get("action") or kind.split(".")[-1])[:64],
            resource=resource if _REF.match(resource) else content_hash(resource.encode()),
            zone=zone if _REF.match(zone) else "unknown",
            decision=decision,
            reason=str(reason)[:200] if reason else None,
            policy_version=str(d["policy_version"]) if d.get("policy_version") else None,
            grant_id=str(d["grant_id"]) if d.get("grant_id") else None,
            extra=extra,
        )

    @contextmanager
    def deferred(self) -> Iterator[list[AuditEvent]]:
        """Collect the events recorded on this thread inside the block instead of appending
        each one (a durable transaction apiece).

        For a caller that appends events of its own before the actions the collected ones
        describe take effect (a flow: before it writes a batch): it takes the collected
        events out of the yielded list and appends them together with its own, in one
        transaction. Whatever is still in the list when the block ends is appended then; if
        that fails the block raises :class:`~trustzones.errors.AuditError`. Nested blocks
        collect into the outermost one's list. Events are still built (and checked) when
        they are recorded, so a bad event fails where it happens.
        """
        outer = getattr(self._local, "deferred", None)
        if outer is not None:
            yield outer
            return
        pending: list[AuditEvent] = []
        self._local.deferred = pending
        try:
            yield pending
        finally:
            self._local.deferred = None
            if pending:
                events, pending[:] = list(pending), []
                try:
                    self.log().append_many(events)
                except AuditError:
                    raise
                except Exception as exc:  # fail closed, as record() does
                    raise AuditError(
                        f"could not record {len(events)} deferred events in the audit log: {exc}"
                    ) from exc

    def record(self, kind: str, data: Mapping[str, Any]) -> None:
        try:
            event = self.event(kind, data)
            deferred = getattr(self._local, "deferred", None)
            if deferred is not None:  # see deferred()
                deferred.append(event)
                return
            self.log().append(event)
        except AuditError:
            raise
        except Exception as exc:  # fail closed: an unrecorded action does not go on
            raise AuditError(f"could not record a {kind} event in the audit log: {exc}") from exc

    def record_records(
        self,
        direction: str,
        *,
        principal: str,
        zone: str,
        topic: str,
        records: Iterable[tuple[int, int, bytes | None]],
        grant_id: str | None = None,
    ) -> None:
        """Per-message audit: one event per record, with its position and content hash."""
        events = record_accesses(
            records,
            direction=direction,  # type: ignore[arg-type]
            principal=principal,
            zone=zone,
            topic=topic,
            grant_id=grant_id,
        )
        if events:
            self.log().append_many(events)

    def count_records(
        self,
        direction: str,
        *,
        principal: str,
        zone: str,
        topic: str,
        records: Iterable[tuple[int, int, int]],
    ) -> None:
        """Aggregate audit: count ``(partition, offset, bytes)`` records in the open window."""
        if self._windows is None:
            self.log()  # fail closed before counting: no signing key, no log, no counts
            self._windows = RecordWindows(
                self._append_counts,
                window_s=self.config.file.audit.aggregate_window,
                clock=self._clock,
                pending_dir=self.pending_dir,
            )
        self._windows.count(
            principal=principal if _REF.match(principal) else content_hash(principal.encode()),
            zone=zone,
            topic=topic,
            action=direction,  # type: ignore[arg-type]
            records=records,
        )

    def _append_counts(self, events: Sequence[AuditEvent]) -> None:
        self.log().append_many(events)
