"""The backend contract: one suite, run unchanged on every backend (embedded and Kafka).

Each test gets fresh zones: a new SQLite file per zone on the embedded backend, a new
virtual-cluster prefix on Kafka (so topics, groups and transactional ids are new too). Zones
named differently live on different Kafka clusters where two exist ("a dedicated cluster per
zone"); asking for the same zone twice gives a second, independent handle on it (another
SQLite connection, other librdkafka clients), used to check what *other* readers see.

Offsets are only assumed contiguous for plain ``produce``: on Kafka every transaction commit
or abort takes an offset for its marker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
from zone_keys import ZoneKeys

from kafka_fixtures import connection
from trustzones.errors import StreamError, UnknownTopic
from trustzones.streams._kafka import KafkaBackend
from trustzones.streams._partition import partition_for
from trustzones.streams.base import Backend, NewRecord, Record


class Zones(Protocol):
    def __call__(self, name: str = "z") -> Backend: ...


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("kafka-encrypted", marks=pytest.mark.kafka),
    ]
)
def zones(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Zones]:
    """``zones(name)`` opens a handle on zone ``name`` of the backend under test.

    ``kafka-encrypted`` is a Kafka zone with encryption at rest (real zone keys): every
    record is sealed on produce and opened on read, and the contract must not change.
    """
    opened: list[Backend] = []
    keys: ZoneKeys | None = None
    if request.param == "embedded":
        from trustzones.streams._embedded import EmbeddedBackend

        def make(name: str = "z") -> Backend:
            backend = EmbeddedBackend(name, tmp_path / f"{name}.db")
            backend.open()
            opened.append(backend)
            return backend

    else:
        factory = request.getfixturevalue("kafka_backend")
        clusters = len(request.getfixturevalue("kafka_clusters"))
        placement: dict[str, int] = {}

        if request.param == "kafka-encrypted":
            names = ("z", "a", "b", "restricted", "public")
            keys = ZoneKeys(tmp_path, dict.fromkeys(names, "restricted"))
            cluster_list = request.getfixturevalue("kafka_clusters")
            prefix = request.getfixturevalue("kafka_prefix")

        def make(name: str = "z") -> Backend:
            cluster = placement.setdefault(name, len(placement) % clusters)
            if keys is None:
                backend: Backend = factory(name, cluster=cluster)
                return backend
            sealed = KafkaBackend.from_connection(
                name,
                connection(cluster_list[cluster]),
                prefix=prefix,
                timeout_s=20.0,
                cipher=keys.cipher(name),
                key_secret=keys.secret(name),
            )
            sealed.open()
            opened.append(sealed)
            return sealed

    yield make
    for backend in opened:
        backend.close()
    if keys is not None:
        keys.close()


@pytest.fixture
def backend(zones: Zones) -> Backend:
    return zones("z")


def values(records: list[Record]) -> list[bytes]:
    return [r.value for r in records]


def read_all(backend: Backend, topic: str, partition: int) -> list[Record]:
    out: list[Record] = []
    offset = 0
    while batch := backend.fetch(topic, partition, offset, max_records=100):
        out += batch
        offset = batch[-1].offset + 1
    return out


# -- topics -------------------------------------------------------------------------------
def test_ensure_topic_is_idempotent_grows_and_never_shrinks(backend: Backend) -> None:
    backend.ensure_topic("orders", partitions=3)
    backend.ensure_topic("orders", partitions=3)
    assert backend.partition_count("orders") == 3
    backend.ensure_topic("orders", partitions=2)
    assert backend.partition_count("orders") == 3
    backend.ensure_topic("orders", partitions=5)
    assert backend.partition_count("orders") == 5
    backend.ensure_topic("clicks", partitions=1)
    assert backend.list_topics() == {"clicks": 1, "orders": 5}


def test_ensure_topic_rejects_zero_partitions(backend: Backend) -> None:
    with pytest.raises(StreamError, match="partitions"):
        backend.ensure_topic("orders", partitions=0)


def test_unknown_topic_errors(backend: Backend) -> None:
    with pytest.raises(UnknownTopic, match="nope"):
        backend.partition_count("nope")
    with pytest.raises(UnknownTopic, match="nope"):
        backend.produce("nope", [NewRecord(value=b"x")])
    with pytest.raises(UnknownTopic, match="nope"):
        backend.fetch("nope", 0, 0)
    with pytest.raises(UnknownTopic, match="nope"):
        backend.end_offsets("nope")
    assert backend.list_topics() == {}


def test_a_partition_out_of_range_is_an_error(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=2)
    with pytest.raises(StreamError, match="partition"):
        backend.fetch("t", 2, 0)
    with pytest.raises(StreamError, match="partition"):
        backend.produce("t", [NewRecord(value=b"x", partition=2)])
    assert backend.end_offsets("t") == {0: 0, 1: 0}


# -- records ------------------------------------------------------------------------------
def test_produce_returns_positions_in_order_and_offsets_grow_by_one(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=3)
    first = backend.produce("t", [NewRecord(value=b"v%d" % i, partition=1) for i in range(5)])
    assert [(p.topic, p.partition, p.offset) for p in first] == [("t", 1, i) for i in range(5)]
    second = backend.produce("t", [NewRecord(value=b"w%d" % i, partition=1) for i in range(3)])
    assert [p.offset for p in second] == [5, 6, 7]
    records = backend.fetch("t", 1, 0)
    assert values(records) == [b"v0", b"v1", b"v2", b"v3", b"v4", b"w0", b"w1", b"w2"]
    assert [r.offset for r in records] == list(range(8))
    assert all(r.topic == "t" and r.partition == 1 for r in records)
    assert backend.end_offsets("t") == {0: 0, 1: 8, 2: 0}
    assert backend.produce("t", []) == []


def test_fetch_ranges_and_max_records(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=1)
    backend.produce("t", [NewRecord(value=b"%d" % i) for i in range(10)])
    assert [r.offset for r in backend.fetch("t", 0, 3, max_records=4)] == [3, 4, 5, 6]
    assert [r.offset for r in backend.fetch("t", 0, 8, max_records=10)] == [8, 9]
    assert [r.offset for r in backend.fetch("t", 0, 0, max_records=1)] == [0]
    assert len(backend.fetch("t", 0, 0)) == 10
    assert backend.fetch("t", 0, 10) == []
    assert backend.fetch("t", 0, 1000) == []


def test_key_partitioning_is_kafkas_murmur2(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=7)
    keys = [f"customer-{i}".encode() for i in range(60)] + [b"", b"\x00\xff", "ü".encode()]
    positions = backend.produce("t", [NewRecord(key=k, value=b"v") for k in keys])
    assert [p.partition for p in positions] == [partition_for(k, 7) for k in keys]
    again = backend.produce("t", [NewRecord(key=k, value=b"w") for k in keys[:5]])
    assert [p.partition for p in again] == [p.partition for p in positions[:5]]
    # All seven partitions are used, so the check above is not vacuous.
    assert {p.partition for p in positions} == set(range(7))


def test_an_explicit_partition_wins_over_the_key(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=4)
    key = b"customer-1"
    other = (partition_for(key, 4) + 1) % 4
    [position] = backend.produce("t", [NewRecord(key=key, value=b"v", partition=other)])
    assert position.partition == other


def test_keys_headers_and_timestamps_round_trip(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=1)
    headers = (("trace", b"1"), ("trace", b"2"), ("empty", b""), ("bin", bytes(range(256))))
    before = int(time.time() * 1000)
    backend.produce(
        "t",
        [
            NewRecord(key=b"k", value=b"v", headers=headers, timestamp_ms=1_600_000_000_123),
            NewRecord(value=b""),
        ],
    )
    after = int(time.time() * 1000)
    first, second = backend.fetch("t", 0, 0)
    assert (first.key, first.value, first.headers) == (b"k", b"v", headers)
    assert first.timestamp_ms == 1_600_000_000_123
    assert first.header("trace") == b"2"
    assert first.header("missing") is None
    assert (second.key, second.value, second.headers) == (None, b"", ())
    assert before - 1000 <= second.timestamp_ms <= after + 1000


# -- groups -------------------------------------------------------------------------------
def test_committed_offsets_are_per_group_and_topic(backend: Backend) -> None:
    backend.ensure_topic("a", partitions=2)
    backend.ensure_topic("b", partitions=2)
    assert backend.committed_offsets("g1", "a") == {}
    backend.commit_offsets("g1", "a", {0: 3})
    backend.commit_offsets("g2", "a", {0: 1, 1: 2})
    backend.commit_offsets("g1", "b", {1: 9})
    assert backend.committed_offsets("g1", "a") == {0: 3}
    assert backend.committed_offsets("g2", "a") == {0: 1, 1: 2}
    assert backend.committed_offsets("g1", "b") == {1: 9}
    backend.commit_offsets("g1", "a", {0: 4, 1: 1})
    assert backend.committed_offsets("g1", "a") == {0: 4, 1: 1}
    assert backend.committed_offsets("nobody", "a") == {}


def test_consumer_reads_every_partition_and_resumes_from_its_group(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=3)
    backend.produce("t", [NewRecord(key=b"k%d" % i, value=b"%d" % i) for i in range(30)])
    consumer = backend.consumer("t", group="g")
    seen = list(consumer.iter_until_end(batch=7))
    assert sorted(int(r.value) for r in seen) == list(range(30))
    assert consumer.lag() == 0
    consumer.commit()
    assert backend.committed_offsets("g", "t") == backend.end_offsets("t")
    backend.produce("t", [NewRecord(value=b"30", partition=2)])
    resumed = backend.consumer("t", group="g")
    assert values(list(resumed.iter_until_end())) == [b"30"]
    latest = backend.consumer("t", start="latest")
    assert latest.poll() == []
    backend.produce("t", [NewRecord(value=b"31", partition=0)])
    assert values(list(latest.iter_until_end())) == [b"31"]
    only_one = backend.consumer("t", start="earliest", partitions=[2])
    assert {r.partition for r in only_one.iter_until_end()} == {2}


# -- transactions -------------------------------------------------------------------------
def test_transaction_commit_makes_records_and_offsets_visible_together(zones: Zones) -> None:
    backend, other = zones("z"), zones("z")
    backend.ensure_topic("in", partitions=2)
    backend.ensure_topic("out", partitions=2)
    with backend.transaction("step") as tx:
        tx.produce("out", [NewRecord(value=b"a", partition=0), NewRecord(value=b"b", partition=0)])
        tx.produce("out", [NewRecord(value=b"c", partition=1)])
        tx.store_offsets("g", "in", {0: 7, 1: 2})
        # Another reader of the zone sees none of it yet.
        assert other.fetch("out", 0, 0) == []
        assert other.committed_offsets("g", "in") == {}
    assert values(other.fetch("out", 0, 0)) == [b"a", b"b"]
    assert values(other.fetch("out", 1, 0)) == [b"c"]
    assert other.committed_offsets("g", "in") == {0: 7, 1: 2}


def test_an_exception_inside_a_transaction_makes_nothing_visible(zones: Zones) -> None:
    backend, other = zones("z"), zones("z")
    backend.ensure_topic("in", partitions=1)
    backend.ensure_topic("out", partitions=1)
    backend.commit_offsets("g", "in", {0: 1})
    with pytest.raises(RuntimeError, match="boom"), backend.transaction("step") as tx:
        tx.produce("out", [NewRecord(value=b"lost")])
        tx.store_offsets("g", "in", {0: 5})
        raise RuntimeError("boom")
    assert read_all(other, "out", 0) == []
    assert other.committed_offsets("g", "in") == {0: 1}
    # The transactional id is usable again, and later records are readable.
    with backend.transaction("step") as tx:
        tx.produce("out", [NewRecord(value=b"kept")])
        tx.store_offsets("g", "in", {0: 6})
    assert values(read_all(other, "out", 0)) == [b"kept"]
    assert other.committed_offsets("g", "in") == {0: 6}


def test_a_transaction_into_an_unknown_topic_writes_nothing(backend: Backend) -> None:
    backend.ensure_topic("out", partitions=1)
    with pytest.raises(UnknownTopic, match="nope"), backend.transaction("step") as tx:
        tx.produce("out", [NewRecord(value=b"first")])
        tx.produce("nope", [NewRecord(value=b"second")])
    assert read_all(backend, "out", 0) == []


def test_offsets_grow_across_transactions_and_readers_reach_the_end(backend: Backend) -> None:
    backend.ensure_topic("t", partitions=2)
    for n in range(3):
        with backend.transaction("step") as tx:
            tx.produce("t", [NewRecord(value=b"%d" % n, partition=0)])
    with pytest.raises(RuntimeError), backend.transaction("step") as tx:
        tx.produce("t", [NewRecord(value=b"aborted", partition=0)])
        raise RuntimeError
    records = read_all(backend, "t", 0)
    assert values(records) == [b"0", b"1", b"2"]
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    consumer = backend.consumer("t")
    assert values(list(consumer.iter_until_end())) == [b"0", b"1", b"2"]
    assert consumer.lag() == 0


def test_store_offsets_for_a_topic_of_another_zone(zones: Zones) -> None:
    """A flow keeps its source position in the destination, atomically with its output."""
    source, dest = zones("restricted"), zones("public")
    source.ensure_topic("payments", partitions=3)
    dest.ensure_topic("payments-clean", partitions=3)
    with dest.transaction("flow-1") as tx:
        tx.produce("payments-clean", [NewRecord(key=b"c1", value=b"{}")])
        tx.store_offsets("flow-1", "payments", {0: 5, 1: 9, 2: 0})
    assert dest.committed_offsets("flow-1", "payments") == {0: 5, 1: 9, 2: 0}
    assert dest.list_topics() == {"payments-clean": 3}
    with pytest.raises(RuntimeError), dest.transaction("flow-1") as tx:
        tx.store_offsets("flow-1", "payments", {0: 50, 1: 90, 2: 10})
        raise RuntimeError
    with dest.transaction("flow-1") as tx:
        tx.store_offsets("flow-1", "payments", {1: 10})
    # A restarted flow (a new handle on the destination) resumes from the checkpoint.
    restarted = zones("public")
    assert restarted.committed_offsets("flow-1", "payments") == {0: 5, 1: 10, 2: 0}
    assert source.committed_offsets("flow-1", "payments") == {}


def test_commit_offsets_for_a_topic_of_another_zone(zones: Zones) -> None:
    dest = zones("public")
    dest.commit_offsets("mirror", "elsewhere", {0: 3, 4: 8})
    assert dest.committed_offsets("mirror", "elsewhere") == {0: 3, 4: 8}
    assert dest.list_topics() == {}


def test_transactions_of_one_zone_do_not_touch_another(zones: Zones) -> None:
    a, b = zones("a"), zones("b")
    a.ensure_topic("t", partitions=1)
    b.ensure_topic("t", partitions=1)
    with a.transaction("same-id") as tx:
        tx.produce("t", [NewRecord(value=b"from a")])
    with b.transaction("same-id") as tx:
        tx.produce("t", [NewRecord(value=b"from b")])
    assert values(read_all(a, "t", 0)) == [b"from a"]
    assert values(read_all(b, "t", 0)) == [b"from b"]
