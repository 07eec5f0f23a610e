"""Encryption at rest on Kafka zones, checked on a real broker.

The broker's view is read with plain confluent-kafka clients (not trustzones): they must find
neither the card number nor the real key. Copies made on the broker by an admin (into another
partition, topic or zone, or changed) must not open: trustzones returns a stand-in carrying
the one opaque error, audits the reason, and reads on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_raw import raw_read, raw_write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zone_keys import ZoneKeys

from kafka_fixtures import KafkaCluster, connection
from trustzones.errors import KeyAccessDenied, TrustzonesError
from trustzones.keys._errors import OPAQUE_MESSAGE
from trustzones.streams._kafka import ENVELOPE_MAGIC, UNDECRYPTABLE_HEADER, KafkaBackend
from trustzones.streams._partition import partition_for
from trustzones.streams.base import NewRecord, Record

pytestmark = pytest.mark.kafka

PAN = b"4111111111111111"
STAND_IN = (UNDECRYPTABLE_HEADER, OPAQUE_MESSAGE.encode())
HEADER_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[ZoneKeys]:
    k = ZoneKeys(tmp_path, {"payments": "restricted", "cards": "restricted", "analytics": "public"})
    yield k
    k.close()


class Sealed:
    """Encrypted Kafka zones on cluster 0 under this test's prefix (one prefix per zone)."""

    def __init__(self, cluster: KafkaCluster, prefix: str, keys: ZoneKeys) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self.keys = keys
        self.events: list[dict[str, object]] = []
        self.opened: list[KafkaBackend] = []

    def zone(self, zone: str, *, acting: str | None = None) -> KafkaBackend:
        acting = acting or zone
        cipher = self.keys.cipher(zone) if acting == zone else None
        backend = KafkaBackend.from_connection(
            zone,
            connection(self.cluster),
            prefix=f"{self.prefix}{zone}.",
            timeout_s=20.0,
            cipher=cipher or self.keys.wrap_only(zone, acting=acting),
            key_secret=self.keys.secret(zone, acting=acting),
            audit=lambda e: self.events.append(dict(e)),
        )
        backend.open()
        self.opened.append(backend)
        return backend

    def name(self, zone: str, topic: str) -> str:
        return f"{self.prefix}{zone}.{topic}"


@pytest.fixture
def sealed(
    kafka_clusters: list[KafkaCluster], kafka_prefix: str, keys: ZoneKeys
) -> Iterator[Sealed]:
    s = Sealed(kafka_clusters[0], kafka_prefix, keys)
    yield s
    for backend in s.opened:
        backend.close()


def read_all(backend: KafkaBackend, topic: str, partition: int) -> list[Record]:
    out: list[Record] = []
    offset = 0
    while batch := backend.fetch(topic, partition, offset, max_records=100):
        out += batch
        offset = batch[-1].offset + 1
    return out


def test_a_plain_client_finds_no_card_number_and_no_key_on_the_broker(
    sealed: Sealed,
) -> None:
    payments = sealed.zone("payments")
    payments.ensure_topic("transactions", partitions=3)
    headers = (("tz.producer", b"checkout"), ("pan", PAN))
    value = b'{"card": {"number": "' + PAN + b'"}, "amount": 12}'
    keys = [PAN, PAN, b"4000056655665556", None]
    written = payments.produce(
        "transactions", [NewRecord(key=k, value=value, headers=headers) for k in keys]
    )
    with payments.transaction("tx") as tx:
        tx.produce("transactions", [NewRecord(key=PAN, value=value, headers=headers)])
    # Partitioning follows the real key (Kafka's murmur2), as on an unencrypted zone.
    assert [p.partition for p in written[:3]] == [partition_for(k, 3) for k in keys[:3]]  # type: ignore[arg-type]

    raw = raw_read(sealed.cluster, sealed.name("payments", "transactions"), 3)
    assert len(raw) == 5
    for msg in raw:
        assert PAN not in msg.value() and b"4000056655665556" not in msg.value()
        assert b"checkout" not in msg.value() and b"amount" not in msg.value()
        assert msg.value().startswith(ENVELOPE_MAGIC)
        assert msg.headers() is None
    broker_keys = [m.key() for m in raw if m.key() is not None]
    assert len(broker_keys) == 4
    assert all(len(k) == 16 and PAN not in k for k in broker_keys)
    # Equal real keys have equal pseudonyms (compaction and tooling still group them).
    by_partition = {m.partition(): m.key() for m in raw if m.key() is not None}
    assert len(set(broker_keys)) == 2
    assert by_partition[partition_for(PAN, 3)] in broker_keys

    expected = sorted([(k or b"", value, headers) for k in keys] + [(PAN, value, headers)])
    back = [r for p in range(3) for r in read_all(payments, "transactions", p)]
    assert sorted((r.key or b"", r.value, r.headers) for r in back) == expected
    # What a plain client read opens too (how an exactly-once check reads a sealed zone).
    opened = [
        payments.unseal(
            Record("transactions", m.partition(), m.offset(), m.key(), m.value(), (), 0)
        )
        for m in raw
    ]
    assert sorted((r.key or b"", r.value, r.headers) for r in opened) == expected
    assert not sealed.events


def test_records_moved_changed_or_written_in_plaintext_fail_closed(
    sealed: Sealed, kafka_clusters: list[KafkaCluster]
) -> None:
    payments, cards = sealed.zone("payments"), sealed.zone("cards")
    for backend in (payments, cards):
        backend.ensure_topic("t", partitions=2)
    payments.ensure_topic("u", partitions=1)
    payments.produce("t", [NewRecord(key=b"k", value=PAN, partition=0)])
    (original,) = raw_read(sealed.cluster, sealed.name("payments", "t"), 2)
    value = original.value()
    tampered = value[:-1] + bytes([value[-1] ^ 1])
    t0, t1 = sealed.name("payments", "t"), sealed.name("payments", "u")
    raw_write(sealed.cluster, sealed.name("payments", "t"), 1, original, value)  # other partition
    raw_write(sealed.cluster, t1, 0, original, value)  # other topic
    raw_write(sealed.cluster, sealed.name("cards", "t"), 0, original, value)  # other zone
    raw_write(sealed.cluster, t0, 0, original, tampered)  # changed
    raw_write(sealed.cluster, t0, 0, None, PAN)  # plaintext from a non-trustzones client
    raw_write(sealed.cluster, t0, 0, original, value)  # replay in place: opens (see docstring)
    payments.produce("t", [NewRecord(key=b"k", value=b"after", partition=0)])

    def stand_in(topic: str, partition: int, offset: int) -> Record:
        return Record(topic, partition, offset, None, b"", (STAND_IN,), 0)

    def shape(records: list[Record]) -> list[tuple[Any, ...]]:
        return [(r.topic, r.partition, r.offset, r.key, r.value, r.headers) for r in records]

    assert shape(read_all(payments, "t", 1)) == shape([stand_in("t", 1, 0)])
    assert shape(read_all(payments, "u", 0)) == shape([stand_in("u", 0, 0)])
    assert shape(read_all(cards, "t", 0)) == shape([stand_in("t", 0, 0)])
    # The reader goes on past every bad record to the good ones after them.
    assert [(r.offset, r.key, r.value) for r in read_all(payments, "t", 0)] == [
        (0, b"k", PAN),
        (1, None, b""),
        (2, None, b""),
        (3, b"k", PAN),
        (4, b"k", b"after"),
    ]
    consumer = payments.consumer("t", start="earliest")
    seen = sorted((r.partition, r.offset, r.value) for r in consumer.iter_until_end())
    assert seen == [
        (0, 0, PAN),
        (0, 1, b""),
        (0, 2, b""),
        (0, 3, PAN),
        (0, 4, b"after"),
        (1, 0, b""),
    ]
    assert consumer.lag() == 0

    reasons = [
        (e["zone"], e["topic"], e["partition"], e["offset"], e["reason"]) for e in sealed.events[:5]
    ]
    moved = (
        "record does not open here: changed, moved from another topic, partition or zone, or "
        "sealed under a key this zone does not hold"
    )
    assert reasons == [
        ("payments", "t", 1, 0, moved),
        ("payments", "u", 0, 0, moved),
        ("cards", "t", 0, 0, moved),
        ("payments", "t", 0, 1, moved),
        ("payments", "t", 0, 2, "record is not a trustzones envelope (plaintext?)"),
    ]
    assert all(e["type"] == "streams.record_undecryptable" for e in sealed.events)
    assert not any(PAN in repr(e).encode() for e in sealed.events)
    # The keys part audited its own side of each failed decryption.
    assert any(e["type"] == "keys.decryption_failed" for e in sealed.keys.events)


def test_a_wrap_only_writer_can_seal_for_a_zone_but_not_read_it(sealed: Sealed) -> None:
    """A flow in payments writes down into analytics: it seals, it cannot open."""
    analytics = sealed.zone("analytics")
    analytics.ensure_topic("transactions", partitions=2)
    writer = sealed.zone("analytics", acting="payments")
    writer.produce("transactions", [NewRecord(key=b"c1", value=b'{"n": 1}')])
    with writer.transaction("flow") as tx:
        tx.produce("transactions", [NewRecord(key=b"c1", value=b'{"n": 2}')])
        tx.store_offsets("flow", "payments.transactions", {0: 2})
    message = "this process may write to zone 'analytics' but not read it (wrap-only keys)"
    with pytest.raises(KeyAccessDenied, match=message.replace("(", r"\(").replace(")", r"\)")):
        writer.fetch("transactions", 0, 0)
    with pytest.raises(KeyAccessDenied, match="wrap-only keys"):
        writer.consumer("transactions").poll()
    p = partition_for(b"c1", 2)
    assert [(r.key, r.value) for r in read_all(analytics, "transactions", p)] == [
        (b"c1", b'{"n": 1}'),
        (b"c1", b'{"n": 2}'),
    ]
    assert writer.committed_offsets("flow", "payments.transactions") == {0: 2}
    assert not sealed.events


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=40)),
            st.binary(max_size=300),
            st.lists(st.tuples(HEADER_NAMES, st.binary(max_size=20)), max_size=3),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_any_record_round_trips_sealed(
    sealed: Sealed, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    payments = sealed.opened[0] if sealed.opened else sealed.zone("payments")
    payments.ensure_topic("round-trip", partitions=3)
    ends = payments.end_offsets("round-trip")
    new = [NewRecord(key=k, value=v, headers=tuple(h)) for k, v, h in records]
    positions = payments.produce("round-trip", new)
    for record, pos in zip(new, positions, strict=True):
        if record.key is not None:
            assert pos.partition == partition_for(record.key, 3)
        (back,) = payments.fetch("round-trip", pos.partition, pos.offset, max_records=1)
        assert (back.key, back.value, back.headers) == (record.key, record.value, record.headers)
    assert sum(payments.end_offsets("round-trip").values()) - sum(ends.values()) == len(new)
    assert not sealed.events


def test_a_cipher_needs_a_key_secret(keys: ZoneKeys) -> None:
    message = (
        "zone 'payments': an encrypted Kafka zone needs a key_secret of at least 16 bytes for "
        "the pseudonyms of record keys"
    )
    with pytest.raises(TrustzonesError, match=message):
        KafkaBackend(
            "payments", bootstrap="127.0.0.1:1", username="u", cipher=keys.cipher("payments")
        )
    with pytest.raises(TrustzonesError, match=message):
        KafkaBackend(
            "payments",
            bootstrap="127.0.0.1:1",
            username="u",
            cipher=keys.cipher("payments"),
            key_secret=b"short",
        )
