"""The Kafka backend's per-record paths: header blocks, batch sealing, opening, delivery reports.

Most of these need no broker: a fake producer records what the backend hands librdkafka, and
the envelopes are opened with the zone's real keys. The last test checks on a real broker what
the transactional path relies on: a record the broker refuses fails the whole transaction,
whether or not it had a delivery report of its own.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from zone_keys import ZoneKeys

from kafka_fixtures import BackendFactory, KafkaCluster
from trustzones.errors import TransactionAborted
from trustzones.streams._kafka import (
    ENVELOPE_MAGIC,
    UNDECRYPTABLE_HEADER,
    KafkaBackend,
)
from trustzones.streams._partition import partition_for
from trustzones.streams.base import NewRecord

TOPIC = "cards"


class FakeProducer:
    """Records each ``produce`` call as librdkafka would get it."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))

    def poll(self, timeout: float = 0) -> int:
        return 0


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[ZoneKeys]:
    k = ZoneKeys(tmp_path, {"payments": "restricted", "analytics": "public"})
    yield k
    k.close()


def offline(keys: ZoneKeys, zone: str, *, partitions: int = 3, **kw: Any) -> KafkaBackend:
    """An encrypted backend that never connects: it knows ``TOPIC``'s partition count."""
    backend = KafkaBackend(
        zone,
        bootstrap="127.0.0.1:1",
        username="u",
        password="p",
        prefix="x.",
        cipher=keys.cipher(zone),
        key_secret=keys.secret(zone),
        **kw,
    )
    backend._partitions["x." + TOPIC] = partitions
    return backend


def reports(producer: FakeProducer) -> list[int]:
    return [i for i, (_, kw) in enumerate(producer.calls) if "on_delivery" in kw]


def test_a_batch_is_sealed_as_records_one_at_a_time_were(keys: ZoneKeys) -> None:
    events: list[dict[str, object]] = []
    backend = offline(keys, "payments", audit=lambda e: events.append(dict(e)))
    records = [
        NewRecord(b'{"n": %d}' % i, key, headers, partition=partition)
        for i, (key, headers, partition) in enumerate(
            [
                (b"c1", (("tz.producer", b"svc"), ("tz.time", b"t0")), None),
                (None, (), None),
                (b"c2", (("tz.producer", b"svc"), ("tz.time", b"t0")), None),
                (b"c1", (), 2),
                (None, (("a", b""),), 0),
                (b"c3" * 40, (("tz.producer", b"svc"), ("tz.time", b"t0")), None),
            ]
        )
    ]
    producer = FakeProducer()
    backend._send_all(producer, TOPIC, records, lambda i: lambda e, m: None, last_only=True)  # type: ignore[arg-type]
    secret = keys.secret("payments")
    reader = backend._reader()
    last: dict[int, int] = {}
    rids = set()
    for i, ((args, kw), record) in enumerate(zip(producer.calls, records, strict=True)):
        name, value, broker_key, partition = args
        assert name == "x." + TOPIC and "headers" not in kw  # the broker sees no headers
        if record.partition is not None:
            assert partition == record.partition
        elif record.key is not None:
            assert partition == partition_for(record.key, 3)
        if record.key is None:
            assert broker_key is None
        else:
            assert broker_key == hmac.new(secret, record.key, hashlib.sha256).digest()[:16]
        assert value.startswith(ENVELOPE_MAGIC)
        rids.add(value[4:20])
        last[partition] = i
        back = backend._open_value(reader, TOPIC, partition, 100 + i, value, 7)
        assert (back.key, back.value, back.headers) == (record.key, record.value, record.headers)
        assert (back.topic, back.partition, back.offset, back.timestamp_ms) == (
            TOPIC,
            partition,
            100 + i,
            7,
        )
        # Bound to its partition: elsewhere it does not open (stand-in, reason audited).
        moved = backend._open_value(reader, TOPIC, (partition + 1) % 3, 5, value, 7)
        assert moved.headers[0][0] == UNDECRYPTABLE_HEADER and moved.value == b""
    assert len(rids) == len(records)  # a fresh record id each
    assert len(events) == len(records)
    # In a transaction only the last record of each partition reports its delivery.
    assert reports(producer) == sorted(last.values())
    # The single-record path seals the same way.
    broker_key, value, partition = backend._seal(backend._reader(), TOPIC, records[0])
    assert broker_key == hmac.new(secret, b"c1", hashlib.sha256).digest()[:16]
    opened = backend._open_value(reader, TOPIC, partition, 1, value, 0)
    assert (opened.key, opened.value, opened.headers) == (
        records[0].key,
        records[0].value,
        records[0].headers,
    )


def test_outside_a_transaction_every_record_reports_and_unencrypted_ones_keep_headers() -> None:
    backend = KafkaBackend("plain", bootstrap="127.0.0.1:1", username="u", password="p")
    backend._partitions[TOPIC] = 3
    records = [
        NewRecord(b"a", b"k", (("h", b"1"),)),
        NewRecord(b"b", None, (), partition=1),
        NewRecord(b"c", b"k", (), timestamp_ms=1234),
    ]
    producer = FakeProducer()
    made: list[int] = []

    def delivered(i: int) -> Any:
        made.append(i)
        return lambda e, m: None

    backend._send_all(producer, TOPIC, records, delivered, last_only=False)
    assert made == reports(producer) == [0, 1, 2]
    (a0, k0), (a1, _), (a2, k2) = producer.calls
    assert a0 == (TOPIC, b"a", b"k", -1) and k0["headers"] == [("h", b"1")]
    assert a1 == (TOPIC, b"b", None, 1)
    assert a2 == (TOPIC, b"c", b"k", -1) and k2["timestamp"] == 1234
    # In a transaction, records whose partition librdkafka picks each report; a known
    # partition reports once, on its last record.
    producer, made = FakeProducer(), []
    backend._send_all(producer, TOPIC, records, delivered, last_only=True)
    assert made == reports(producer) == [0, 1, 2]
    records.append(NewRecord(b"d", None, (), partition=1))
    producer, made = FakeProducer(), []
    backend._send_all(producer, TOPIC, records, delivered, last_only=True)
    assert made == reports(producer) == [0, 2, 3]


@pytest.mark.kafka
def test_a_record_the_broker_refuses_aborts_its_transaction_and_the_next_one_works(
    kafka_backend: BackendFactory, kafka_clusters: list[KafkaCluster]
) -> None:
    """Only the last record of each partition has a delivery report: a refused record before
    it must still abort everything (librdkafka fails the commit). The producer is replaced
    afterwards, so the next transaction with the same id commits."""
    prefix = f"hp{uuid.uuid4().hex[:8]}."
    backend = kafka_backend(prefix=prefix)
    admin = AdminClient({**kafka_clusters[0].client_config(), "log_level": 0})
    topic = NewTopic(prefix + "small", num_partitions=2, config={"max.message.bytes": "2048"})
    for future in admin.create_topics([topic]).values():
        future.result()
    records = (
        [NewRecord(b"a" * 50, partition=0) for _ in range(3)]
        + [NewRecord(b"x" * 8000, partition=0)]  # more than the topic takes
        + [NewRecord(b"b" * 50, partition=0) for _ in range(3)]
        + [NewRecord(b"c" * 50, partition=1) for _ in range(3)]
    )
    with pytest.raises(TransactionAborted, match="nothing it wrote is visible"):
        with backend.transaction("refused") as tx:
            tx.produce("small", records)
    assert [backend.fetch("small", p, 0) for p in range(2)] == [[], []]
    with backend.transaction("refused") as tx:
        tx.produce("small", [NewRecord(b"ok0", partition=0), NewRecord(b"ok1", partition=1)])
    assert [[r.value for r in backend.fetch("small", p, 0)] for p in range(2)] == [
        [b"ok0"],
        [b"ok1"],
    ]
