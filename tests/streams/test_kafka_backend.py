"""Kafka backend specifics: two clusters, fencing, anchors, topic configs, least privilege."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from kafka_fixtures import BackendFactory, KafkaCluster
from trustzones.errors import TransactionAborted
from trustzones.streams._kafka import ANCHOR_PREFIX, KafkaBackend
from trustzones.streams._kafka_admin import AclRule, KafkaAdmin, KafkaUnavailable
from trustzones.streams.base import Backend, NewRecord, Record

pytestmark = pytest.mark.kafka


def read_all(backend: Backend, topic: str) -> list[Record]:
    out: list[Record] = []
    for p in range(backend.partition_count(topic)):
        offset = 0
        while batch := backend.fetch(topic, p, offset):
            out += batch
            offset = batch[-1].offset + 1
    return out


def raw_admin(cluster: KafkaCluster) -> AdminClient:
    return AdminClient({**cluster.client_config(), "log_level": 0})


def test_a_flow_step_across_two_clusters_resumes_from_the_destination_checkpoint(
    kafka_backend: BackendFactory, kafka_clusters: list[KafkaCluster], kafka_prefix: str
) -> None:
    """Kafka Connect's exactly-once source pattern: output and source offsets in one
    destination transaction; a restart reads the offsets back from the destination."""
    source = kafka_backend("restricted", cluster=0)
    dest = kafka_backend("public", cluster=1)
    source.ensure_topic("payments", partitions=2)
    dest.ensure_topic("payments-clean", partitions=2)
    source.produce(
        "payments",
        [NewRecord(key=b"c%d" % i, value=orjson.dumps({"n": i, "pan": "4111"})) for i in range(20)],
    )

    def step(dest: Backend, max_records: int) -> int:
        # Resume each source partition where the destination's checkpoint says.
        positions = dict.fromkeys(range(2), 0) | dest.committed_offsets("redact", "payments")
        batch: list[Record] = []
        for p, offset in positions.items():
            records = source.fetch("payments", p, offset, max_records=max_records)
            if records:
                batch += records
                positions[p] = records[-1].offset + 1
        if not batch:
            return 0
        out = [
            NewRecord(key=r.key, value=orjson.dumps({"n": orjson.loads(r.value)["n"]}))
            for r in batch
        ]
        with dest.transaction("redact-0") as tx:
            tx.produce("payments-clean", out)
            tx.store_offsets("redact", "payments", positions)
        return len(batch)

    assert step(dest, 4) == 8
    # A crash between reading and committing loses nothing: the transaction never happened.
    with pytest.raises(RuntimeError), dest.transaction("redact-0") as tx:
        tx.produce("payments-clean", [NewRecord(value=b'{"n": -1}')])
        tx.store_offsets("redact", "payments", {0: 999, 1: 999})
        raise RuntimeError("crash")
    restarted = kafka_backend("public", cluster=1)
    while step(restarted, 5):
        pass
    got = sorted(orjson.loads(r.value)["n"] for r in read_all(restarted, "payments-clean"))
    assert got == list(range(20))
    assert restarted.committed_offsets("redact", "payments") == source.end_offsets("payments")
    # The checkpoint lives in the destination cluster, against the anchor topic, and the
    # source cluster knows nothing of the flow's group.
    anchor = f"{kafka_prefix}{ANCHOR_PREFIX}payments"
    assert anchor in raw_admin(kafka_clusters[1]).list_topics(timeout=10).topics
    group = kafka_prefix + "redact"
    for cluster, expected in ((kafka_clusters[1], {anchor}), (kafka_clusters[0], set())):
        req = [ConsumerGroupTopicPartitions(group)]
        admin = raw_admin(cluster)
        result = admin.list_consumer_group_offsets(req)[group].result(timeout=10)
        assert {tp.topic for tp in result.topic_partitions or []} == expected


def test_the_anchor_grows_with_the_source_partitions(kafka_backend: BackendFactory) -> None:
    dest = kafka_backend("public")
    with dest.transaction("t") as tx:
        tx.store_offsets("flow", "src", {0: 1, 5: 2})
    assert dest.committed_offsets("flow", "src") == {0: 1, 5: 2}
    with dest.transaction("t") as tx:
        tx.store_offsets("flow", "src", {9: 3})
    assert dest.committed_offsets("flow", "src") == {0: 1, 5: 2, 9: 3}
    assert dest.partition_count(ANCHOR_PREFIX + "src") == 10
    assert dest.list_topics() == {}


def test_a_commit_not_awaited_leaves_the_wait_to_await_visible(
    kafka_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait for the commit markers (read your writes) happens once, where the writer asks.
    backend = kafka_backend("z")
    backend.ensure_topic("t", partitions=2)
    waits: list[dict[tuple[str, int], int]] = []
    real = backend._await_stable

    def spy(written: dict[tuple[str, int], int], action: str) -> None:
        waits.append(dict(written))
        real(written, action)

    monkeypatch.setattr(backend, "_await_stable", spy)
    for value, partition in ((b"a", 0), (b"b", 0), (b"c", 1)):
        with backend.transaction("w", visible=False) as tx:
            tx.produce("t", [NewRecord(value=value, partition=partition)])
    assert waits == []
    backend.await_visible()
    backend.await_visible()  # nothing owed any more
    with backend.transaction("w") as tx:  # the default waits at once
        tx.produce("t", [NewRecord(value=b"d", partition=1)])
    at = {r.value: (backend._t("t"), r.partition, r.offset) for r in read_all(backend, "t")}
    assert sorted(at) == [b"a", b"b", b"c", b"d"]
    # The first wait: the last record of each partition (commit markers take offsets too).
    assert waits == [
        {at[b"b"][:2]: at[b"b"][2], at[b"c"][:2]: at[b"c"][2]},
        {},
        {at[b"d"][:2]: at[b"d"][2]},
    ]


def test_a_zombie_with_the_same_transactional_id_is_fenced(
    kafka_backend: BackendFactory,
) -> None:
    old, new = kafka_backend("z"), kafka_backend("z")
    old.ensure_topic("t", partitions=1)
    with old.transaction("flow-0") as tx:
        tx.produce("t", [NewRecord(value=b"before")])
    zombie = old.transaction("flow-0")
    tx = zombie.__enter__()
    tx.produce("t", [NewRecord(value=b"zombie")])
    # The replacement starts: init_transactions fences the old producer and aborts its
    # open transaction.
    with new.transaction("flow-0") as tx2:
        tx2.produce("t", [NewRecord(value=b"after")])
    with pytest.raises(TransactionAborted, match="fenced"):
        zombie.__exit__(None, None, None)
    assert [r.value for r in read_all(new, "t")] == [b"before", b"after"]


def test_retention_is_set_on_the_topic(
    kafka_backend: BackendFactory, kafka_clusters: list[KafkaCluster], kafka_prefix: str
) -> None:
    backend = kafka_backend()
    backend.ensure_topic("audit", partitions=1, retention_ms=3_600_000)

    def retention() -> str:
        resource = ConfigResource(ResourceType.TOPIC, kafka_prefix + "audit")
        admin = raw_admin(kafka_clusters[0])  # keep it alive until the future resolves
        [future] = admin.describe_configs([resource]).values()
        return str(future.result(timeout=10)["retention.ms"].value)

    assert retention() == "3600000"
    backend.ensure_topic("audit", partitions=1, retention_ms=7_200_000)
    assert retention() == "7200000"
    backend.ensure_topic("audit", partitions=1)
    assert retention() == "7200000"


def test_an_unreachable_cluster_is_reported_as_unavailable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = KafkaBackend(
        "z", bootstrap=f"127.0.0.1:{port}", username="u", password="p", timeout_s=2.0
    )
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=f"127.0.0.1:{port}"):
        backend.open()
    assert time.monotonic() - started < 10


def test_a_reader_with_only_topic_read_can_fetch_and_consume_without_a_group(
    kafka_backend: BackendFactory, kafka_admin: Callable[[int], KafkaAdmin], kafka_prefix: str
) -> None:
    """A flow's source principal gets READ on its source topic and nothing else."""
    owner = kafka_backend()
    owner.ensure_topic("src", partitions=2)
    owner.produce("src", [NewRecord(value=b"%d" % i, partition=i % 2) for i in range(6)])
    admin = kafka_admin(0)
    name, password = f"reader-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rule = AclRule(f"User:{name}", "topic", kafka_prefix + "src", operation="read")
    admin.upsert_scram_user(name, password)
    admin.create_acls([rule])
    try:
        reader = kafka_backend(username=name, password=password)
        assert [r.value for r in reader.fetch("src", 1, 0)] == [b"1", b"3", b"5"]
        consumer = reader.consumer("src")
        assert sorted(r.value for r in consumer.iter_until_end()) == [b"%d" % i for i in range(6)]
        started = time.monotonic()
        reader.close()  # no group coordinator is needed (or waited for) on close
        assert time.monotonic() - started < 5
    finally:
        admin.delete_acls([rule])
        admin.delete_scram_user(name)
