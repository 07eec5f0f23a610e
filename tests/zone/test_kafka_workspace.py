"""Kafka zones through the workspace: records sealed with zone keys, services logged in as
themselves (their own SCRAM users, so the broker's least-privilege ACLs apply to trustzones'
own processes).

The broker's view is checked with plain confluent-kafka clients.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from kafka_fixtures import approve, kafka_zones
from trustzones.errors import AccessDenied, AuthenticationFailed, KeyAccessDenied
from trustzones.provision import apply_plan, make_plan, read_credentials
from trustzones.streams import NewRecord
from trustzones.streams._kafka import UNDECRYPTABLE_HEADER, KafkaBackend
from trustzones.zone import Workspace

FLOW_USER = "flow-payments-to-analytics"
CREDENTIALS = ".trustzones/kafka-credentials.yaml"


def _raw(cluster: Any, topic: str, partitions: int) -> list[Any]:
    """Every stored message of ``topic``, read by a plain consumer logged in as admin."""
    consumer = Consumer(
        {
            **cluster.client_config(),
            "log_level": 0,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out, ended = [], set()
        while len(ended) < partitions:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is None:
                out.append(msg)
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                ended.add(msg.partition())
            else:
                raise AssertionError(str(msg.error()))
        return out
    finally:
        consumer.close()


def _apply(ws: Workspace) -> None:
    apply_plan(ws.config, make_plan(ws.config), emit=ws.emit)


def _payments(ws: Workspace, n: int, *, seed: int = 1) -> list[dict[str, Any]]:
    from trustzones.flows import generate_events

    events = generate_events(ws.config, "payments.transactions", n, seed=seed, leak_rate=0.0)
    res = ws.produce(
        "payments.transactions",
        [orjson.dumps(e) for e in events],
        principal="payments-service",
        keys=[e["card"]["number"].encode() for e in events],
    )
    assert len(res.accepted) == n
    return events


def _set_backend(workspace: Path, zone: str, **settings: Any) -> None:
    path = workspace / "trustzones.yaml"
    doc = yaml.safe_load(path.read_text())
    for z in doc["zones"]:
        if z["name"] == zone:
            z["backend"].update(settings)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _offline_zones(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka zones on a port nobody listens on: for errors raised before any connection."""
    monkeypatch.setenv("TZ_TEST_OFFLINE_PASSWORD", "zone-user-secret")
    for zone in ("payments", "analytics"):
        _set_backend(
            workspace,
            zone,
            type="kafka",
            bootstrap="127.0.0.1:1",
            username="admin",
            password_env="TZ_TEST_OFFLINE_PASSWORD",
        )


# -- logins without a broker ------------------------------------------------------------------
def test_a_principal_without_a_kafka_password_is_refused_naming_what_is_missing(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_zones(workspace_dir, monkeypatch)
    creds = workspace_dir / CREDENTIALS
    with Workspace.open() as ws:
        message = (
            f"zone 'analytics': no Kafka password for principal '{FLOW_USER}' on cluster "
            f"127.0.0.1:1 in {creds}. Run `trustzones apply` (it creates the SCRAM user and "
            "stores its password there), or set backend.zone_user_fallback: true on zone "
            "'analytics' to log in as 'admin' instead."
        )
        with pytest.raises(AuthenticationFailed) as info:
            ws.backend("analytics", acting_for="payments", principal=FLOW_USER)
        assert str(info.value) == message
        # A password for another user or cluster does not count.
        creds.write_text(yaml.safe_dump({"127.0.0.1:2": {FLOW_USER: "x"}, "127.0.0.1:1": {}}))
        creds.chmod(0o600)
        with pytest.raises(AuthenticationFailed) as info:
            ws.backend("analytics", acting_for="payments", principal=FLOW_USER)
        assert str(info.value) == message
        with pytest.raises(AuthenticationFailed) as info:
            ws.backend("analytics", principal="nobody")
        assert str(info.value) == (
            "zone 'analytics': cannot log in to Kafka as 'nobody': no such principal in "
            "trustzones.yaml"
        )


def test_the_process_login_comes_from_the_environment(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_zones(workspace_dir, monkeypatch)
    monkeypatch.setenv("TRUSTZONES_KAFKA_PRINCIPAL", FLOW_USER)
    with Workspace.open() as ws:
        assert ws.kafka_principal == FLOW_USER
        with pytest.raises(AuthenticationFailed, match=f"principal '{FLOW_USER}'"):
            ws.backend("payments")
    with Workspace.open(kafka_principal="payments-service") as ws:
        assert ws.kafka_principal == "payments-service"
        with pytest.raises(AuthenticationFailed, match="principal 'payments-service'"):
            ws.backend("payments")


def test_a_credentials_file_others_can_read_is_refused(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _offline_zones(workspace_dir, monkeypatch)
    creds = workspace_dir / CREDENTIALS
    creds.write_text(yaml.safe_dump({"127.0.0.1:1": {FLOW_USER: "flow-secret-password"}}))
    creds.chmod(0o644)
    with Workspace.open() as ws, pytest.raises(AuthenticationFailed) as info:
        ws.backend("payments", principal=FLOW_USER)
    assert str(info.value) == (
        f"{creds} is readable by group or others (mode 0644); it holds Kafka passwords. Run "
        f"`chmod 600 {creds}`."
    )
    assert "flow-secret-password" not in str(info.value)


# -- on the broker ----------------------------------------------------------------------------
@pytest.mark.kafka
def test_records_on_kafka_zones_are_sealed_and_flows_write_down_wrap_only(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trustzones.flows import open_flow

    zones = kafka_zones(
        workspace_dir, kafka_clusters, monkeypatch, layout="dedicated", prefix=kafka_prefix
    )
    events: list[tuple[str, dict[str, Any]]] = []
    with Workspace.open() as ws:
        ws.event_sinks.append(lambda kind, data: events.append((kind, data)))
        ws.ensure_topics()
        sent = _payments(ws, 12)
        payments = ws.backend("payments")
        assert isinstance(payments, KafkaBackend) and payments.encrypted
        # The broker holds no card number, no name, no real key, no lineage header.
        raw = _raw(kafka_clusters[0], zones["payments"]["prefix"] + "payments.transactions", 3)
        assert len(raw) == 12
        secrets = [e["card"]["number"].encode() for e in sent]
        secrets += [e["customer"]["email"].encode() for e in sent if "email" in e["customer"]]
        for msg in raw:
            stored = msg.value() + (msg.key() or b"") + repr(msg.headers()).encode()
            assert not [s for s in secrets if s in stored]
            assert b"payments-service" not in stored
        # trustzones opens them again, keys included.
        back = [r for p in range(3) for r in payments.fetch("payments.transactions", p, 0)]
        assert sorted(r.key or b"" for r in back) == sorted(secrets[:12])
        assert sorted(r.value for r in back) == sorted(orjson.dumps(e) for e in sent)
        assert {r.header("tz.producer") for r in back} == {b"payments-service"}

        # A plaintext record slipped in by a plain client is withheld and quarantined: the
        # flow goes on, and the reason reaches the audit zone.
        producer = Producer({**kafka_clusters[0].client_config(), "log_level": 0})
        producer.produce(
            zones["payments"]["prefix"] + "payments.transactions",
            value=orjson.dumps(sent[0]),
            partition=1,
        )
        assert producer.flush(20) == 0
        approve(ws)
        stats = open_flow(ws, "payments-to-analytics").run(once=True, batch=5)
        assert stats.read == 13 and stats.delivered + stats.quarantined == 13
        assert stats.quarantined >= 1
        withheld = [d for k, d in events if k == "streams.record_undecryptable"]
        assert [(d["zone"], d["topic"], d["partition"]) for d in withheld] == [
            ("payments", "payments.transactions", 1)
        ]
        quarantined = [
            r
            for r in ws.backend("payments").fetch("tz.quarantine.payments-to-analytics", 0, 0)
            if r.header("tz.source.partition") == b"1" and r.value == b""
        ]
        assert len(quarantined) == 1

        # The flow's handle on analytics seals but cannot read; analytics itself can.
        writer = ws.backend("analytics", acting_for="payments")
        with pytest.raises(KeyAccessDenied, match="wrap-only keys"):
            writer.fetch("analytics.transactions", 0, 0)
        out = [
            r
            for p in range(3)
            for r in ws.backend("analytics").fetch("analytics.transactions", p, 0)
        ]
        assert len(out) == stats.delivered
        assert not [r for r in out if r.header(UNDECRYPTABLE_HEADER) is not None]
        raw_out = _raw(
            kafka_clusters[1], zones["analytics"]["prefix"] + "analytics.transactions", 3
        )
        assert len(raw_out) == stats.delivered
        assert not [m for m in raw_out if b"tz.flow" in m.value() or m.headers()]


@pytest.mark.kafka
def test_a_flow_logged_in_as_itself_moves_records_and_may_write_nowhere_else(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trustzones.flows import open_flow

    caplog.set_level(logging.DEBUG)
    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="dedicated", prefix=kafka_prefix)
    with Workspace.open() as ws:
        _apply(ws)
        _payments(ws, 20, seed=5)
        approve(ws)
        passwords = {
            u: p for users in read_credentials(ws.config).values() for u, p in users.items()
        }
    assert os.stat(workspace_dir / CREDENTIALS).st_mode & 0o077 == 0

    with Workspace.open(kafka_principal=FLOW_USER) as ws:
        stats = open_flow(ws, "payments-to-analytics").run(once=True, batch=8)
        assert stats.read == 20 and stats.delivered + stats.quarantined == 20
        src = ws.backend("payments")
        dst = ws.backend("analytics", acting_for="payments")
        assert isinstance(src, KafkaBackend) and isinstance(dst, KafkaBackend)
        assert (src.connection.username, dst.connection.username) == (FLOW_USER, FLOW_USER)
        # The broker refuses the same login anywhere but its destination (it may not even
        # see the other topic's metadata).
        with pytest.raises(AccessDenied) as info:
            dst.produce("analytics.clickstream", [NewRecord(b"{}")])
        assert str(info.value) == (
            f"Kafka zone 'analytics': could not describe topic '{dst.prefix}"
            "analytics.clickstream': the broker's ACLs do not allow it for "
            f"'{FLOW_USER}' (TOPIC_AUTHORIZATION_FAILED). Grant it in trustzones.yaml and "
            "apply, or use a principal that has the grant."
        )
        with pytest.raises(AccessDenied, match="TOPIC_AUTHORIZATION_FAILED"):
            src.produce("payments.transactions", [NewRecord(b"{}")])
        # An explicit principal wins over the process login, per call.
        as_service = ws.backend("payments", principal="payments-service")
        assert isinstance(as_service, KafkaBackend)
        assert as_service.connection.username == "payments-service"
        assert as_service is not src

    # What the flow delivered is there, read by the zone user.
    with Workspace.open() as ws:
        zone_user = ws.backend("analytics")
        assert isinstance(zone_user, KafkaBackend) and zone_user.connection.username == "admin"
        got = sum(len(zone_user.fetch("analytics.transactions", p, 0)) for p in range(3))
        assert got == stats.delivered
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert not [u for u, p in passwords.items() if p in logged]


@pytest.mark.kafka
def test_the_zone_user_stands_in_only_where_the_config_says_so(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="virtual", prefix=kafka_prefix)
    with Workspace.open() as ws, pytest.raises(AuthenticationFailed, match="marketing-analyst"):
        ws.backend("analytics", principal="marketing-analyst")
    _set_backend(workspace_dir, "analytics", zone_user_fallback=True)
    with Workspace.open() as ws:
        b = ws.backend("analytics", principal="marketing-analyst")
        assert isinstance(b, KafkaBackend) and b.connection.username == "admin"
        # Only that zone: payments still insists on the principal's own password.
        with pytest.raises(AuthenticationFailed, match="zone 'payments'"):
            ws.backend("payments", principal="marketing-analyst")
