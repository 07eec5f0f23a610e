"""The backend contract: one suite, run unchanged on every backend (embedded and Kafka).

Each test gets fresh zones: a new SQLite file per zone on the embedded backend, a new
virtual-cluster prefix on Kafka (so topics, groups and transactional ids are new too). Zones
named differently live on different Kafka clusters where two exist ("a dedicated cluster per
zone"); asking for the same zone twice gives a second, independent handle on it (another
SQLite connection, other librdkafka clients), used to check what *other* readers see.

Offsets are only assumed contiguous for plain ``produce``: on Kafka every transaction commit
or abort takes an offset for its marker.

The ``-encrypted`` variants seal every record with real zone keys. On them the tamper tests
change stored records behind the backend's back (SQLite edited directly; a plain admin client
on the broker) and check that a record that does not open is withheld the same way on both.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from broker_raw import raw_read, raw_write
from zone_keys import ZoneKeys

from kafka_fixtures import KafkaCluster, connection
from trustzones.errors import KeyAccessDenied, StreamError, UnknownTopic
from trustzones.keys._errors import OPAQUE_MESSAGE
from trustzones.streams._embedded import EmbeddedBackend
from trustzones.streams._kafka import KafkaBackend
from trustzones.streams._partition import partition_for
from trustzones.streams.base import Backend, NewRecord, Record


class Zones(Protocol):
    def __call__(self, name: str = "z") -> Backend: ...


class Tamper(Protocol):
    """Changes stored records behind the backend's back; each method returns the offset at
    which the bad record now sits."""

    def change(self, zone: str, topic: str, partition: int, offset: int) -> int:
        """Flip the last stored byte of a record (in place where storage allows, else as a
        changed copy appended to the same partition)."""
        ...

    def copy(
        self, zone: str, topic: str, partition: int, offset: int, *, to: tuple[str, str, int]
    ) -> int:
        """Append the stored bytes of a record to ``to`` = (zone, topic, partition)."""
        ...


@dataclass
class Sealed:
    """Encrypted zones of the backend under test, with what the tamper tests need."""

    zones: Zones
    wrap_only: Callable[[str, str], Backend]  # (zone, acting zone) → a writer that cannot read
    tamper: Tamper
    events: list[dict[str, object]]  # the backends' audit events (records withheld)


class SqliteTamper:
    """Edits the zone files with plain sqlite3 (the layout in ``_embedded.py``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _db(self, zone: str) -> sqlite3.Connection:
        return sqlite3.connect(self.root / f"{zone}.db", isolation_level=None)

    def change(self, zone: str, topic: str, partition: int, offset: int) -> int:
        db = self._db(zone)
        try:
            where = (topic, partition, offset)
            (value,) = db.execute(
                'SELECT value FROM records WHERE topic=? AND partition=? AND "offset"=?', where
            ).fetchone()
            changed = value[:-1] + bytes([value[-1] ^ 1])
            db.execute(
                'UPDATE records SET value=? WHERE topic=? AND partition=? AND "offset"=?',
                (changed, *where),
            )
        finally:
            db.close()
        return offset

    def copy(
        self, zone: str, topic: str, partition: int, offset: int, *, to: tuple[str, str, int]
    ) -> int:
        src = self._db(zone)
        try:
            row = src.execute(
                "SELECT key, value, headers, ts FROM records "
                'WHERE topic=? AND partition=? AND "offset"=?',
                (topic, partition, offset),
            ).fetchone()
        finally:
            src.close()
        to_zone, to_topic, to_partition = to
        dst = self._db(to_zone)
        try:
            dst.execute("BEGIN IMMEDIATE")
            (at,) = dst.execute(
                "SELECT next_offset FROM partitions WHERE topic=? AND partition=?",
                (to_topic, to_partition),
            ).fetchone()
            dst.execute(
                'INSERT INTO records (topic, partition, "offset", key, value, headers, ts) '
                "VALUES (?,?,?,?,?,?,?)",
                (to_topic, to_partition, at, *row),
            )
            dst.execute(
                "UPDATE partitions SET next_offset=? WHERE topic=? AND partition=?",
                (at + 1, to_topic, to_partition),
            )
            dst.execute("COMMIT")
        finally:
            dst.close()
        return int(at)


class BrokerTamper:
    """Writes on the broker with a plain admin client (Kafka records cannot be edited, so a
    changed record is a changed copy appended to the same partition)."""

    def __init__(self, cluster_of: Callable[[str], KafkaCluster], prefix: str) -> None:
        self.cluster_of = cluster_of
        self.prefix = prefix

    def _stored(self, zone: str, topic: str, partition: int, offset: int) -> Any:
        cluster = self.cluster_of(zone)
        name = self.prefix + topic
        partitions = partition + 1
        (msg,) = [
            m
            for m in raw_read(cluster, name, partitions)
            if (m.partition(), m.offset()) == (partition, offset)
        ]
        return msg

    def change(self, zone: str, topic: str, partition: int, offset: int) -> int:
        msg = self._stored(zone, topic, partition, offset)
        value = msg.value()
        changed = value[:-1] + bytes([value[-1] ^ 1])
        return raw_write(self.cluster_of(zone), self.prefix + topic, partition, msg, changed)

    def copy(
        self, zone: str, topic: str, partition: int, offset: int, *, to: tuple[str, str, int]
    ) -> int:
        msg = self._stored(zone, topic, partition, offset)
        to_zone, to_topic, to_partition = to
        cluster = self.cluster_of(to_zone)
        return raw_write(cluster, self.prefix + to_topic, to_partition, msg, msg.value())


@dataclass
class Opened:
    """Zones of one backend kind; ``wrap_only`` and ``tamper`` only where records are sealed."""

    zones: Zones
    events: list[dict[str, object]]
    wrap_only: Callable[[str, str], Backend] | None = None
    tamper: Tamper | None = None


@contextmanager
def open_zones(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    """Zones of backend ``kind``; every handle and key ring is closed on exit.

    ``-encrypted`` kinds seal records with real zone keys (:class:`ZoneKeys`), and send the
    backend's audit events (records withheld) to ``Opened.events``.
    """
    opened: list[Backend] = []
    events: list[dict[str, object]] = []
    keys: ZoneKeys | None = None
    if kind.endswith("-encrypted"):
        names = ("z", "a", "b", "restricted", "public")
        keys = ZoneKeys(tmp_path, dict.fromkeys(names, "restricted"))

    def audit(event: Mapping[str, object]) -> None:
        events.append(dict(event))

    def keep(backend: Backend) -> Backend:
        backend.open()
        opened.append(backend)
        return backend

    try:
        if kind.startswith("embedded"):

            def embedded(name: str, cipher: Any) -> Backend:
                return keep(
                    EmbeddedBackend(name, tmp_path / f"{name}.db", cipher=cipher, audit=audit)
                )

            def make(name: str = "z") -> Backend:
                return embedded(name, keys.cipher(name) if keys is not None else None)

            if keys is None:
                yield Opened(make, events)
            else:
                sealing = keys

                def writer(name: str, acting: str) -> Backend:
                    return embedded(name, sealing.wrap_only(name, acting=acting))

                yield Opened(make, events, writer, SqliteTamper(tmp_path))
            return

        factory = request.getfixturevalue("kafka_backend")
        cluster_list: list[KafkaCluster] = request.getfixturevalue("kafka_clusters")
        prefix: str = request.getfixturevalue("kafka_prefix")
        placement: dict[str, int] = {}

        def cluster_of(name: str) -> int:
            return placement.setdefault(name, len(placement) % len(cluster_list))

        if keys is None:

            def plain(name: str = "z") -> Backend:
                backend: Backend = factory(name, cluster=cluster_of(name))
                return backend

            yield Opened(plain, events)
            return
        sealing = keys

        def kafka(name: str, acting: str) -> Backend:
            cipher = (
                sealing.cipher(name) if acting == name else sealing.wrap_only(name, acting=acting)
            )
            return keep(
                KafkaBackend.from_connection(
                    name,
                    connection(cluster_list[cluster_of(name)]),
                    prefix=prefix,
                    timeout_s=20.0,
                    cipher=cipher,
                    key_secret=sealing.secret(name, acting=acting),
                    audit=audit,
                )
            )

        def sealed_make(name: str = "z") -> Backend:
            return kafka(name, name)

        tamper = BrokerTamper(lambda name: cluster_list[cluster_of(name)], prefix)
        yield Opened(sealed_make, events, kafka, tamper)
    finally:
        for backend in opened:
            backend.close()
        if keys is not None:
            keys.close()


@pytest.fixture(
    params=[
        "embedded",
        "embedded-encrypted",
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("kafka-encrypted", marks=pytest.mark.kafka),
    ]
)
def zones(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Zones]:
    """``zones(name)`` opens a handle on zone ``name`` of the backend under test.

    On the ``-encrypted`` kinds every record is sealed on produce and opened on read (real
    zone keys), and the contract must not change.
    """
    with open_zones(request.param, request, tmp_path) as opened:
        yield opened.zones


@pytest.fixture(
    params=["embedded-encrypted", pytest.param("kafka-encrypted", marks=pytest.mark.kafka)]
)
def sealed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sealed]:
    """Encrypted zones of each backend, for the tamper tests."""
    with open_zones(request.param, request, tmp_path) as opened:
        assert opened.wrap_only is not None and opened.tamper is not None
        yield Sealed(opened.zones, opened.wrap_only, opened.tamper, opened.events)


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


def test_commits_not_awaited_are_readable_after_await_visible(zones: Zones) -> None:
    # A writer that does not read its writes back at once (a flow) waits once, at the end.
    backend, other = zones("z"), zones("z")
    backend.ensure_topic("in", partitions=1)
    backend.ensure_topic("out", partitions=2)
    for i in range(3):
        with backend.transaction("step", visible=False) as tx:
            tx.produce("out", [NewRecord(value=b"%d" % i, partition=i % 2)])
            tx.store_offsets("g", "in", {0: i + 1})
    backend.await_visible()
    backend.await_visible()  # nothing left to wait for
    assert values(read_all(other, "out", 0)) == [b"0", b"2"]
    assert values(read_all(other, "out", 1)) == [b"1"]
    assert other.committed_offsets("g", "in") == {0: 3}


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


# -- records that do not decrypt ------------------------------------------------------------
# Sealed records bind zone, topic and partition (and the offset, or on Kafka a record id), so a
# changed or moved record does not open. It is withheld, never raised: the reader gets a
# stand-in at its offset carrying only the opaque message, the reason goes to the backend's
# audit callback, and reading goes on.
STAND_IN = (None, b"", (("tz.undecryptable", OPAQUE_MESSAGE.encode()),))
DOES_NOT_OPEN = (
    "record does not open here: changed, moved from another topic, partition or zone, or "
    "sealed under a key this zone does not hold"
)
PAN = b'{"card": "4111111111111111"}'


def contents(records: list[Record]) -> dict[int, tuple[bytes | None, bytes, tuple[Any, ...]]]:
    """Offset → (key, value, headers), checking the offsets come in order."""
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    return {r.offset: (r.key, r.value, r.headers) for r in records}


def withheld(zone: str, topic: str, partition: int, offset: int) -> dict[str, object]:
    return {
        "type": "streams.record_undecryptable",
        "zone": zone,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "reason": DOES_NOT_OPEN,
    }


def test_a_changed_record_is_withheld_and_the_reader_goes_on(sealed: Sealed) -> None:
    backend = sealed.zones("z")
    backend.ensure_topic("t", partitions=2)
    headers = (("trace", b"1"),)
    first = backend.produce(
        "t", [NewRecord(key=b"k%d" % i, value=PAN, headers=headers, partition=0) for i in range(2)]
    )
    bad = sealed.tamper.change("z", "t", 0, first[1].offset)
    [after] = backend.produce("t", [NewRecord(key=b"k2", value=b"after", partition=0)])
    expected = {p.offset: (b"k%d" % i, PAN, headers) for i, p in enumerate(first)}
    expected[bad] = STAND_IN
    expected[after.offset] = (b"k2", b"after", ())

    assert contents(read_all(backend, "t", 0)) == expected
    consumer = backend.consumer("t", start="earliest")
    assert contents(list(consumer.iter_until_end())) == expected
    assert consumer.lag() == 0
    # Another handle on the zone (a restarted reader) withholds it too.
    assert contents(read_all(sealed.zones("z"), "t", 0)) == expected
    assert sealed.events == [withheld("z", "t", 0, bad)] * 3


def test_a_record_moved_to_another_partition_topic_or_zone_is_withheld(sealed: Sealed) -> None:
    a, b = sealed.zones("a"), sealed.zones("b")
    a.ensure_topic("t", partitions=2)
    a.ensure_topic("u", partitions=1)
    b.ensure_topic("t", partitions=2)
    [original] = a.produce("t", [NewRecord(key=b"k", value=PAN, partition=0)])
    moves = {
        ("a", "t", 1): sealed.tamper.copy("a", "t", 0, original.offset, to=("a", "t", 1)),
        ("a", "u", 0): sealed.tamper.copy("a", "t", 0, original.offset, to=("a", "u", 0)),
        ("b", "t", 0): sealed.tamper.copy("a", "t", 0, original.offset, to=("b", "t", 0)),
    }
    backends = {"a": a, "b": b}
    good = {
        where: backends[where[0]].produce(
            where[1], [NewRecord(key=b"k", value=b"after", partition=where[2])]
        )[0]
        for where in moves
    }
    for (zone, topic, partition), offset in moves.items():
        got = contents(read_all(backends[zone], topic, partition))
        assert got == {
            offset: STAND_IN,
            good[zone, topic, partition].offset: (b"k", b"after", ()),
        }
    # The original still opens where it was written.
    assert contents(read_all(a, "t", 0)) == {original.offset: (b"k", PAN, ())}
    assert sealed.events == [withheld(*where, offset) for where, offset in moves.items()]


def test_a_wrap_only_writer_may_write_but_never_read(sealed: Sealed) -> None:
    """A flow acting for ``restricted`` writes into ``public``: it seals, it cannot open, and
    that is a refusal (a misuse), not a record withheld."""
    reader = sealed.zones("public")
    reader.ensure_topic("t", partitions=1)
    writer = sealed.wrap_only("public", "restricted")
    message = "this process may write to zone 'public' but not read it (wrap-only keys)"
    with pytest.raises(KeyAccessDenied, match=f"^{re.escape(message)}$"):
        writer.fetch("t", 0, 0)
    writer.produce("t", [NewRecord(key=b"k", value=b"down")])
    with pytest.raises(KeyAccessDenied, match=f"^{re.escape(message)}$"):
        writer.fetch("t", 0, 0)
    with pytest.raises(KeyAccessDenied, match=f"^{re.escape(message)}$"):
        writer.consumer("t").poll()
    assert [(r.key, r.value) for r in read_all(reader, "t", 0)] == [(b"k", b"down")]
    assert sealed.events == []
