"""The audit zone on a real Kafka broker: provisioned by apply, appended, verified, proven; a
record forged by the cluster admin is found; the broker refuses writes and deletes by others."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from audit_helpers import make_events
from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kafka_fixtures import KafkaCluster, connection
from trustzones.audit import LogTampered, NoteSigner, canonical_json, check_proof
from trustzones.audit._kafka import (
    KafkaAuditLog,
    KafkaAuditReader,
    audit_topics,
    verify_kafka_log,
)
from trustzones.config import Config
from trustzones.provision import apply_plan, make_plan, read_credentials

pytestmark = pytest.mark.kafka

AUDITOR = "security-officer"  # holds the auditor role in the example workspace


def _kafka_audit(
    workspace_dir: Path, cluster: KafkaCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Config, str]:
    """Move the example workspace's audit zone onto ``cluster`` under ``prefix``; apply."""
    path = workspace_dir / "trustzones.yaml"
    doc = yaml.safe_load(path.read_text())
    monkeypatch.setenv("TZ_TEST_AUDIT_ADMIN_PASSWORD", cluster.password)
    writer = f"audit-writer-{uuid.uuid4().hex[:8]}"
    doc["audit"]["backend"] = {
        "type": "kafka",
        "bootstrap": cluster.bootstrap,
        "username": cluster.username,
        "password_env": "TZ_TEST_AUDIT_ADMIN_PASSWORD",
        "prefix": prefix,
        "writer": writer,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    config = Config.from_yaml(path)
    plans = make_plan(config)
    text = "\n".join(p.text() for p in plans)
    log_topic, cp_topic = audit_topics(prefix)
    assert f"+ topic {log_topic}  (partitions=1, retention.ms=-1, cleanup.policy=delete" in text
    assert f"ALLOW User:{writer} WRITE topic:{log_topic}" in text
    assert f"ALLOW User:{AUDITOR} READ topic:{cp_topic}" in text
    assert f"DENY User:* DELETE topic:{log_topic}" in text
    emitted: list[tuple[str, dict[str, Any]]] = []
    apply_plan(config, plans, emit=lambda kind, data: emitted.append((kind, data)))
    assert any(d["resource"] == f"kafka/topic/{log_topic}" for _k, d in emitted)
    again = make_plan(config)  # converged: nothing left to do for the audit zone
    assert not [c for p in again for c in p.changes if log_topic in c.name and c.op != "drift"]
    return config, writer


def _login(cluster: KafkaCluster, config: Config, user: str) -> Any:
    return connection(cluster, user, read_credentials(config)[cluster.bootstrap][user])


def _plain(conn: Any, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = conn.client_config(f"plain-{uuid.uuid4().hex[:6]}")
    conf.pop("logger", None)
    conf.update(extra)
    return conf


def _produce(conf: dict[str, Any], topic: str, value: bytes) -> KafkaError | None:
    errors: list[KafkaError | None] = []
    producer = Producer({**conf, "message.timeout.ms": 10000})
    producer.produce(topic, value, partition=0, on_delivery=lambda err, _m: errors.append(err))
    assert producer.flush(15) == 0
    return errors[0]


def test_audit_zone_on_kafka_appends_verifies_proves_and_finds_a_forged_record(
    workspace_dir: Path,
    kafka_clusters: list[KafkaCluster],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = kafka_clusters[0]
    config, writer = _kafka_audit(workspace_dir, cluster, kafka_prefix, monkeypatch)
    signer = NoteSigner.generate("audit.test/kafka")
    verifier = signer.verifier()
    events = make_events(7)
    with KafkaAuditLog(_login(cluster, config, writer), signer=signer, prefix=kafka_prefix) as log:
        log.record_many(events[:5])
        log.record(events[5])
        log.checkpoint()
        log.record(events[6])  # after the checkpoint: covered by its batch signature only
    auditor = _login(cluster, config, AUDITOR)
    report = verify_kafka_log(auditor, verifier, prefix=kafka_prefix)
    assert (report.tree_size, report.checkpoints) == (7, 1)

    reader = KafkaAuditReader(
        auditor, verifier=verifier, principal=AUDITOR, authorize=lambda who, op: True,
        prefix=kafka_prefix,
    )  # fmt: skip
    stored = reader.tail(10)
    assert [s.event for s in stored] == events
    assert [s.leaf_index for s in reader.search(principal="svc-1")] == [1, 5]
    assert check_proof(reader.prove(events[2].id).to_json(), verifier) == events[2]

    # The cluster admin (a super user: ACLs do not bind it) produces a well-formed event.
    forged = canonical_json(make_events(1, start=99)[0])
    assert _produce(_plain(connection(cluster)), audit_topics(kafka_prefix)[0], forged) is None
    forged_message = (
        r"entry 7 \(offset \d+\): it is not part of a batch signed by the audit writer; it "
        r"was produced outside the audit log"
    )
    with pytest.raises(LogTampered, match=forged_message):
        verify_kafka_log(auditor, verifier, prefix=kafka_prefix)


def test_the_broker_lets_only_the_audit_writer_write_and_nobody_delete(
    workspace_dir: Path,
    kafka_clusters: list[KafkaCluster],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = kafka_clusters[0]
    config, writer = _kafka_audit(workspace_dir, cluster, kafka_prefix, monkeypatch)
    log_topic, cp_topic = audit_topics(kafka_prefix)
    signer = NoteSigner.generate("audit.test/kafka")
    with KafkaAuditLog(_login(cluster, config, writer), signer=signer, prefix=kafka_prefix) as log:
        log.record_many(make_events(3))
    body = canonical_json(make_events(1, start=50)[0])
    # An auditor may read but not write, nor delete records, nor change the topic.
    auditor = _plain(_login(cluster, config, AUDITOR))
    for topic in (log_topic, cp_topic):
        err = _produce(auditor, topic, body)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Neither the auditor nor the writer itself may delete records (explicit DENY).
    for conf in (auditor, _plain(_login(cluster, config, writer))):
        admin = AdminClient(conf)
        futures = admin.delete_records([TopicPartition(log_topic, 0, 1)], request_timeout=15)
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the KafkaException is checked
            futures[TopicPartition(log_topic, 0, 1)].result(timeout=20)
        assert caught.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert verify_kafka_log(_login(cluster, config, AUDITOR), signer.verifier(),
                            prefix=kafka_prefix).tree_size == 3  # fmt: skip


def test_the_workspace_and_cli_use_the_kafka_audit_zone(
    workspace_dir: Path,
    kafka_clusters: list[KafkaCluster],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trustzones.cli import main
    from trustzones.zone import Workspace

    _kafka_audit(workspace_dir, kafka_clusters[0], kafka_prefix, monkeypatch)
    events = make_events(3)
    with Workspace.open() as ws:
        ws.audit.log().append_many(events)  # the writer's login comes from `apply`
    capsys.readouterr()
    assert main(["audit", "checkpoint"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "3"  # origin, size, root, signature
    assert main(["audit", "verify"]) == 0
    assert ": 3 entries, root " in capsys.readouterr().out
    assert main(["audit", "tail", "--as", AUDITOR, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = [yaml.safe_load(line)["event"]["id"] for line in lines]
    # Ours, then what the workspace itself recorded since (the auditor's login, ...).
    assert ids[:3] == [e.id for e in events] and len(ids) > 3
    assert main(["audit", "tail", "--as", "marketing-analyst"]) == 1  # not an auditor
    assert "needs the auditor role" in capsys.readouterr().err


def test_an_append_the_broker_refuses_records_nothing_and_the_next_one_is_recorded(
    kafka_clusters: list[KafkaCluster], kafka_prefix: str
) -> None:
    """Only the last record of an append reports its delivery; a refused append must still
    record nothing, and the writer must go on (with a fresh producer: the refused one's
    sequence numbers no longer match the broker's)."""
    from confluent_kafka.admin import NewTopic

    from trustzones.errors import AuditError

    cluster = kafka_clusters[0]
    conn = connection(cluster)
    log_topic, cp_topic = audit_topics(kafka_prefix)
    admin = AdminClient(_plain(conn))
    small = {"max.message.bytes": "1500"}  # per record batch: one event fits, five do not
    topics = [NewTopic(log_topic, 1, config=small), NewTopic(cp_topic, 1)]
    for future in admin.create_topics(topics).values():
        future.result()
    signer = NoteSigner.generate("audit.test/kafka")
    events = make_events(6)
    assert all(len(canonical_json(e)) < 1000 for e in events)
    with KafkaAuditLog(conn, signer=signer, prefix=kafka_prefix) as log:
        with pytest.raises(AuditError, match="nothing is recorded"):
            log.append_many(events[:5])
        assert log.append_many(events[5:]) == 1
    assert verify_kafka_log(conn, signer.verifier(), prefix=kafka_prefix).tree_size == 1
