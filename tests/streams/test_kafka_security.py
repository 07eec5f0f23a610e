"""Defence in depth on the broker itself: SCRAM logins and StandardAuthorizer ACLs.

These tests talk to the broker with plain confluent-kafka clients (not trustzones), so they
prove that Kafka enforces the boundaries even for a client that bypasses trustzones.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from kafka_fixtures import BackendFactory, KafkaCluster
from trustzones.errors import AccessDenied, AuthenticationFailed
from trustzones.streams._kafka_admin import AclRule, KafkaAdmin
from trustzones.streams.base import NewRecord

pytestmark = pytest.mark.kafka

AdminFactory = Callable[[int], KafkaAdmin]


class Users:
    """Creates SCRAM users (and their ACLs) for one test, and removes them afterwards."""

    def __init__(self, admin: KafkaAdmin) -> None:
        self.admin = admin
        self.names: list[str] = []
        self.rules: list[AclRule] = []

    def add(self, role: str, rules: Sequence[tuple[str, str, str, str]] = ()) -> tuple[str, str]:
        name = f"{role}-{uuid.uuid4().hex[:8]}"
        password = uuid.uuid4().hex
        self.admin.upsert_scram_user(name, password)
        self.names.append(name)
        acl = [
            AclRule(f"User:{name}", kind, res, pattern=pattern, operation=op)  # type: ignore[arg-type]
            for kind, res, pattern, op in rules
        ]
        self.admin.create_acls(acl)
        self.rules += acl
        return name, password


@pytest.fixture
def users(kafka_admin: AdminFactory) -> Iterator[Users]:
    u = Users(kafka_admin(0))
    yield u
    u.admin.delete_acls(u.rules)
    for name in u.names:
        u.admin.delete_scram_user(name)


def client_config(cluster: KafkaCluster, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": cluster.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
        "log_level": 0,
    }


def produce_error(conf: dict[str, Any], topic: str) -> KafkaError | None:
    """Produce one record with a plain producer; the delivery error, or None if written."""
    results: list[KafkaError | None] = []
    producer = Producer({**conf, "message.timeout.ms": 10000})
    producer.produce(topic, b"x", on_delivery=lambda err, _msg: results.append(err))
    assert producer.flush(15) == 0
    return results[0]


def consume_outcome(conf: dict[str, Any], topic: str) -> str:
    """Read partition 0 with a plain assign()-based consumer: 'read' or the broker's error.

    Without DESCRIBE on the topic the broker already refuses its metadata, so the client never
    learns a leader to fetch from; with DESCRIBE but no READ the Fetch itself is refused.
    """
    # No auto-commit: close() would otherwise wait ~45 s for a group coordinator that the
    # broker does not let this user find.
    consumer = Consumer(
        {**conf, "group.id": f"probe-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    try:
        error = consumer.list_topics(topic, timeout=10).topics[topic].error
        if error is not None:
            return str(error.name())
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                return "read"
            if err.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:  # the probe group: no ACL
                return str(err.name())
        return "timeout"
    finally:
        consumer.close()


@pytest.fixture
def payments(kafka_backend: BackendFactory) -> str:
    """A topic with one record, created by the admin (no prefix: a dedicated cluster)."""
    topic = f"payments-{uuid.uuid4().hex[:8]}"
    backend = kafka_backend("restricted", prefix="")
    backend.ensure_topic(topic, partitions=1)
    backend.produce(topic, [NewRecord(key=b"card", value=b'{"pan": "4111111111111111"}')])
    return topic


def test_a_user_without_acls_gets_authorization_errors_from_the_broker(
    kafka_clusters: list[KafkaCluster], users: Users, payments: str
) -> None:
    analyst, password = users.add("analyst")
    conf = client_config(kafka_clusters[0], analyst, password)
    err = produce_error(conf, payments)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert consume_outcome(conf, payments) == "TOPIC_AUTHORIZATION_FAILED"
    # The topic does not even show up in the metadata the analyst may see.
    assert payments not in AdminClient(conf).list_topics(timeout=10).topics


def test_acls_allow_exactly_what_they_name(
    kafka_clusters: list[KafkaCluster], users: Users, kafka_backend: BackendFactory
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, dest, other = f"src-{suffix}", f"dst-{suffix}", f"other-{suffix}"
    admin = kafka_backend(prefix="")
    for topic in (source, dest, other):
        admin.ensure_topic(topic, partitions=1)
        admin.produce(topic, [NewRecord(value=b"seed")])
    flow, password = users.add(
        "flow", [("topic", source, "literal", "read"), ("topic", dest, "literal", "write")]
    )
    conf = client_config(kafka_clusters[0], flow, password)
    assert produce_error(conf, dest) is None
    for topic in (source, other):
        err = produce_error(conf, topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    assert consume_outcome(conf, source) == "read"
    assert consume_outcome(conf, dest) == "TOPIC_AUTHORIZATION_FAILED"
    assert consume_outcome(conf, other) == "TOPIC_AUTHORIZATION_FAILED"


def test_the_backend_reports_a_broker_denial_as_access_denied(
    users: Users, payments: str, kafka_backend: BackendFactory
) -> None:
    analyst, password = users.add("analyst")
    backend = kafka_backend("public", prefix="", username=analyst, password=password)
    with pytest.raises(AccessDenied, match=rf"{analyst}.*TOPIC_AUTHORIZATION_FAILED") as denied:
        backend.fetch(payments, 0, 0)
    assert password not in str(denied.value)
    with pytest.raises(AccessDenied, match="TOPIC_AUTHORIZATION_FAILED"):
        backend.produce(payments, [NewRecord(value=b"x")])
    assert backend.list_topics() == {}


def test_a_wrong_password_fails_fast_and_is_not_shown(
    kafka_clusters: list[KafkaCluster], users: Users, kafka_backend: BackendFactory
) -> None:
    analyst, _ = users.add("analyst")
    wrong = "not-the-password-" + uuid.uuid4().hex
    backend = kafka_backend("public", username=analyst, password=wrong, open=False)
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match=analyst) as failed:
        backend.open()
    assert time.monotonic() - started < 8
    assert wrong not in str(failed.value)
    assert wrong not in repr(backend)
    assert wrong not in repr(backend.connection)


def test_virtual_clusters_on_one_broker_are_isolated_by_prefixed_acls(
    kafka_clusters: list[KafkaCluster], users: Users, kafka_backend: BackendFactory
) -> None:
    zone_prefix = {z: f"{z}-{uuid.uuid4().hex[:6]}." for z in ("hr", "sales")}

    def owner_of(prefix: str) -> list[tuple[str, str, str, str]]:
        kinds = ("topic", "group", "transactional_id")
        return [(kind, prefix, "prefixed", "all") for kind in kinds]

    hr_user, hr_pw = users.add("hr", owner_of(zone_prefix["hr"]))
    sales_user, sales_pw = users.add("sales", owner_of(zone_prefix["sales"]))
    hr = kafka_backend("hr", prefix=zone_prefix["hr"], username=hr_user, password=hr_pw)
    sales = kafka_backend(
        "sales", prefix=zone_prefix["sales"], username=sales_user, password=sales_pw
    )
    hr.ensure_topic("salaries", partitions=1)
    sales.ensure_topic("leads", partitions=1)
    with hr.transaction("payroll") as tx:
        tx.produce("salaries", [NewRecord(value=b"100")])
        tx.store_offsets("payroll", "timesheets", {0: 3})
    hr.commit_offsets("reader", "salaries", {0: 1})
    assert [r.value for r in hr.fetch("salaries", 0, 0)] == [b"100"]
    assert hr.list_topics() == {"salaries": 1}
    assert sales.list_topics() == {"leads": 1}
    # Sales, pointed at HR's prefix, is refused by the broker.
    intruder = kafka_backend("hr", prefix=zone_prefix["hr"], username=sales_user, password=sales_pw)
    with pytest.raises(AccessDenied):
        intruder.fetch("salaries", 0, 0)
    with pytest.raises(AccessDenied):
        intruder.committed_offsets("reader", "salaries")
    with pytest.raises(AccessDenied):
        intruder.ensure_topic("salaries-copy", partitions=1)
    conf = client_config(kafka_clusters[0], sales_user, sales_pw)
    assert consume_outcome(conf, zone_prefix["hr"] + "salaries") == "TOPIC_AUTHORIZATION_FAILED"


def test_admin_helpers_manage_scram_users_and_acls(kafka_admin: AdminFactory) -> None:
    admin = kafka_admin(0)
    name = f"svc-{uuid.uuid4().hex[:8]}"
    admin.upsert_scram_user(name, "first")
    admin.upsert_scram_user(name, "second")  # a password change is an upsert too
    assert admin.scram_users()[name] == ["SCRAM-SHA-512"]
    rules = [
        AclRule(f"User:{name}", "topic", "orders", operation="read"),
        AclRule(f"User:{name}", "group", "flow-", pattern="prefixed", operation="read"),
        AclRule(f"User:{name}", "transactional_id", "flow-1", operation="write"),
        AclRule(f"User:{name}", "cluster", "kafka-cluster", operation="describe"),
    ]
    admin.create_acls(rules)
    assert admin.describe_acls(principal=f"User:{name}") == sorted(rules)
    assert admin.describe_acls(principal=f"User:{name}", resource="group") == [rules[1]]
    admin.delete_acls(rules)
    assert admin.describe_acls(principal=f"User:{name}") == []
    admin.delete_scram_user(name)
    assert name not in admin.scram_users()
