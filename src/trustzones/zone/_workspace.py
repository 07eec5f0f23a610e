"""The zone runtime: a loaded configuration with its zones opened, and the only doors to them.

Example::

    from trustzones.zone import Workspace

    with Workspace.open("trustzones.yaml") as ws:
        ws.produce("analytics.clickstream", [b'{"event_id": "e1", ...}'],
                   principal="clickstream-service")
        for record in ws.consumer("analytics.clickstream", principal="marketing-analyst"):
            ...

Every produce and every consumer poll asks the authorizer first (deny by default). Records
are checked at ingress (size, JSON, schema, rate) and stored with lineage headers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import SecretStr

from trustzones.access import Identity
from trustzones.config import CONFIG_FILENAME, Config
from trustzones.config.model import EmbeddedBackend as EmbeddedSettings
from trustzones.errors import AccessDenied, AuthenticationFailed, RecordRejected, StreamError
from trustzones.streams import Backend, EmbeddedBackend, NewRecord, Record, RecordPosition
from trustzones.streams.base import StartFrom
from trustzones.zone._access import WorkspaceAccess
from trustzones.zone._audit import WorkspaceAudit
from trustzones.zone._authz import Action, Authorizer, Decision, utcnow
from trustzones.zone._ingress import TokenBucket, TopicValidator
from trustzones.zone._keys import WorkspaceKeys

__all__ = ["ProduceResult", "Workspace", "ZoneConsumer", "find_config"]

Who = str | Identity

LINEAGE_PRODUCER = "tz.producer"
LINEAGE_TIME = "tz.produced_at"
LINEAGE_SCHEMA = "tz.schema"


def find_config(explicit: str | Path | None = None) -> Path:
    """``--config`` / ``TRUSTZONES_CONFIG`` if given, else ``./trustzones.yaml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TRUSTZONES_CONFIG")
    if env:
        return Path(env)
    return Path.cwd() / CONFIG_FILENAME


@dataclass
class ProduceResult:
    accepted: list[RecordPosition] = field(default_factory=list)
    rejected: list[RecordRejected] = field(default_factory=list)


class Workspace:
    """One configuration and its open zones. Not thread-safe; one per thread or process."""

    def __init__(
        self,
        config: Config,
        *,
        authorizer: Authorizer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self._authorizer = authorizer
        self.clock = clock
        self._access: WorkspaceAccess | None = None
        self._backends: dict[tuple[str, str], Backend] = {}
        self._keys: WorkspaceKeys | None = None
        self.event_sinks: list[Callable[[str, dict[str, Any]], None]] = []
        self._audit: WorkspaceAudit | None = None
        self._validators: dict[str, TopicValidator] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    @classmethod
    def open(cls, path: str | Path | None = None, **kwargs: object) -> Workspace:
        return cls(Config.from_yaml(find_config(path)), **kwargs)  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()
        if self._keys is not None:
            self._keys.close()
            self._keys = None
        if self._access is not None:
            self._access.close()
            self._access = None
        if self._audit is not None:
            self._audit.close()
            self._audit = None

    @property
    def access(self) -> WorkspaceAccess:
        """Authentication and the policy decision point (credentials written by init)."""
        if self._access is None:
            self._access = WorkspaceAccess(self.config, emit=self.emit, clock=self.clock)
        return self._access

    @property
    def audit(self) -> WorkspaceAudit:
        """The audit zone's log writer (created by ``trustzones init``)."""
        if self._audit is None:
            self._audit = WorkspaceAudit(self.config)
        return self._audit

    def emit(self, action: str, data: dict[str, Any]) -> None:
        """Record an event (references and hashes only, never values) in the audit zone.

        Raises when it cannot be recorded, so that the action it describes does not happen.
        """
        self.audit.record(action, data)
        for sink in self.event_sinks:
            sink(action, data)

    @property
    def keys(self) -> WorkspaceKeys:
        """The zone keys of this workspace (created by ``trustzones init``)."""
        if self._keys is None:
            self._keys = WorkspaceKeys(self.config, emit=self.emit)
        return self._keys

    # -- zones ----------------------------------------------------------------------------
    def backend(self, zone: str, *, acting_for: str | None = None) -> Backend:
        """The open storage of ``zone`` (trusted internal use: no authorization here).

        Records are sealed with the zone's keys when the zone asks for encryption at rest.
        ``acting_for`` names the zone this process works for, when it is another one: a flow
        running in its source zone writes into its destination with a wrap-only cipher, so it
        can seal new records there but cannot open the ones already stored.
        """
        acting = acting_for or zone
        b = self._backends.get((zone, acting))
        if b is not None:
            return b
        spec = self.config.zones[zone]
        settings = spec.backend
        if isinstance(settings, EmbeddedSettings):
            cipher = None
            if spec.controls.encryption_at_rest:
                ring = self.keys.ring(acting)
                cipher = ring.cipher(zone) if acting == zone else ring.wrap_only(zone)
            path = self.config.data_dir(zone) / f"{zone}.db"
            b = EmbeddedBackend(zone, path, cipher=cipher)
        else:
            # Kafka: a dedicated cluster (empty prefix) or a virtual cluster on a shared one
            # (topics, groups and transactional ids under ``prefix``, isolated by ACLs). Records
            # are stored as produced: Kafka assigns the offset only once a record is written, so
            # a cipher cannot bind it as AAD; the broker's ACLs keep the zones apart instead. No
            # cipher also means nothing differs by ``acting_for``: one connection serves both.
            b = self._backends.get((zone, zone))
            if b is None:
                from trustzones.streams._kafka import KafkaBackend

                password = settings.password
                if password is None and settings.password_env:
                    value = os.environ.get(settings.password_env)
                    if value is None:
                        raise StreamError(
                            f"zone {zone!r}: the Kafka password is read from the environment "
                            f"variable {settings.password_env!r}, which is not set. Export it "
                            "before running."
                        )
                    password = SecretStr(value)
                if password is None:
                    raise StreamError(
                        f"zone {zone!r}: the Kafka backend needs a password for "
                        f"{settings.username!r}: set backend.password_env (recommended) or "
                        "backend.password in trustzones.yaml."
                    )
                ca = settings.ssl_ca_location
                b = KafkaBackend(
                    zone,
                    bootstrap=settings.bootstrap,
                    username=settings.username,
                    password=password,
                    prefix=settings.prefix,
                    security_protocol=settings.security_protocol,
                    sasl_mechanism=settings.sasl_mechanism,
                    client_config={"ssl.ca.location": ca} if ca else {},
                )
                b.open()
                self._backends[(zone, zone)] = b
            self._backends[(zone, acting)] = b
            return b
        b.open()
        self._backends[(zone, acting)] = b
        return b

    def backend_for_topic(self, topic: str) -> Backend:
        return self.backend(self.config.topics[topic].zone)

    def ensure_topics(self) -> None:
        """Create every declared topic in its zone (idempotent)."""
        for t in self.config.topics.values():
            retention = int(t.retention.total_seconds() * 1000) if t.retention else None
            self.backend(t.zone).ensure_topic(
                t.name, partitions=t.partitions, retention_ms=retention
            )

    # -- authorization --------------------------------------------------------------------
    def authorize(self, principal: Who, action: Action, topic: str) -> Decision:
        """Ask the decision point; raise :class:`AccessDenied` with its reason on deny.

        ``principal`` is an authenticated :class:`~trustzones.access.Identity`, or a name that
        is logged in with the workspace profile's credentials.
        """
        name = principal if isinstance(principal, str) else principal.principal
        if topic not in self.config.topics:
            raise AccessDenied(f"{name!r} may not {action} {topic!r}: no such topic")
        try:
            if self._authorizer is not None:
                d = self._authorizer.decide(name, action, topic, now=self.clock())
            else:
                d = self.access.decide(principal, action, topic, now=self.clock())
        except (AuthenticationFailed, AccessDenied):
            raise
        except Exception as exc:  # a policy error denies (fail closed)
            raise AccessDenied(
                f"{name!r} may not {action} {topic!r}: the policy failed to evaluate"
            ) from exc
        if not d.allowed:
            raise AccessDenied(f"{name!r} may not {action} {topic!r}: {d.reason}")
        return d

    def validator(self, topic: str) -> TopicValidator:
        v = self._validators.get(topic)
        if v is None:
            zone = self.config.zone_of(topic)
            v = TopicValidator(topic, self.config.schema(topic), zone.controls.max_record_bytes)
            self._validators[topic] = v
        return v

    # -- produce --------------------------------------------------------------------------
    def produce(
        self,
        topic: str,
        values: Iterable[bytes],
        *,
        principal: Who,
        keys: Sequence[bytes | None] | None = None,
    ) -> ProduceResult:
        """Check every record, then append the valid ones atomically.

        Invalid records are returned in ``rejected`` (never stored, never dropped silently);
        an authorization failure or an exhausted rate limit raises before anything is written.
        """
        self.authorize(principal, "write", topic)
        name = principal if isinstance(principal, str) else principal.principal
        zone = self.config.zone_of(topic)
        batch = list(values)
        limit = zone.controls.rate_limit
        if limit is not None:
            bucket = self._buckets.get((name, zone.name))
            if bucket is None:
                bucket = TokenBucket(limit.records_per_second, limit.burst)
                self._buckets[(name, zone.name)] = bucket
            if not bucket.take(len(batch)):
                raise RecordRejected(
                    f"rate limit of zone {zone.name!r} exceeded "
                    f"({limit.records_per_second:g} records/s); retry later"
                )
        v = self.validator(topic)
        now = self.clock().isoformat(timespec="milliseconds").encode()
        lineage = (
            (LINEAGE_PRODUCER, name.encode()),
            (LINEAGE_TIME, now),
            (LINEAGE_SCHEMA, v.schema_version.encode()),
        )
        result = ProduceResult()
        good: list[NewRecord] = []
        for i, value in enumerate(batch):
            try:
                v.check(value, i)
            except RecordRejected as rej:
                result.rejected.append(rej)
                continue
            key = keys[i] if keys is not None else None
            good.append(NewRecord(value=value, key=key, headers=lineage))
        if good:
            result.accepted = self.backend(zone.name).produce(topic, good)
            self._audit_records(
                "produce", name, zone.name, topic, result.accepted, [r.value for r in good]
            )
        return result

    def _audit_records(
        self,
        direction: str,
        principal: str,
        zone: str,
        topic: str,
        positions: Sequence[RecordPosition | Record],
        values: Sequence[bytes],
    ) -> None:
        """Audit what moved, at the zone's audit level: each record (``per-message``, with
        its offset and a content hash) or one event per batch with a count."""
        if not positions:
            return
        if self.config.zones[zone].controls.audit_level == "per-message":
            self.audit.record_records(
                direction,
                principal=principal,
                zone=zone,
                topic=topic,
                records=[
                    (p.partition, p.offset, v) for p, v in zip(positions, values, strict=True)
                ],
            )
        else:
            self.emit(
                f"zone.{direction}",
                {
                    "principal": principal,
                    "zone": zone,
                    "resource": f"{zone}/{topic}",
                    "action": direction,
                    "count": len(positions),
                },
            )

    # -- consume --------------------------------------------------------------------------
    def consumer(
        self,
        topic: str,
        *,
        principal: Who,
        group: str | None = None,
        start: StartFrom = "committed",
    ) -> ZoneConsumer:
        self.authorize(principal, "read", topic)
        inner = self.backend_for_topic(topic).consumer(topic, group=group, start=start)
        return ZoneConsumer(self, principal, topic, inner)


class ZoneConsumer:
    """A consumer that re-checks authorization on every poll: a revoked grant stops it at once."""

    def __init__(self, ws: Workspace, principal: Who, topic: str, inner: object) -> None:
        from trustzones.streams.base import Consumer

        assert isinstance(inner, Consumer)
        self._ws = ws
        self.principal = principal
        self.topic = topic
        self._inner = inner

    def poll(self, max_records: int = 500) -> list[Record]:
        self._ws.authorize(self.principal, "read", self.topic)
        records = self._inner.poll(max_records)
        name = self.principal if isinstance(self.principal, str) else self.principal.principal
        zone = self._ws.config.topics[self.topic].zone
        self._ws._audit_records(
            "consume", name, zone, self.topic, records, [r.value for r in records]
        )
        return records

    def commit(self) -> None:
        self._inner.commit()

    def lag(self) -> int:
        return self._inner.lag()

    def __iter__(self) -> Iterator[Record]:
        while True:
            batch = self.poll()
            if not batch:
                return
            yield from batch
