"""The broker's own view of a topic, through plain confluent-kafka clients (not trustzones),
logged in as the cluster's admin: how the tests read what is stored and tamper with it, as
someone with broker access would."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from kafka_fixtures import KafkaCluster


def plain_config(cluster: KafkaCluster) -> dict[str, Any]:
    """A plain client logged in as the cluster's admin (it may read everything)."""
    return {**cluster.client_config(), "log_level": 0}


def raw_read(cluster: KafkaCluster, topic: str, partitions: int) -> list[Any]:
    """Every message of ``topic`` as the broker stores it, read by a plain consumer."""
    consumer = Consumer(
        {
            **plain_config(cluster),
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[Any] = []
        at_end: set[int] = set()
        while len(at_end) < partitions:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                at_end.add(msg.partition())
            else:
                raise AssertionError(f"raw read of {topic}: {err}")
        return out
    finally:
        consumer.close()


def raw_write(cluster: KafkaCluster, topic: str, partition: int, msg: Any, value: bytes) -> int:
    """Write ``value`` with ``msg``'s key and headers into ``topic``/``partition`` (an admin
    with a plain producer, as someone tampering with the broker would); returns its offset."""
    producer = Producer(plain_config(cluster))
    delivered: list[tuple[Any, Any]] = []
    producer.produce(
        topic,
        value=value,
        key=msg.key() if msg is not None else None,
        partition=partition,
        on_delivery=lambda err, m: delivered.append((err, m)),
    )
    assert producer.flush(20) == 0
    ((err, written),) = delivered
    assert err is None
    offset: int = written.offset()
    return offset
