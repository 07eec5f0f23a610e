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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import SecretStr

from trustzones.access import Identity
from trustzones.config import CONFIG_FILENAME, Config
from trustzones.config.model import EmbeddedBackend as EmbeddedSettings
from trustzones.config.model import KafkaBackend as KafkaSettings
from trustzones.errors import AccessDenied, AuthenticationFailed, RecordRejected, StreamError
from trustzones.streams import Backend, EmbeddedBackend, NewRecord, Record, RecordPosition
from trustzones.streams.base import StartFrom
from trustzones.zone._access import WorkspaceAccess
from trustzones.zone._audit import WorkspaceAudit
from trustzones.zone._authz import Action, Authorizer, Decision, utcnow
from trustzones.zone._ingress import TokenBucket, TopicValidator
from trustzones.zone._keys import WorkspaceKeys

__all__ = ["KAFKA_PRINCIPAL_ENV", "ProduceResult", "Workspace", "ZoneConsumer", "find_config"]

KAFKA_PRINCIPAL_ENV = "TRUSTZONES_KAFKA_PRINCIPAL"

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
        kafka_principal: str | None = None,
    ) -> None:
        self.config = config
        self._authorizer = authorizer
        self.clock = clock
        self._access: WorkspaceAccess | None = None
        self._backends: dict[tuple[str, str, str], Backend] = {}
        self.kafka_principal = kafka_principal or os.environ.get(KAFKA_PRINCIPAL_ENV) or None
        """Who this process logs in to Kafka zones as by default (``None``: the zone user)."""
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
        for b in {id(b): b for b in self._backends.values()}.values():
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
            self._audit = WorkspaceAudit(self.config, clock=self.clock)
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
    def backend(
        self, zone: str, *, acting_for: str | None = None, principal: str | None = None
    ) -> Backend:
        """The open storage of ``zone`` (trusted internal use: no authorization here).

        Records are sealed with the zone's keys when the zone asks for encryption at rest.
        ``acting_for`` names the zone this process works for, when it is another one: a flow
        running in its source zone writes into its destination with a wrap-only cipher, so it
        can seal new records there but cannot open the ones already stored.

        ``principal`` (Kafka zones only) is who logs in to the broker: that principal's SCRAM
        user, with the password ``trustzones apply`` wrote to
        ``.trustzones/kafka-credentials.yaml``, so the broker's least-privilege ACLs for it
        apply. It defaults to :attr:`kafka_principal`, the process's own login
        (``TRUSTZONES_KAFKA_PRINCIPAL``); with neither, the zone's configured user logs in.
        A principal without a password there is an error, unless the zone's backend sets
        ``zone_user_fallback: true``, which logs in as the zone user instead.
        """
        acting = acting_for or zone
        spec = self.config.zones[zone]
        settings = spec.backend
        if isinstance(settings, EmbeddedSettings):
            b = self._backends.get((zone, acting, ""))
            if b is not None:
                return b
            cipher = None
            if spec.controls.encryption_at_rest:
                ring = self.keys.ring(acting)
                cipher = ring.cipher(zone) if acting == zone else ring.wrap_only(zone)
            path = self.config.data_dir(zone) / f"{zone}.db"
            b = EmbeddedBackend(zone, path, cipher=cipher, audit=self._audit_record_event)
            b.open()
            self._backends[(zone, acting, "")] = b
            return b
        # Kafka: a dedicated cluster (empty prefix) or a virtual cluster on a shared one
        # (topics, groups and transactional ids under ``prefix``, isolated by ACLs). Without
        # encryption nothing differs by ``acting_for``: one connection serves both.
        login = principal or self.kafka_principal or ""
        sealed = spec.controls.encryption_at_rest
        key = (zone, acting if sealed else zone, login)
        b = self._backends.get(key)
        if b is None:
            b = self._open_kafka(zone, settings, acting if sealed else None, login or None)
            self._backends[key] = b
        return b

    def _open_kafka(
        self, zone: str, settings: KafkaSettings, acting: str | None, principal: str | None
    ) -> Backend:
        from trustzones.streams._kafka import KafkaBackend

        username, password = self._kafka_login(zone, settings, principal)
        cipher = None
        key_secret = None
        if acting is not None:
            cipher, key_secret = self.keys.record_sealing(zone, acting)
        ca = settings.ssl_ca_location
        b = KafkaBackend(
            zone,
            bootstrap=settings.bootstrap,
            username=username,
            password=password,
            prefix=settings.prefix,
            security_protocol=settings.security_protocol,
            sasl_mechanism=settings.sasl_mechanism,
            client_config={"ssl.ca.location": ca} if ca else {},
            cipher=cipher,
            key_secret=key_secret,
            audit=self._audit_record_event,
        )
        b.open()
        return b

    def _audit_record_event(self, event: Mapping[str, object]) -> None:
        data = dict(event)
        self.emit(str(data.pop("type")), data)

    def _kafka_login(
        self, zone: str, settings: KafkaSettings, principal: str | None
    ) -> tuple[str, SecretStr]:
        """Username and password for ``zone``'s cluster (never logged, never in errors)."""
        if principal is not None:
            if principal not in self.config.principals:
                raise AuthenticationFailed(
                    f"zone {zone!r}: cannot log in to Kafka as {principal!r}: no such principal "
                    "in trustzones.yaml"
                )
            found = self._kafka_password(settings.bootstrap, principal)
            if found is not None:
                return principal, found
            if not settings.zone_user_fallback:
                raise AuthenticationFailed(
                    f"zone {zone!r}: no Kafka password for principal {principal!r} on cluster "
                    f"{settings.bootstrap} in {self._credentials_path()}. Run `trustzones "
                    f"apply` (it creates the SCRAM user and stores its password there), or set "
                    f"backend.zone_user_fallback: true on zone {zone!r} to log in as "
                    f"{settings.username!r} instead."
                )
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
        return settings.username, password

    def _credentials_path(self) -> Path:
        from trustzones.provision._plan import CREDENTIALS_FILE

        return self.config.state_dir / CREDENTIALS_FILE

    def _kafka_password(self, bootstrap: str, principal: str) -> SecretStr | None:
        """``principal``'s SCRAM password on ``bootstrap`` from the credentials file, if any.

        The file holds every service's password: one that group or others may read is
        refused (fail closed), as ssh refuses a readable private key.
        """
        from trustzones.provision._plan import read_credentials

        path = self._credentials_path()
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return None
        if mode & 0o077:
            raise AuthenticationFailed(
                f"{path} is readable by group or others (mode {mode & 0o777:04o}); it holds "
                f"Kafka passwords. Run `chmod 600 {path}`."
            )
        value = read_credentials(self.config).get(bootstrap, {}).get(principal)
        return SecretStr(value) if value else None

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
        its offset and a content hash), counts per time window (``aggregate``), or one event
        per batch with a count (``access``)."""
        if not positions:
            return
        level = self.config.zones[zone].controls.audit_level
        if level == "aggregate":
            self.audit.count_records(
                direction,
                principal=principal,
                zone=zone,
                topic=topic,
                records=[
                    (p.partition, p.offset, len(v)) for p, v in zip(positions, values, strict=True)
                ],
            )
        elif level == "per-message":
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
