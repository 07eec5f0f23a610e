"""Provisioning against real brokers: plan, apply, drift, and defence in depth on the broker
(plain confluent-kafka clients logged in with the SCRAM users apply created)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from kafka_fixtures import approve, connection, kafka_zones
from trustzones.cli import main
from trustzones.config import Config
from trustzones.provision import apply_plan, desired_state, make_plan, read_credentials
from trustzones.streams._kafka_admin import AclRule, KafkaAdmin
from trustzones.zone import Workspace

pytestmark = pytest.mark.kafka

FLOW_USER = "flow-payments-to-analytics"


def _client(cluster: Any, user: str, password: str, **extra: Any) -> dict[str, Any]:
    conf = connection(cluster, user, password).client_config(f"plain-{user}")
    conf.pop("logger", None)
    conf.update(extra)
    return conf


def _apply(ws: Workspace) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    ws.event_sinks.append(lambda kind, data: events.append((kind, data)))
    apply_plan(ws.config, make_plan(ws.config), emit=ws.emit)
    return events


def test_plan_apply_converge_and_audit(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="virtual", prefix=kafka_prefix)
    pay = f"{kafka_prefix}payments."
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert f"+ topic {pay}payments.transactions" in out
    assert "partitions=3, retention.ms=604800000" in out
    # New user, or (SCRAM users are cluster-wide, the test clusters are shared) a new password.
    assert f"+ user  {FLOW_USER}" in out or f"~ user  {FLOW_USER}" in out
    assert f"ALLOW User:{FLOW_USER} READ topic:{pay}payments.transactions" in out
    assert (
        f"ALLOW User:marketing-analyst READ topic:{kafka_prefix}analytics.analytics.clickstream"
        in out
    )
    # People get no broker ACLs in zones that need MFA / just-in-time access.
    assert f"User:security-officer READ topic:{pay}" not in out

    assert main(["apply", "--yes"]) == 0
    applied = capsys.readouterr().out
    creds_file = workspace_dir / ".trustzones" / "kafka-credentials.yaml"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    creds = read_credentials(Config.from_yaml(workspace_dir / "trustzones.yaml"))
    (passwords,) = creds.values()
    assert {FLOW_USER, "marketing-analyst", "payments-service"} <= set(passwords)
    for secret in passwords.values():
        assert secret not in applied and secret not in out

    with Workspace.open() as ws:
        (plan,) = make_plan(ws.config)
        assert [c for c in plan.changes if c.op != "drift"] == []
        # Drift: an ACL nobody declared, and a user the config gives nothing on this cluster.
        with KafkaAdmin(connection(kafka_clusters[0])) as admin:
            stray = AclRule("User:marketing-analyst", "topic", f"{pay}payments.transactions")
            admin.create_acls([stray])
            admin.upsert_scram_user("ciso", "irrelevant-password-1")
        (plan,) = make_plan(ws.config)
        drift = {(c.op, c.kind, c.name) for c in plan.changes}
        assert (
            "remove",
            "acl",
            f"ALLOW User:marketing-analyst READ topic:{pay}payments.transactions",
        ) in drift
        assert ("remove", "user", "ciso") in drift
        events = _apply(ws)
        assert {(k, d["action"]) for k, d in events} >= {
            ("provision.apply", "remove-acl"),
            ("provision.apply", "remove-user"),
        }
        with KafkaAdmin(connection(kafka_clusters[0])) as admin:
            assert stray not in admin.describe_acls()
            assert "ciso" not in admin.scram_users()


def test_broker_enforces_the_zones_for_plain_clients(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Virtual clusters on one broker: only the ACLs keep the zones apart."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="virtual", prefix=kafka_prefix)
    with Workspace.open() as ws:
        _apply(ws)
        creds = next(iter(read_credentials(ws.config).values()))
    pay = f"{kafka_prefix}payments.payments.transactions"
    clicks = f"{kafka_prefix}analytics.analytics.clickstream"
    cluster = kafka_clusters[0]

    # 1. The marketing analyst, with a plain client: payments is refused by the broker.
    c = Consumer(
        _client(
            cluster,
            "marketing-analyst",
            creds["marketing-analyst"],
            **{
                "group.id": f"{kafka_prefix}analytics.marketing-analyst.probe",
                "enable.partition.eof": True,
            },
        )
    )
    try:
        # Without DESCRIBE the broker refuses even the topic's metadata (so no leader to
        # fetch from); the answer is the broker's authorization error.
        err = c.list_topics(pay, timeout=20).topics[pay].error
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        # ... while its own zone's topic is readable (to its end).
        assert c.list_topics(clicks, timeout=20).topics[clicks].error is None
        c.assign([TopicPartition(clicks, 0, 0)])
        for _ in range(40):
            msg = c.poll(0.5)
            if msg is not None:
                assert msg.error() is not None and msg.error().code() == KafkaError._PARTITION_EOF
                break
        else:
            raise AssertionError("no answer for the analyst's own topic")
    finally:
        c.close()

    # 2. The flow's principal writes its destination, and nothing else.
    def produce(topic: str, *, txn: bool) -> KafkaError | None:
        extra: dict[str, Any] = {"message.timeout.ms": 10000}
        if txn:
            extra["transactional.id"] = f"{kafka_prefix}analytics.tz.flow.payments-to-analytics"
        p = Producer(_client(cluster, FLOW_USER, creds[FLOW_USER], **extra))
        errors: list[KafkaError] = []
        try:
            if txn:
                p.init_transactions(20)
                p.begin_transaction()
            p.produce(topic, b"{}", on_delivery=lambda e, m: errors.append(e) if e else None)
            p.flush(20)
            if txn:
                p.commit_transaction(20)
        except KafkaException as exc:
            return exc.args[0]
        return errors[0] if errors else None

    dest = f"{kafka_prefix}analytics.analytics.transactions"
    assert produce(dest, txn=True) is None
    for topic in (clicks, pay, f"{kafka_prefix}payments.tz.quarantine.other"):
        err = produce(topic, txn=False)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    # Its source topic: readable, not writable.
    err = produce(pay, txn=False)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_flow_runs_cross_cluster_with_only_its_own_acls(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dedicated clusters; the flow logs in as its own SCRAM user on both: enough, and least."""
    from trustzones.flows import generate_events, open_flow

    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="dedicated", prefix=kafka_prefix)
    with Workspace.open() as ws:
        _apply(ws)
        events = generate_events(ws.config, "payments.transactions", 60, seed=3, leak_rate=0.2)
        ws.produce(
            "payments.transactions", [orjson.dumps(e) for e in events], principal="payments-service"
        )
        creds = read_credentials(ws.config)
        wants = desired_state(ws.config)
    # Log every zone in as the flow's own user.
    path = workspace_dir / "trustzones.yaml"
    doc = yaml.safe_load(path.read_text())
    for i, zone in enumerate(doc["zones"]):
        bootstrap = zone["backend"]["bootstrap"]
        assert FLOW_USER in wants[bootstrap].users
        monkeypatch.setenv(f"TZ_FLOW_{i}", creds[bootstrap][FLOW_USER])
        zone["backend"].update(username=FLOW_USER, password_env=f"TZ_FLOW_{i}")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with Workspace.open() as ws:
        approve(ws)
        stats = open_flow(ws, "payments-to-analytics").run(once=True, batch=25)
        assert stats.read == 60 and stats.delivered + stats.quarantined == 60
        assert stats.quarantined > 0
        # The same login may not create topics or write into other topics of either zone.
        from trustzones.errors import AccessDenied
        from trustzones.streams import NewRecord

        with pytest.raises(AccessDenied):
            ws.backend("analytics").produce("analytics.clickstream", [NewRecord(b"{}")])
        with pytest.raises(AccessDenied):
            ws.backend("payments").produce("payments.transactions", [NewRecord(b"{}")])
        with pytest.raises(AccessDenied):
            ws.backend("analytics").ensure_topic("exfil", partitions=1)


def test_client_quotas_from_zone_byte_rates(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kafka_fixtures import _load_script
    from trustzones.provision import QuotaTool

    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="virtual", prefix=kafka_prefix)
    path = workspace_dir / "trustzones.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["zones"][0]["controls"]["rate_limit"]["bytes_per_second"] = 1_048_576
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.delenv("TRUSTZONES_KAFKA_LIBS", raising=False)
    original_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no kafka-configs.sh
    with Workspace.open() as ws:
        (plan,) = make_plan(ws.config)
        assert any("client quotas for payments-service not managed" in n for n in plan.notes)
    monkeypatch.setenv("PATH", original_path)
    monkeypatch.setenv("TRUSTZONES_KAFKA_LIBS", str(_load_script().fetch(quiet=True)))
    with Workspace.open() as ws:
        (plan,) = make_plan(ws.config)
        quota = [c for c in plan.changes if c.kind == "quota"]
        assert [(c.name, c.detail) for c in quota] == [
            ("payments-service", "producer_byte_rate=1048576")
        ]
        events = _apply(ws)
        assert ("provision.apply", "change-quota") in {(k, d["action"]) for k, d in events}
        tool = QuotaTool.find()
        assert tool is not None
        (want,) = desired_state(ws.config).values()
        from trustzones.provision._plan import _connection

        have = tool.user_quotas(_connection(want))
        assert have["payments-service"]["producer_byte_rate"] == 1_048_576
