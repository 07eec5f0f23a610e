"""What the audit zone asks of Kafka, when ``audit.backend`` is ``kafka``.

Topics (one partition each, kept forever): ``<prefix>tz.audit`` (the log) and
``<prefix>tz.audit.checkpoints``, both ``retention.ms=-1`` and ``cleanup.policy=delete``.

ACLs, literal unless noted:

- the **audit writer** (``audit.backend.writer``): WRITE and READ on both topics (it reads the
  log to sign checkpoints) and WRITE on the transactional ids ``<prefix>tz.audit.writer.``
  (prefixed). It is the only principal that may write them;
- **auditors** (principals with the ``auditor`` role): READ on both topics;
- **everyone** (``User:*``): DENY on DELETE, ALTER and ALTER_CONFIGS of both topics. Kafka
  denies by default already; the explicit DENY also beats any broader ALLOW added later
  (a prefixed ``ALL``, say). The cluster's super users are not bound by ACLs, so the cluster
  admin alone can still delete (and ``trustzones audit verify`` catches what it deletes).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustzones.audit._kafka import TRANSACTIONAL_PREFIX, audit_topics
from trustzones.config import Config
from trustzones.config.model import AuditKafkaBackend
from trustzones.provision._desired import ClusterWant, TopicWant
from trustzones.streams._kafka_admin import AclRule

__all__ = ["AUDIT_ZONE", "AuditTopicWant", "add_audit_wants"]

AUDIT_ZONE = "audit"
"""The zone name the audit topics are listed (and their changes audited) under."""

_FOREVER = -1
_LOCKED_OPERATIONS = ("delete", "alter", "alter_configs")


@dataclass(frozen=True)
class AuditTopicWant(TopicWant):
    """A topic with topic configs beyond retention (here ``cleanup.policy``)."""

    configs: tuple[tuple[str, str], ...] = ()


def add_audit_wants(config: Config, wants: dict[str, ClusterWant]) -> None:
    """Add the audit zone's topics, writer, auditors and ACLs to ``wants`` (in place)."""
    backend = config.file.audit.backend
    if not isinstance(backend, AuditKafkaBackend):
        return
    want = wants.get(backend.bootstrap)
    if want is None:
        want = wants[backend.bootstrap] = ClusterWant(backend.bootstrap, backend)
    if AUDIT_ZONE not in want.zones:
        want.zones.append(AUDIT_ZONE)
        want.prefixes.add(backend.prefix)
    why = "audit zone"
    auditors = sorted(p.name for p in config.principals.values() if "auditor" in p.roles)
    for topic in audit_topics(backend.prefix):
        want.topics[topic] = AuditTopicWant(
            topic,
            AUDIT_ZONE,
            1,
            retention_ms=_FOREVER,
            why=why,
            configs=(("cleanup.policy", "delete"),),
        )
        want.allow(backend.writer, "topic", topic, "write", f"{why}: the only writer")
        want.allow(backend.writer, "topic", topic, "read", f"{why}: the writer signs checkpoints")
        for auditor in auditors:
            want.allow(auditor, "topic", topic, "read", f"{why}: auditor {auditor}")
        for op in _LOCKED_OPERATIONS:
            rule = AclRule("User:*", "topic", topic, operation=op, permission="deny")  # type: ignore[arg-type]
            want.acls.setdefault(rule, f"{why}: append-only for everyone")
    want.allow(
        backend.writer,
        "transactional_id",
        backend.prefix + TRANSACTIONAL_PREFIX,
        "write",
        f"{why}: the writer's transactions",
        pattern="prefixed",
    )
