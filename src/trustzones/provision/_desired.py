"""What the config asks of each Kafka cluster: topics, SCRAM users and least-privilege ACLs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from trustzones.config import Config
from trustzones.config.model import KafkaBackend as KafkaSettings
from trustzones.flows._runner import position_key, quarantine_topic
from trustzones.streams._kafka import ANCHOR_PREFIX
from trustzones.streams._kafka_admin import AclRule, Operation, ResourceKind

__all__ = ["ClusterWant", "TopicWant", "desired_state"]

ScramMechanism = str


@dataclass(frozen=True)
class TopicWant:
    """A topic as the config wants it (``name`` is the full Kafka name, prefix included)."""

    name: str
    zone: str
    partitions: int
    retention_ms: int | None = None
    min_insync_replicas: int | None = None
    why: str = "declared topic"


@dataclass
class ClusterWant:
    """Everything the config wants on one cluster (identified by its bootstrap servers)."""

    bootstrap: str
    settings: KafkaSettings
    zones: list[str] = field(default_factory=list)
    prefixes: set[str] = field(default_factory=set)
    topics: dict[str, TopicWant] = field(default_factory=dict)
    users: dict[str, ScramMechanism] = field(default_factory=dict)
    acls: dict[AclRule, str] = field(default_factory=dict)  # rule → why (for plan output)
    quotas: dict[str, dict[str, int]] = field(default_factory=dict)  # user → quota → bytes/s
    notes: list[str] = field(default_factory=list)

    @property
    def owned(self) -> bool:
        """A zone uses the whole cluster (no prefix): everything on it is ours to explain."""
        return "" in self.prefixes

    def allow(
        self,
        principal: str,
        resource: ResourceKind,
        name: str,
        op: Operation,
        why: str,
        *,
        pattern: Literal["literal", "prefixed"] = "literal",
    ) -> None:
        rule = AclRule(f"User:{principal}", resource, name, pattern=pattern, operation=op)
        self.acls.setdefault(rule, why)
        mech = self.settings.sasl_mechanism
        self.users.setdefault(principal, mech if mech.startswith("SCRAM") else "SCRAM-SHA-512")

    def limit(self, principal: str, quota: str, rate: int | None) -> None:
        """Cap ``principal``'s ``quota`` at ``rate`` bytes/s (the lowest of its zones wins)."""
        if rate is None:
            return
        mine = self.quotas.setdefault(principal, {})
        mine[quota] = min(rate, mine.get(quota, rate))


def _kafka(config: Config, zone: str) -> KafkaSettings | None:
    b = config.zones[zone].backend
    return b if isinstance(b, KafkaSettings) else None


def desired_state(config: Config, *, now: datetime | None = None) -> dict[str, ClusterWant]:
    """Bootstrap servers → what the config wants there. Zones on the embedded backend are
    skipped.

    ACLs, all literal unless noted (names carry the zone's prefix):

    - a **read** grant: READ on each granted topic, and READ on the principal's consumer
      groups, ``<prefix><principal>.`` (prefixed);
    - a **write** grant: WRITE on each granted topic;
    - people (``kind: user``) get no broker ACLs in zones that require MFA or just-in-time
      access: the broker cannot check either, so they read those zones through trustzones;
      expired grants and grants above the principal's clearance give nothing;
    - quotas: a principal granted read (write) access to a zone whose ``rate_limit`` sets
      ``bytes_per_second`` gets that ``consumer_byte_rate`` (``producer_byte_rate``) on the
      zone's cluster (Kafka quotas are per user and cluster: the lowest zone wins);
    - a **flow's principal**, in the source cluster: READ on the source topic and WRITE on
      its quarantine topic, DESCRIBE on the quarantine decisions topic, READ on the quarantine
      progress group ``tz.flow.<flow>.quarantine`` and WRITE on the transactional ids
      ``tz.flow.<flow>.`` (prefixed); in the destination cluster: WRITE on the destination
      topic, READ on the offsets anchor topic and on group ``tz.flow.<flow>``, WRITE on the
      transactional id ``tz.flow.<flow>`` and on ``tz.flow.<flow>.p`` (prefixed: scaled-out
      instances). Nothing else.
    """
    now = now or datetime.now(UTC)
    levels = {c: i for i, c in enumerate(config.classifications)}
    out: dict[str, ClusterWant] = {}

    def cluster(zone: str) -> tuple[ClusterWant, str] | None:
        s = _kafka(config, zone)
        if s is None:
            return None
        c = out.get(s.bootstrap)
        if c is None:
            c = out[s.bootstrap] = ClusterWant(s.bootstrap, s)
        if zone not in c.zones:
            c.zones.append(zone)
            c.prefixes.add(s.prefix)
        return c, s.prefix

    for zone in config.zones:
        cluster(zone)
    for t in config.topics.values():
        found = cluster(t.zone)
        if found is None:
            continue
        c, prefix = found
        c.topics[prefix + t.name] = TopicWant(
            prefix + t.name,
            t.zone,
            t.partitions,
            int(t.retention.total_seconds() * 1000) if t.retention else None,
            t.min_insync_replicas,
        )

    for g in config.grants:
        p = config.principals.get(g.principal)
        if p is None or (g.expires is not None and g.expires <= now):
            continue
        topics = (
            [g.topic] if g.topic else [t.name for t in config.topics.values() if t.zone == g.zone]
        )
        for name in topics:
            spec = config.topics[name]
            zs = config.zones[spec.zone]
            found = cluster(spec.zone)
            if found is None:
                continue
            c, prefix = found
            if levels.get(p.clearance, -1) < levels.get(zs.classification, len(levels)):
                continue
            if p.kind == "user" and (zs.controls.mfa_required or zs.controls.jit_required):
                c.notes.append(
                    f"{p.name}: no broker access to {prefix + name} (zone {zs.name} requires "
                    "MFA or just-in-time access; read it through trustzones)"
                )
                continue
            why = f"grant {p.name} {'/'.join(g.access)} {g.topic or 'zone ' + str(g.zone)}"
            rate = zs.controls.rate_limit.bytes_per_second if zs.controls.rate_limit else None
            if "read" in g.access:
                c.limit(p.name, "consumer_byte_rate", rate)
                c.allow(p.name, "topic", prefix + name, "read", why)
                c.allow(p.name, "group", f"{prefix}{p.name}.", "read", why, pattern="prefixed")
            if "write" in g.access:
                c.limit(p.name, "producer_byte_rate", rate)
                c.allow(p.name, "topic", prefix + name, "write", why)

    for f in config.flows.values():
        src_zone = config.topics[f.source].zone
        dst_zone = config.topics[f.destination].zone
        group = f"tz.flow.{f.name}"
        why = f"flow {f.name}"
        src = cluster(src_zone)
        if src is not None:
            c, prefix = src
            q = quarantine_topic(f)
            c.topics.setdefault(prefix + q, TopicWant(prefix + q, src_zone, 1, why=why))
            c.topics.setdefault(
                prefix + q + ".decisions",
                TopicWant(prefix + q + ".decisions", src_zone, 1, why=why),
            )
            c.allow(f.principal, "topic", prefix + f.source, "read", why)
            c.allow(f.principal, "topic", prefix + q, "write", why)
            c.allow(f.principal, "topic", prefix + q + ".decisions", "describe", why)
            c.allow(f.principal, "group", f"{prefix}{group}.quarantine", "read", why)
            c.allow(
                f.principal,
                "transactional_id",
                f"{prefix}{group}.",
                "write",
                why,
                pattern="prefixed",
            )
        dst = cluster(dst_zone)
        if dst is not None:
            c, prefix = dst
            anchor = f"{prefix}{ANCHOR_PREFIX}{position_key(src_zone, f.source)}"
            parts = config.topics[f.source].partitions
            c.topics.setdefault(anchor, TopicWant(anchor, dst_zone, parts, why=f"{why} offsets"))
            c.allow(f.principal, "topic", prefix + f.destination, "write", why)
            c.allow(f.principal, "topic", anchor, "read", why)
            c.allow(f.principal, "group", prefix + group, "read", why)
            c.allow(f.principal, "transactional_id", prefix + group, "write", why)
            c.allow(
                f.principal,
                "transactional_id",
                f"{prefix}{group}.p",
                "write",
                why,
                pattern="prefixed",
            )

    for zspec in config.zones.values():
        found = cluster(zspec.name)
        limit = zspec.controls.rate_limit
        if found is not None and limit is not None and limit.bytes_per_second is None:
            found[0].notes.append(
                f"zone {zspec.name}: its rate limit ({limit.records_per_second:g} records/s) has "
                "no broker quota (Kafka quotas are bytes/s per user: add bytes_per_second); "
                "trustzones enforces records/s at ingress"
            )
    return out
