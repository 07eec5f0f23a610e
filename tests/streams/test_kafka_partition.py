"""Kafka's murmur2 key partitioner: our implementation, librdkafka's and a real producer agree."""

from __future__ import annotations

import random
import subprocess
import sys

import confluent_kafka
import pytest

from kafka_fixtures import BackendFactory
from trustzones.streams import _partition
from trustzones.streams._partition import murmur2, partition_for
from trustzones.streams.base import NewRecord

# Apache Kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafkas_test_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def _keys(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    keys = [b"", b"\x00", b"\xff" * 3, b"\x80\x81\x82\x83\x84"]
    keys += [rng.randbytes(rng.randrange(0, 41)) for _ in range(n)]
    return keys


def test_partition_for_agrees_with_librdkafka_for_many_keys() -> None:
    # confluent_kafka.murmur2 is librdkafka's Java-compatible partitioner, a second
    # implementation written independently of ours, and the one partition_for uses for
    # bytes keys when it is installed: both must agree with our reference.
    for key in _keys(5000, seed=8):
        for n in (1, 2, 3, 7, 12, 50, 1000):
            reference = (murmur2(key) & 0x7FFFFFFF) % n
            assert confluent_kafka.murmur2(key, n) == reference, (key, n)
            assert partition_for(key, n) == reference, (key, n)
            assert partition_for(bytearray(key), n) == reference, (key, n)  # never librdkafka


def test_partition_for_asks_librdkafka_for_bytes_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[bytes, int]] = []

    def fast(key: bytes, n: int) -> int:
        asked.append((key, n))
        return confluent_kafka.murmur2(key, n)

    monkeypatch.setattr(_partition, "_fast", fast)
    assert partition_for(b"foobar", 12) == 6
    assert partition_for(bytearray(b"foobar"), 12) == 6
    assert asked == [(b"foobar", 12)]
    monkeypatch.setattr(_partition, "_fast", None)  # without confluent-kafka
    assert [partition_for(k, 12) for k in KAFKA_VECTORS] == [
        (v & 0x7FFFFFFF) % 12 for v in KAFKA_VECTORS.values()
    ]


def test_partition_for_needs_a_partition() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_for(b"k", 0)


@pytest.mark.kafka
def test_the_kafka_producer_places_keys_where_partition_for_says(
    kafka_backend: BackendFactory,
) -> None:
    backend = kafka_backend()
    backend.ensure_topic("keys", partitions=13)
    keys = _keys(3000, seed=9)
    positions = backend.produce("keys", [NewRecord(key=k, value=b"") for k in keys])
    placed = [p.partition for p in positions]
    assert placed == [partition_for(k, 13) for k in keys]
    assert set(placed) == set(range(13))


def test_importing_trustzones_leaves_confluent_kafka_unimported() -> None:
    # A workspace without Kafka zones does not pay for importing confluent-kafka (~40-70 ms):
    # partition_for looks librdkafka's partitioner up on first use.
    code = (
        "import sys, trustzones.cli, trustzones.streams._partition\n"
        "sys.exit('confluent_kafka' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=120).returncode == 0
