"""The Apache Kafka backend: a zone is a Kafka cluster, or a virtual cluster on a shared one.

Example (against a broker started by ``python scripts/kafka.py start``)::

    from trustzones.streams import NewRecord
    from trustzones.streams._kafka import KafkaBackend

    with KafkaBackend("analytics", bootstrap="127.0.0.1:9092",
                      username="svc-analytics", password="...") as backend:
        backend.ensure_topic("clicks", partitions=3)
        backend.produce("clicks", [NewRecord(key=b"u1", value=b'{"page": "/"}')])
        records = backend.fetch("clicks", partition=0, offset=0)

How the :class:`~trustzones.streams.base.Backend` contract maps onto Kafka:

- **Names.** A non-empty ``prefix`` makes the zone a virtual cluster: every topic, consumer
  group and transactional id gets the prefix (``"payments."`` + ``"cards"``), and the zone sees
  only its own topics. ACLs on the prefix isolate zones that share a cluster.
- **produce** uses an idempotent producer with ``acks=all`` and librdkafka's
  ``murmur2_random`` partitioner, so a keyed record lands in the partition
  :func:`~trustzones.streams._partition.partition_for` names, as on the embedded backend. Each
  record is durable when ``produce`` returns, but Kafka has no atomic multi-record append
  outside a transaction: if some records fail, :class:`ProduceFailed` says which were written.
  Use :meth:`KafkaBackend.transaction` for all-or-nothing writes.
- **Offsets** grow but are not contiguous once transactions are used: every commit or abort
  writes a control record that takes an offset, and aborted records keep theirs. Readers use
  ``isolation.level=read_committed`` and never see either.
- **Transactions** use one transactional producer per transactional id, kept for the life of
  the backend; creating it calls ``init_transactions``, which fences a zombie with the same id.
- **Offsets of a topic in another zone** (a flow's source position, stored in its destination
  in the same transaction as the records; Kafka Connect's exactly-once source pattern): a Kafka
  transaction can only commit offsets of its own cluster, so they are committed for the same
  group against an *anchor* topic ``<prefix>__tz-offsets.<topic>`` (no records, one partition
  per source partition) with a "simple" group generation of -1. ``committed_offsets`` reads them
  back, so a restarted flow resumes from the destination's checkpoint.

Encryption at rest (``cipher=``, what a zone with ``controls.encryption_at_rest`` gets): every
record is stored as an envelope that the broker cannot read.

- **Value** on the broker: ``b"TZK1"`` + a random 16-byte record id + the zone cipher's
  ciphertext (:mod:`trustzones.keys`: per-zone KEK, rotating data keys, AES-256-GCM) of the
  record's real key, headers and value together. The broker sees no headers.
- **Associated data** binds zone, topic (the zone's name for it, without the prefix), partition
  and the record id. Kafka assigns the offset only after the record is written, so the offset
  cannot be bound; the record id stands in for it.
- **Key** on the broker: ``HMAC-SHA256(secret, key)[:16]``, a pseudonym, so a card number used
  as a key never reaches the broker, while equal keys still look equal there (compaction keeps
  working for records of one writer). The secret is derived from the *writer's* zone keys,
  because a flow writing down holds only a wrap-only cipher for its destination and no secret
  of that zone: records a flow writes and records the zone's own producers write get different
  pseudonyms for the same key. Readers never trust the broker key; the real one is inside the
  envelope.
- **Partition**: chosen by trustzones before sealing (it is bound): a keyed record goes to
  ``partition_for(real key)``, Kafka's murmur2 of the real key, exactly as on an unencrypted
  zone or the embedded backend, so per-key ordering holds across writers. The partition number
  reveals a few bits of a non-cryptographic hash of the key; that is all the broker learns.

What this prevents: reading records, keys and headers from the broker's disks, its logs, a
mirror or a plain client with READ access; changing a record (or its partition, topic or zone)
without detection: a record copied into another topic, partition or zone does not open there.
What it does not prevent: **replay** of a whole record within the same partition (the copy has
the same record id and opens; readers that care deduplicate by content or by a business id),
deletion, truncation (retention, ``DeleteRecords``) or reordering inside a partition, and
changes to the Kafka timestamp (not bound, as Kafka's retention uses it). Partition counts,
record sizes, timing and key equality stay visible.

A record that does not open (tampered, moved, written in plaintext by a non-trustzones client,
or its data key unknown here) never stops a reader: ``fetch`` and consumers return it in its
place as a record with ``key=None``, ``value=b""`` and the single header
:data:`UNDECRYPTABLE_HEADER` holding the one opaque message of
:class:`~trustzones.errors.DecryptionFailed`; the reason, with topic, partition and offset, goes
to the ``audit`` callback (event ``streams.record_undecryptable``). A flow then quarantines it
(not valid JSON) and moves on, so every record is still accounted for. A backend given a
wrap-only cipher (a flow writing down) may produce but not read: reading raises
:class:`~trustzones.errors.KeyAccessDenied`.

The data keys' wrapped copies live in the zone's key table (``<data dir>/<zone>.keys.db``), a
local SQLite file: every process that reads or writes an encrypted Kafka zone must see the same
key table (one host, or a shared volume).

Errors from librdkafka become :mod:`trustzones.errors` types (``UnknownTopic``,
``AccessDenied`` for broker ACL denials, ``AuthenticationFailed``, ``TransactionAborted``,
:class:`~trustzones.streams._kafka_admin.KafkaUnavailable`); messages never contain passwords.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import struct
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from pydantic import SecretStr

from trustzones.errors import (
    AccessDenied,
    DecryptionFailed,
    KeyAccessDenied,
    StreamError,
    TransactionAborted,
    TrustzonesError,
    UnknownTopic,
)
from trustzones.streams._embedded import (
    _SEALED_HEAD,
    RecordCipher,
    RecordSealer,
    _HeaderCodec,
)
from trustzones.streams._kafka_admin import (
    KafkaConnection,
    KafkaUnavailable,
    SaslMechanism,
    SecurityProtocol,
    _ErrorLog,
    translate_kafka_error,
)
from trustzones.streams._partition import partition_for
from trustzones.streams.base import (
    UNDECRYPTABLE_HEADER,
    Backend,
    Consumer,
    Header,
    NewRecord,
    Record,
    RecordAudit,
    RecordPosition,
    StartFrom,
    Transaction,
    withhold,
)

try:
    from confluent_kafka import Consumer as RdConsumer
    from confluent_kafka import (
        IsolationLevel,
        KafkaError,
        KafkaException,
        Message,
        Producer,
        TopicPartition,
    )
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # implicit re-exports
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
        OffsetSpec,
        ResourceType,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "The Kafka backend needs confluent-kafka: pip install 'trustzones[kafka]'"
    ) from exc

__all__ = [
    "ANCHOR_PREFIX",
    "ENVELOPE_MAGIC",
    "UNDECRYPTABLE_HEADER",
    "KafkaBackend",
    "ProduceFailed",
    "RecordAudit",
]

ENVELOPE_MAGIC = b"TZK1"
"""First bytes of a sealed record's value on the broker (format version 1)."""
_RID_BYTES = 16
_BROKER_KEY_BYTES = 16
_RID_AT = len(ENVELOPE_MAGIC)
_SEALED_AT = _RID_AT + _RID_BYTES
#: A ``Record`` from its fields without the named tuple's ``__new__`` frame (read hot path).
_new_record = tuple.__new__
_log = logging.getLogger("trustzones.streams.kafka")

ANCHOR_PREFIX = "__tz-offsets."
"""Name prefix (after the zone prefix) of the offsets anchor topics; hidden from list_topics."""

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_TXN_RETRY_BACKOFF_MS = 10  # see _txn_producer
_COORDINATOR_BUSY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError.REBALANCE_IN_PROGRESS,
    }
)
_LEADER_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.FENCED_LEADER_EPOCH,
    }
)


class ProduceFailed(StreamError):
    """Some records of a ``produce`` call were not written.

    ``positions[i]`` is where record ``i`` was written, or ``None`` if it was not (or its
    fate is unknown because the broker did not answer in time).
    """

    def __init__(self, message: str, positions: list[RecordPosition | None]) -> None:
        self.positions = positions
        super().__init__(message)


class KafkaBackend(Backend):
    """One zone on Apache Kafka. Constructing it does no I/O; :meth:`open` connects."""

    def __init__(
        self,
        zone: str,
        *,
        bootstrap: str,
        username: str | None = None,
        password: SecretStr | str | None = None,
        prefix: str = "",
        security_protocol: SecurityProtocol = "SASL_PLAINTEXT",
        sasl_mechanism: SaslMechanism = "SCRAM-SHA-512",
        client_config: Mapping[str, str] | None = None,
        timeout_s: float = 30.0,
        linger_ms: int = 5,
        cipher: RecordSealer | None = None,
        key_secret: bytes | None = None,
        audit: RecordAudit | None = None,
    ) -> None:
        """``cipher`` seals records at rest (a :class:`RecordCipher` also opens them; a
        wrap-only sealer may only write); ``key_secret`` (≥ 16 bytes, required with a cipher)
        keys the HMAC pseudonyms of record keys on the broker; ``audit`` receives the reasons
        records did not open."""
        if prefix and not _TOPIC_NAME.fullmatch(prefix):
            raise TrustzonesError(
                f"zone {zone!r}: Kafka prefix {prefix!r} may only use letters, digits, '.', '_' "
                "and '-'"
            )
        if cipher is not None and (key_secret is None or len(key_secret) < 16):
            raise TrustzonesError(
                f"zone {zone!r}: an encrypted Kafka zone needs a key_secret of at least 16 "
                "bytes for the pseudonyms of record keys"
            )
        self.zone = zone
        self.prefix = prefix
        self._cipher = cipher
        self._key_secret = key_secret or b""
        self._pseudonym: Callable[[bytes], bytes] = _no_pseudonym
        if cipher is not None:
            # HMAC-SHA-256 under the key secret, its key schedule computed once (the native
            # core's when installed): a record key's pseudonym on the broker.
            from trustzones.dlp._keyed import hmac_sha256

            self._pseudonym = hmac_sha256(self._key_secret)
        self._headers = _HeaderCodec()
        self._aad_prefixes: dict[tuple[str, int], bytes] = {}
        self._audit = audit
        self._rr = itertools.count()
        self.connection = KafkaConnection(
            bootstrap,
            username=username,
            password=SecretStr(password) if isinstance(password, str) else password,
            security_protocol=security_protocol,
            sasl_mechanism=sasl_mechanism,
            extra=dict(client_config or {}),
        )
        self.timeout_s = timeout_s
        self._linger_ms = linger_ms
        self._errors = _ErrorLog()
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._fetcher: RdConsumer | None = None
        self._txn_producers: dict[str, Producer] = {}
        #: The last offset per (cluster topic, partition) written by transactions committed
        #: with ``visible=False`` and not yet awaited (see :meth:`await_visible`).
        self._unseen: dict[tuple[str, int], int] = {}
        self._group_clients: dict[str, RdConsumer] = {}
        self._partitions: dict[str, int] = {}
        self._offset_homes: dict[tuple[str, str], str] = {}
        self._consumers: list[weakref.ref[_KafkaConsumer]] = []

    @classmethod
    def from_connection(
        cls,
        zone: str,
        connection: KafkaConnection,
        *,
        prefix: str = "",
        timeout_s: float = 30.0,
        cipher: RecordSealer | None = None,
        key_secret: bytes | None = None,
        audit: RecordAudit | None = None,
    ) -> KafkaBackend:
        return cls(
            zone,
            bootstrap=connection.bootstrap,
            username=connection.username,
            password=connection.password,
            prefix=prefix,
            security_protocol=connection.security_protocol,
            sasl_mechanism=connection.sasl_mechanism,
            client_config=connection.extra,
            timeout_s=timeout_s,
            cipher=cipher,
            key_secret=key_secret,
            audit=audit,
        )

    def __repr__(self) -> str:
        sealed = "" if self._cipher is None else ", encrypted"
        return (
            f"KafkaBackend(zone={self.zone!r}, bootstrap={self.connection.bootstrap!r}, "
            f"username={self.connection.username!r}, prefix={self.prefix!r}{sealed})"
        )

    @property
    def encrypted(self) -> bool:
        """Whether records are sealed at rest by this backend."""
        return self._cipher is not None

    # -- encryption at rest ---------------------------------------------------------------
    def _aad_prefix(self, topic: str, partition: int) -> bytes:
        """The associated data of a record of ``topic`` in ``partition``, up to its record id
        (the record id comes last: one prefix per partition serves every record)."""
        prefix = self._aad_prefixes.get((topic, partition))
        if prefix is None:
            prefix = b"tz.kafka.v1\x00%s\x00%s\x00%d\x00" % (
                self.zone.encode(),
                topic.encode(),
                partition,
            )
            self._aad_prefixes[(topic, partition)] = prefix
        return prefix

    def _seal(
        self, cipher: RecordSealer, topic: str, record: NewRecord
    ) -> tuple[bytes | None, bytes, int]:
        """(broker key, broker value, partition) of ``record`` sealed for ``topic``."""
        return self._seal_many(cipher, topic, (record,))[0]

    def _seal_many(
        self, cipher: RecordSealer, topic: str, records: Sequence[NewRecord]
    ) -> list[tuple[bytes | None, bytes, int]]:
        """(broker key, broker value, partition) of each record sealed for ``topic``.

        One call per batch: the record ids come from one ``os.urandom`` call (16 bytes each),
        the associated data from one prefix per partition, the header blocks from the
        backend's :class:`_HeaderCodec`.
        """
        count = self.partition_count(topic)
        rids = os.urandom(_RID_BYTES * len(records))
        seal = cipher.seal
        pack = self._headers.pack
        head = _SEALED_HEAD.pack
        pseudonym = self._pseudonym
        prefixes = self._aad_prefixes
        rr = self._rr
        out: list[tuple[bytes | None, bytes, int]] = []
        at = 0
        for record in records:
            key = record.key
            partition = record.partition
            if partition is None:
                partition = partition_for(key, count) if key is not None else next(rr) % count
            rid = rids[at : at + _RID_BYTES]
            at += _RID_BYTES
            headers = pack(record.headers) if record.headers else b""
            if key is None:
                plain = b"".join((head(0, 0, len(headers)), headers, record.value))
                broker_key = None
            else:
                plain = b"".join((head(1, len(key), len(headers)), key, headers, record.value))
                broker_key = pseudonym(key)[:_BROKER_KEY_BYTES]
            prefix = prefixes.get((topic, partition)) or self._aad_prefix(topic, partition)
            sealed = seal(plain, aad=prefix + rid)
            out.append((broker_key, ENVELOPE_MAGIC + rid + sealed, partition))
        return out

    def _reader(self) -> RecordCipher:
        cipher = self._cipher
        if not isinstance(cipher, RecordCipher):
            raise KeyAccessDenied(
                f"this process may write to zone {self.zone!r} but not read it (wrap-only keys)"
            )
        return cipher

    def unseal(self, stored: Record) -> Record:
        """Open a record that another client read from the broker (for example a plain
        ``read_committed`` consumer checking exactly-once): ``stored`` carries the broker's
        key and value and the zone's name for the topic (without the prefix). Returns it as
        produced, or its undecryptable stand-in; unchanged on a zone without encryption."""
        if self._cipher is None:
            return stored
        return self._open(self._reader(), stored)

    def _open(self, cipher: RecordCipher, stored: Record) -> Record:
        """The record as produced, or its undecryptable stand-in (the reason is audited)."""
        return self._open_value(
            cipher, stored.topic, stored.partition, stored.offset, stored.value, stored.timestamp_ms
        )

    def _open_value(
        self,
        cipher: RecordCipher,
        topic: str,
        partition: int,
        offset: int,
        value: bytes,
        timestamp_ms: int,
    ) -> Record:
        """:meth:`_open` of the record at (``topic``, ``partition``, ``offset``) whose broker
        value is ``value``; readers call it per consumed message without building the stored
        record first."""
        where = (topic, partition, offset, timestamp_ms)
        if len(value) <= _SEALED_AT or not value.startswith(ENVELOPE_MAGIC):
            return self._withhold(where, "record is not a trustzones envelope (plaintext?)")
        prefix = self._aad_prefixes.get((topic, partition)) or self._aad_prefix(topic, partition)
        try:
            plain = cipher.open(value[_SEALED_AT:], aad=prefix + value[_RID_AT:_SEALED_AT])
        except DecryptionFailed:
            return self._withhold(
                where,
                "record does not open here: changed, moved from another topic, partition or "
                "zone, or sealed under a key this zone does not hold",
            )
        try:
            # The embedded backend's layout (see _SEALED_HEAD there).
            flag, kl, hl = _SEALED_HEAD.unpack_from(plain, 0)
            at = _SEALED_HEAD.size
            key = plain[at : at + kl] if flag else None
            headers = self._headers.unpack(plain[at + kl : at + kl + hl])
        except (struct.error, UnicodeDecodeError):
            return self._withhold(where, "record opened but its contents are malformed")
        return _new_record(
            Record, (topic, partition, offset, key, plain[at + kl + hl :], headers, timestamp_ms)
        )

    def _withhold(self, position: tuple[str, int, int, int], reason: str) -> Record:
        """The stand-in of the record at ``position`` (topic, partition, offset, timestamp)
        that does not open; the reason goes to the audit callback."""
        return withhold(self._audit, self.zone, position, reason, _log)

    # -- plumbing -------------------------------------------------------------------------
    def _config(self, role: str, **settings: Any) -> dict[str, Any]:
        conf = self.connection.client_config(f"trustzones-{self.zone}-{role}", self._errors)
        conf.update(settings)
        return conf

    def _fail(self, exc: BaseException, action: str) -> TrustzonesError:
        if self._admin is not None:
            self._admin.poll(0)  # serve error_cb, so a login failure can be named
        return translate_kafka_error(
            exc, action=action, conn=self.connection, errors=self._errors, zone=self.zone
        )

    def _error(self, err: KafkaError, action: str) -> TrustzonesError:
        return self._fail(KafkaException(err), action)

    def _t(self, topic: str) -> str:
        return self.prefix + topic

    def _g(self, group: str) -> str:
        return self.prefix + group

    def _anchor(self, topic: str) -> str:
        return f"{self.prefix}{ANCHOR_PREFIX}{topic}"

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Connect and check the login (fails fast on wrong credentials). Idempotent."""
        if self._admin is not None:
            return
        admin = AdminClient(self._config("admin"))
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                admin.list_topics(timeout=min(1.0, self.timeout_s))
                break
            except KafkaException as exc:
                admin.poll(0)
                if self._errors.authentication_error() is not None or time.monotonic() > deadline:
                    raise translate_kafka_error(
                        exc,
                        action="connect",
                        conn=self.connection,
                        errors=self._errors,
                        zone=self.zone,
                    ) from exc
        self._admin = admin

    def close(self) -> None:
        for ref in self._consumers:
            consumer = ref()
            if consumer is not None:
                consumer.close()
        self._consumers.clear()
        producers = [self._producer, *self._txn_producers.values()]
        self._producer = None
        self._txn_producers.clear()
        for producer in producers:
            if producer is not None:
                # Everything produce() wrote is acknowledged already; a producer that hit a
                # fatal error has nothing left to say.
                with contextlib.suppress(KafkaException):
                    producer.flush(self.timeout_s)
        if self._fetcher is not None:
            self._fetcher.close()
            self._fetcher = None
        for client in self._group_clients.values():
            client.close()
        self._group_clients.clear()
        self._admin = None

    @property
    def admin(self) -> AdminClient:
        """The zone's ``AdminClient`` (connects on first use)."""
        if self._admin is None:
            self.open()
        assert self._admin is not None
        return self._admin

    def _wait(self, future: Any, action: str) -> Any:
        try:
            return future.result(timeout=self.timeout_s)
        except TimeoutError as exc:
            raise KafkaUnavailable(
                f"Kafka zone {self.zone!r}: could not {action} within {self.timeout_s:.0f}s "
                f"({self.connection.describe()})"
            ) from exc
        except KafkaException as exc:
            raise self._fail(exc, action) from exc

    # -- topics ---------------------------------------------------------------------------
    def _describe(self, name: str) -> int | None:
        """Partition count of the cluster topic ``name`` (full name), or ``None`` if missing."""
        try:
            md = self.admin.list_topics(topic=name, timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._fail(exc, f"describe topic {name!r}") from exc
        info = md.topics.get(name)
        if info is None:
            return None
        if info.error is not None:
            if info.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return None
            raise self._error(info.error, f"describe topic {name!r}")
        if any(p.leader < 0 for p in info.partitions.values()):
            return -1  # exists, but a partition has no leader yet (just created)
        return len(info.partitions)

    def _await_topic(self, name: str, partitions: int) -> int:
        deadline = time.monotonic() + self.timeout_s
        while True:
            n = self._describe(name)
            if n is not None and n >= partitions:
                return n
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka zone {self.zone!r}: topic {name!r} did not become ready with "
                    f"{partitions} partition(s) within {self.timeout_s:.0f}s"
                )
            time.sleep(0.02)

    def ensure_topic(self, topic: str, *, partitions: int, retention_ms: int | None = None) -> None:
        """Create the topic if missing; grow it to ``partitions`` if it has fewer.

        ``retention_ms=None`` keeps the cluster's default retention for a new topic and leaves
        an existing topic's retention alone.
        """
        if partitions < 1:
            raise StreamError(f"topic {topic!r}: partitions must be ≥ 1, got {partitions}")
        self._ensure(self._t(topic), partitions, retention_ms, shown=topic)

    def _ensure(self, name: str, partitions: int, retention_ms: int | None, shown: str) -> int:
        if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
            raise StreamError(
                f"zone {self.zone!r}: {shown!r} is not a valid Kafka topic name (use up to "
                f"{249 - len(self.prefix)} letters, digits, '.', '_' or '-')"
            )
        current = self._describe(name)
        if current is None:
            config = {} if retention_ms is None else {"retention.ms": str(retention_ms)}
            new = NewTopic(name, num_partitions=partitions, replication_factor=-1, config=config)
            future = self.admin.create_topics([new], request_timeout=self.timeout_s)[name]
            try:
                future.result(timeout=self.timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise self._fail(exc, f"create topic {shown!r}") from exc
                current = self._await_topic(name, 1)
        else:
            current = self._await_topic(name, 1) if current < 0 else current
        if current is not None and partitions > current:
            grow = NewPartitions(name, partitions)
            self._wait(
                self.admin.create_partitions([grow], request_timeout=self.timeout_s)[name],
                f"grow topic {shown!r} to {partitions} partitions",
            )
        if current is not None and retention_ms is not None:
            resource = ConfigResource(
                ResourceType.TOPIC,
                name,
                incremental_configs=[
                    ConfigEntry(
                        "retention.ms",
                        str(retention_ms),
                        incremental_operation=AlterConfigOpType.SET,
                    )
                ],
            )
            futures = self.admin.incremental_alter_configs([resource])
            for future in futures.values():
                self._wait(future, f"set retention of topic {shown!r}")
        n = self._await_topic(name, partitions)
        # Metadata names a leader a moment before it serves requests: wait until every
        # partition answers, so the first produce or fetch does not meet NOT_LEADER.
        self._list_end_offsets(name, n, f"wait for topic {shown!r}")
        self._partitions[name] = n
        return n

    def list_topics(self) -> dict[str, int]:
        try:
            md = self.admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._fail(exc, "list topics") from exc
        out: dict[str, int] = {}
        for name, info in md.topics.items():
            if info.error is not None or not name.startswith(self.prefix):
                continue
            short = name[len(self.prefix) :]
            if short.startswith("__"):  # Kafka's internal topics and our offset anchors
                continue
            out[short] = len(info.partitions)
        return dict(sorted(out.items()))

    def partition_count(self, topic: str) -> int:
        return self._count(self._t(topic), topic)

    def _count(self, name: str, shown: str, *, refresh: bool = False) -> int:
        if not refresh and name in self._partitions:
            return self._partitions[name]
        n = self._describe(name)
        if n is None:
            raise UnknownTopic(
                f"topic {shown!r} does not exist in zone {self.zone!r} (Kafka topic {name!r} "
                f"at {self.connection.bootstrap}). Declare it in trustzones.yaml (or create it) "
                "first."
            )
        if n < 0:
            n = self._await_topic(name, 1)
        self._partitions[name] = n
        return n

    def _check_partition(self, topic: str, partition: int) -> int:
        name = self._t(topic)
        n = self._count(name, topic)
        if not 0 <= partition < n:
            n = self._count(name, topic, refresh=True)
            if not 0 <= partition < n:
                raise StreamError(
                    f"topic {topic!r} in zone {self.zone!r} has {n} partitions; partition "
                    f"{partition} is out of range"
                )
        return n

    # -- records --------------------------------------------------------------------------
    def _get_producer(self) -> Producer:
        # Created on first use, not in open(): an idempotent producer needs WRITE on some
        # topic (KIP-679) and fails fatally for a read-only principal. The first produce()
        # of a backend waits up to 500 ms for librdkafka's producer-id timer.
        if self._producer is None:
            self.admin  # noqa: B018 - connect (and check the login) first
            self._producer = Producer(
                self._config(
                    "producer",
                    **{
                        "enable.idempotence": True,
                        "acks": "all",
                        "partitioner": "murmur2_random",
                        "linger.ms": self._linger_ms,
                        "message.timeout.ms": int(self.timeout_s * 1000),
                    },
                )
            )
        return self._producer

    def _validate(self, topic: str, records: Sequence[NewRecord]) -> None:
        self.partition_count(topic)
        for i, r in enumerate(records):
            if r.partition is not None:
                try:
                    self._check_partition(topic, r.partition)
                except StreamError as exc:
                    raise StreamError(f"record {i}: {exc}") from None

    def produce(self, topic: str, records: Sequence[NewRecord]) -> list[RecordPosition]:
        if not records:
            return []
        self._validate(topic, records)
        producer = self._get_producer()
        positions: list[RecordPosition | None] = [None] * len(records)
        failures: list[tuple[int, KafkaError]] = []

        def delivered(i: int) -> Callable[[KafkaError | None, Message], None]:
            def report(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    failures.append((i, err))
                else:
                    positions[i] = RecordPosition(topic, *_where(msg))

            return report

        self._send_all(producer, topic, records, delivered, last_only=False)
        remaining = producer.flush(self.timeout_s + 5)
        written = sum(p is not None for p in positions)
        if not failures and not remaining:
            return [p for p in positions if p is not None]
        if failures:
            if any(err.fatal() for _, err in failures):
                self._producer = None  # unusable now; the next produce() starts a new one
            index, err = min(failures, key=lambda f: f[0])
            cause = self._error(err, f"produce to topic {topic!r}")
            if written == 0 and not remaining:
                raise cause
            message = (
                f"{written} of {len(records)} records were written to topic {topic!r} in zone "
                f"{self.zone!r}; record {index} failed: {cause}"
            )
            raise ProduceFailed(message, positions) from cause
        raise ProduceFailed(
            f"Kafka zone {self.zone!r}: {remaining} of {len(records)} records to topic {topic!r} "
            f"were not acknowledged within {self.timeout_s:.0f}s; whether they were written is "
            "unknown",
            positions,
        )

    def _send_all(
        self,
        producer: Producer,
        topic: str,
        records: Sequence[NewRecord],
        delivered: Callable[[int], Callable[[KafkaError | None, Message], None]],
        *,
        last_only: bool,
    ) -> None:
        """Hand ``records`` to ``producer`` (sealed first on an encrypted zone).

        ``delivered(i)`` makes record ``i``'s delivery report. ``last_only`` asks for it only
        for the last record of each partition (and for every record whose partition
        librdkafka picks): enough inside a transaction, which librdkafka fails as a whole
        (``commit_transaction`` raises) when any of its records fails, and where a
        partition's last offset is all that is needed (see :meth:`_await_stable`). A record
        without a report costs no Python call when it is delivered.
        """
        name = self._t(topic)
        cipher = self._cipher
        # (key, value, partition or -1 for librdkafka's partitioner, headers, timestamp)
        sent: list[tuple[bytes | None, bytes, int, list[Header] | None, int | None]]
        if cipher is not None:
            sealed = self._seal_many(cipher, topic, records)
            sent = [
                (key, value, partition, None, r.timestamp_ms)
                for (key, value, partition), r in zip(sealed, records, strict=True)
            ]
        else:
            sent = [
                (
                    r.key,
                    r.value,
                    -1 if r.partition is None else r.partition,
                    list(r.headers) if r.headers else None,
                    r.timestamp_ms,
                )
                for r in records
            ]
        if last_only:
            last: dict[int, int] = {}
            reported = set()
            for i, (_, _, partition, _, _) in enumerate(sent):
                if partition < 0:
                    reported.add(i)
                else:
                    last[partition] = i
            reported.update(last.values())
        produce = producer.produce
        for i, (key, value, partition, headers, timestamp) in enumerate(sent):
            report = delivered(i) if not last_only or i in reported else None
            while True:
                try:
                    if report is None and headers is None and timestamp is None:
                        # Positional arguments: keywords cost confluent-kafka more than the
                        # produce itself.
                        produce(name, value, key, partition)
                    else:
                        extra: dict[str, Any] = {}
                        if report is not None:
                            extra["on_delivery"] = report
                        if headers is not None:
                            extra["headers"] = headers
                        if timestamp is not None:
                            extra["timestamp"] = timestamp
                        produce(name, value, key, partition, **extra)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.05)
                except KafkaException as exc:
                    raise self._fail(exc, f"produce to topic {topic!r}") from exc

    def _get_fetcher(self) -> RdConsumer:
        if self._fetcher is None:
            self.admin  # noqa: B018
            self._fetcher = RdConsumer(self._consumer_config("fetch", None))
        return self._fetcher

    def _consumer_config(self, role: str, group: str | None) -> dict[str, Any]:
        return self._config(
            role,
            **{
                # librdkafka insists on a group id even for assign()-only consumers; without
                # a group this one is never used (a missing group ACL only logs an error).
                "group.id": self._g(group) if group else f"{self.prefix}__tz-{role}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 50,
                "queued.max.messages.kbytes": 16384,
            },
        )

    def fetch(
        self, topic: str, partition: int, offset: int, *, max_records: int = 500
    ) -> list[Record]:
        self._check_partition(topic, partition)
        reader = None if self._cipher is None else self._reader()
        if max_records < 1:
            return []
        fetcher = self._get_fetcher()
        name = self._t(topic)
        action = f"read topic {topic!r} partition {partition}"
        try:
            low, stable = fetcher.get_watermark_offsets(
                TopicPartition(name, partition), timeout=self.timeout_s, cached=False
            )
        except KafkaException as exc:
            raise self._fail(exc, action) from exc
        # read_committed: ``stable`` is the last stable offset; nothing readable lies beyond.
        if offset >= stable:
            return []
        fetcher.assign([TopicPartition(name, partition, max(offset, low, 0))])
        try:
            out: list[Record] = []
            done = False
            deadline = time.monotonic() + self.timeout_s
            while not done and len(out) < max_records:
                msgs = fetcher.consume(max_records - len(out), timeout=0)
                if not msgs:
                    if time.monotonic() > deadline:
                        raise KafkaUnavailable(
                            f"Kafka zone {self.zone!r}: could not {action}: no answer within "
                            f"{self.timeout_s:.0f}s"
                        )
                    msg = fetcher.poll(0.1)
                    msgs = [] if msg is None else [msg]
                for msg in msgs:
                    err = msg.error()
                    if err is None:
                        if reader is None:
                            record = _record(topic, msg)
                        else:
                            p, o = _where(msg)
                            value = msg.value()
                            record = self._open_value(
                                reader, topic, p, o, value or b"", msg.timestamp()[1]
                            )
                        out.append(record)
                        done = done or record.offset >= stable - 1
                    elif err.code() == KafkaError._PARTITION_EOF:
                        done = True
                    elif err.code() != KafkaError.GROUP_AUTHORIZATION_FAILED:
                        raise self._error(err, action)
            return out[:max_records]
        finally:
            fetcher.unassign()

    def end_offsets(self, topic: str) -> dict[int, int]:
        name = self._t(topic)
        n = self._count(name, topic, refresh=True)
        return self._list_end_offsets(name, n, f"read end offsets of topic {topic!r}")

    def _list_end_offsets(
        self,
        name: str,
        partitions: int | Sequence[int],
        action: str,
        isolation: IsolationLevel = IsolationLevel.READ_UNCOMMITTED,
    ) -> dict[int, int]:
        """End offsets (high watermarks, or last stable offsets with READ_COMMITTED).

        Retries while a new partition's leader is still taking over.
        """
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        parts = range(partitions) if isinstance(partitions, int) else partitions
        pending = {TopicPartition(name, p): latest for p in parts}
        out: dict[int, int] = {}
        deadline = time.monotonic() + self.timeout_s
        while pending:
            try:
                futures = self.admin.list_offsets(
                    pending,
                    isolation_level=isolation,
                    request_timeout=self.timeout_s,
                )
            except KafkaException as exc:
                raise self._fail(exc, action) from exc
            retry: dict[TopicPartition, Any] = {}
            for tp, future in futures.items():
                try:
                    out[tp.partition] = int(future.result(timeout=self.timeout_s).offset)
                except KafkaException as exc:
                    err = exc.args[0]
                    transient = err.retriable() or err.code() in _LEADER_MOVING
                    if not transient or time.monotonic() > deadline:
                        raise self._fail(exc, action) from exc
                    retry[TopicPartition(name, tp.partition)] = latest
            pending = retry
            if pending:
                time.sleep(0.02)
        return dict(sorted(out.items()))

    # -- groups ---------------------------------------------------------------------------
    def _group_client(self, group: str) -> RdConsumer:
        """A consumer of ``group`` that never subscribes: it reads and commits the group's
        offsets as a "simple" group (generation -1) and supplies its transaction metadata.

        Offsets go through a consumer, not the AdminClient: librdkafka 2.16's admin
        ListConsumerGroupOffsets crashes the process (SIGSEGV) or fails when the group
        coordinator answers COORDINATOR_LOAD_IN_PROGRESS, as it does on a new cluster.
        """
        client = self._group_clients.get(group)
        if client is None:
            self.admin  # noqa: B018 - connect (and check the login) first
            client = RdConsumer(self._consumer_config("offsets", group))
            self._group_clients[group] = client
        return client

    def _group_call(self, group: str, action: str, call: Callable[[RdConsumer], Any]) -> Any:
        """Run ``call`` on the group's client, retrying while the coordinator moves or loads."""
        client = self._group_client(group)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return call(client)
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_BUSY or time.monotonic() > deadline:
                    raise self._fail(exc, action) from exc
            time.sleep(0.05)

    def _group_offsets(self, group: str, names: Sequence[str]) -> dict[str, dict[int, int]]:
        """Cluster topic name → partition → offset committed by ``group``, for ``names``.

        Read with ``require_stable`` (librdkafka asks for it under read_committed): the broker
        holds back offsets of a transaction that committed but whose markers are not written
        yet (KIP-447), so a restarted flow never resumes from before its last commit.
        """
        wanted: list[TopicPartition] = []
        denied: list[AccessDenied] = []
        for name in names:
            try:
                n = self._describe(name)
            except AccessDenied as exc:
                # The broker answers TOPIC_AUTHORIZATION_FAILED for topics that do not
                # exist, too, so one refusal is normal (a foreign topic's name here) ...
                denied.append(exc)
                continue
            if n is not None:
                n = self._await_topic(name, 1) if n < 0 else n
                wanted += [TopicPartition(name, p) for p in range(n)]
        if len(denied) == len(names):
            # ... but with nothing visible, reading "no offsets" would restart from the
            # beginning: fail closed instead.
            raise denied[0]
        if not wanted:
            return {}
        action = f"read offsets of group {group!r}"
        deadline = time.monotonic() + self.timeout_s
        while True:
            result = self._group_call(
                group, action, lambda c: c.committed(wanted, timeout=self.timeout_s)
            )
            out: dict[str, dict[int, int]] = {}
            unstable = False
            for tp in result:
                if tp.error is not None:
                    if tp.error.code() in _COORDINATOR_BUSY:
                        unstable = True
                        continue
                    raise self._error(tp.error, action)
                if tp.offset >= 0:
                    out.setdefault(tp.topic, {})[tp.partition] = tp.offset
            if not unstable:
                return out
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka zone {self.zone!r}: could not {action}: a transactional commit "
                    f"stayed pending for {self.timeout_s:.0f}s"
                )
            time.sleep(0.01)

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Offsets kept against the anchor topic (a foreign topic) win over native ones."""
        offsets = self._group_offsets(group, [self._anchor(topic), self._t(topic)])
        return dict(
            sorted((offsets.get(self._anchor(topic)) or offsets.get(self._t(topic), {})).items())
        )

    def _offsets_home(self, group: str, topic: str, offsets: Mapping[int, int]) -> str:
        """The cluster topic to commit ``group``'s offsets of ``topic`` against.

        Once chosen for a (group, topic) it stays: (1) where the group already keeps offsets
        for it — the anchor first, as :meth:`committed_offsets` reads; else (2) the topic itself
        if it is a topic of this zone; else (3) the anchor topic, created or grown as needed.
        """
        key = (group, topic)
        home = self._offset_homes.get(key)
        if home is None:
            existing = self._group_offsets(group, [self._anchor(topic), self._t(topic)])
            if self._anchor(topic) in existing:
                home = self._anchor(topic)
            elif self._t(topic) in existing:
                home = self._t(topic)
            else:
                try:
                    self.partition_count(topic)
                    home = self._t(topic)
                except (UnknownTopic, AccessDenied):
                    home = self._anchor(topic)
            self._offset_homes[key] = home
        if home == self._anchor(topic):
            self._ensure_anchor(topic, max(offsets) + 1)
        return home

    def _ensure_anchor(self, topic: str, partitions: int) -> None:
        name = self._anchor(topic)
        if self._partitions.get(name, 0) >= partitions:
            return
        current = self._describe(name)
        if current is not None and current >= partitions:
            self._partitions[name] = current
            return
        try:
            self._ensure(name, partitions, None, shown=name)
        except AccessDenied as exc:
            raise AccessDenied(
                f"zone {self.zone!r}: offsets of foreign topic {topic!r} are kept against the "
                f"anchor topic {name!r}, which needs ≥ {partitions} partition(s) and may not be "
                f"created or grown by {self.connection.username!r}. Provision it (trustzones "
                "apply) or grant CREATE and ALTER on it."
            ) from exc

    @staticmethod
    def _check_offsets(offsets: Mapping[int, int]) -> list[tuple[int, int]]:
        items = sorted((int(p), int(o)) for p, o in offsets.items())
        bad = [(p, o) for p, o in items if p < 0 or o < 0]
        if bad:
            raise StreamError(f"offsets must be partition ≥ 0 → offset ≥ 0, got {bad}")
        return items

    def commit_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        items = self._check_offsets(offsets)
        if not items:
            return
        home = self._offsets_home(group, topic, offsets)
        tps = [TopicPartition(home, p, o) for p, o in items]
        action = f"commit offsets of group {group!r} for topic {topic!r}"
        result = self._group_call(
            group, action, lambda c: c.commit(offsets=tps, asynchronous=False)
        )
        for tp in result or []:
            if tp.error is not None:
                raise self._error(tp.error, action)

    def _group_metadata(self, group: str) -> Any:
        """Metadata of ``group`` as a simple group (generation -1, no member id).

        Taken from a consumer that never subscribes, so the group coordinator accepts
        transactional offset commits for it (an active generation would be ILLEGAL_GENERATION).
        """
        return self._group_client(group).consumer_group_metadata()

    # -- transactions ---------------------------------------------------------------------
    def _txn_producer(self, transactional_id: str) -> Producer:
        producer = self._txn_producers.get(transactional_id)
        if producer is not None:
            return producer
        self.admin  # noqa: B018
        producer = Producer(
            self._config(
                f"txn-{transactional_id}",
                **{
                    "transactional.id": self.prefix + transactional_id,
                    "partitioner": "murmur2_random",
                    "linger.ms": self._linger_ms,
                    # A transaction that starts right after the previous commit is refused
                    # (CONCURRENT_TRANSACTIONS) until the markers are written; librdkafka's
                    # default 100 ms retry backoff turns that into ~130 ms per transaction.
                    "retry.backoff.ms": _TXN_RETRY_BACKOFF_MS,
                    "transaction.timeout.ms": max(60_000, int(self.timeout_s * 2000)),
                    "message.timeout.ms": int(self.timeout_s * 1000),
                },
            )
        )
        try:
            # Fences any older producer with this id and aborts its open transaction.
            producer.init_transactions(self.timeout_s)
        except KafkaException as exc:
            raise self._fail(exc, f"start transactional id {transactional_id!r}") from exc
        self._txn_producers[transactional_id] = producer
        return producer

    @contextmanager
    def transaction(self, transactional_id: str, *, visible: bool = True) -> Iterator[Transaction]:
        producer = self._txn_producer(transactional_id)
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            self._txn_producers.pop(transactional_id, None)
            raise self._fail(exc, f"begin transaction {transactional_id!r}") from exc
        tx = _KafkaTransaction(self, producer)
        try:
            yield tx
        except BaseException:
            tx.closed = True
            self._abort(transactional_id, producer)
            raise
        tx.closed = True
        self._commit(transactional_id, producer, tx)
        if visible:
            self._await_stable(tx.written, f"make transaction {transactional_id!r} visible")
        else:
            unseen = self._unseen
            for tp, offset in tx.written.items():
                unseen[tp] = max(offset, unseen.get(tp, -1))

    def await_visible(self) -> None:
        """Wait for the commit markers of the transactions committed with ``visible=False``
        (one end-offset request per topic, usually answered at once)."""
        unseen, self._unseen = self._unseen, {}
        try:
            self._await_stable(unseen, "make committed transactions visible")
        except BaseException:
            for tp, offset in unseen.items():  # still owed: a later call waits again
                self._unseen[tp] = max(offset, self._unseen.get(tp, -1))
            raise

    def _abort(self, transactional_id: str, producer: Producer) -> None:
        try:
            producer.abort_transaction(self.timeout_s)
        except KafkaException:
            # A fatal error (fenced, timed out): this producer is unusable. The broker aborts
            # the open transaction when another producer with this id starts, or on timeout.
            self._txn_producers.pop(transactional_id, None)

    def _commit(self, transactional_id: str, producer: Producer, tx: _KafkaTransaction) -> None:
        what = f"Kafka zone {self.zone!r}: transaction {transactional_id!r}"
        try:
            # 1. Offsets first: a failure here aborts records and offsets together.
            for group, positions in tx.offsets.items():
                tps = [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]
                producer.send_offsets_to_transaction(
                    tps, self._group_metadata(group), self.timeout_s
                )
            # 2. Commit; retriable errors (timeouts) may be retried with the same call.
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    producer.commit_transaction(self.timeout_s)
                    break
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.retriable() and time.monotonic() < deadline:
                        continue
                    raise
        except KafkaException as exc:
            err = exc.args[0]
            cause = self._fail(exc, "commit")
            if err.fatal() or err.code() == KafkaError._FENCED:
                self._txn_producers.pop(transactional_id, None)
                reason = (
                    "another producer took over this transactional id (fenced); run one "
                    "instance per transactional id"
                    if err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
                    else str(cause)
                )
            else:
                self._abort(transactional_id, producer)
                # A record the broker refused leaves the producer's sequence numbers behind
                # the broker's: the next transaction would fail (OUT_OF_ORDER_SEQUENCE_NUMBER,
                # "requires epoch bump"). The next one starts a new producer, which bumps it.
                self._txn_producers.pop(transactional_id, None)
                reason = str(cause)
            first = tx.first_failure()
            if first is not None:
                reason += f"; first failed record: {first}"
            raise TransactionAborted(
                f"{what} was aborted, nothing it wrote is visible: {reason}"
            ) from exc
        # The coordinator writes the commit markers after it answered: ``transaction`` then
        # waits until read_committed readers see the records (unless told ``visible=False``),
        # so that a commit is "read your writes" as on every backend. (Offsets are read with
        # require_stable, which waits by itself.)

    def _await_stable(self, written: Mapping[tuple[str, int], int], action: str) -> None:
        by_topic: dict[str, dict[int, int]] = {}
        for (name, p), offset in written.items():
            by_topic.setdefault(name, {})[p] = offset
        deadline = time.monotonic() + self.timeout_s
        while by_topic:
            for name, last in list(by_topic.items()):
                stable = self._list_end_offsets(
                    name, sorted(last), action, IsolationLevel.READ_COMMITTED
                )
                left = {p: o for p, o in last.items() if stable.get(p, 0) <= o}
                if left:
                    by_topic[name] = left
                else:
                    del by_topic[name]
            if by_topic:
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"Kafka zone {self.zone!r}: could not {action}: the commit markers "
                        f"were not written within {self.timeout_s:.0f}s"
                    )
                time.sleep(0.002)

    # -- consuming ------------------------------------------------------------------------
    def consumer(
        self,
        topic: str,
        *,
        group: str | None = None,
        start: StartFrom = "committed",
        partitions: Sequence[int] | None = None,
    ) -> Consumer:
        """A native librdkafka consumer (assign()-based; the group stores positions only)."""
        consumer = _KafkaConsumer(self, topic, group=group, start=start, partitions=partitions)
        self._consumers = [r for r in self._consumers if r() is not None]
        self._consumers.append(weakref.ref(consumer))
        return consumer


class _KafkaTransaction(Transaction):
    def __init__(self, backend: KafkaBackend, producer: Producer) -> None:
        self._backend = backend
        self._producer = producer
        self.closed = False
        self.offsets: dict[str, dict[tuple[str, int], int]] = {}
        self.written: dict[tuple[str, int], int] = {}  # (cluster topic, partition) → last offset
        self._failures: list[tuple[str, int, KafkaError]] = []

    def _check_open(self) -> None:
        if self.closed:
            raise StreamError("this transaction has already ended")

    def produce(self, topic: str, records: Sequence[NewRecord]) -> None:
        self._check_open()
        if not records:
            return
        b = self._backend
        b._validate(topic, records)  # unknown topics fail now, not at commit after a timeout
        name = b._t(topic)
        failures = self._failures
        written = self.written

        def delivered(i: int) -> Callable[[KafkaError | None, Message], None]:
            def report(err: KafkaError | None, msg: Message) -> None:
                if err is not None:
                    failures.append((topic, i, err))
                else:
                    p, offset = _where(msg)
                    written[(name, p)] = max(offset, written.get((name, p), -1))

            return report

        # Reports for the last record of each partition only: a failed record fails the
        # whole transaction at commit (librdkafka), reported or not.
        b._send_all(self._producer, topic, records, delivered, last_only=True)

    def store_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        self._check_open()
        items = self._backend._check_offsets(offsets)
        if not items:
            return
        home = self._backend._offsets_home(group, topic, offsets)
        pending = self.offsets.setdefault(group, {})
        for p, o in items:
            pending[(home, p)] = o

    def first_failure(self) -> str | None:
        if not self._failures:
            return None
        topic, i, err = self._failures[0]
        return f"record {i} to topic {topic!r}: {err.str()} ({err.name()})"


class _KafkaConsumer(Consumer):
    """Reads assigned partitions with one librdkafka consumer (prefetching, read_committed).

    ``poll`` returns what has arrived; it returns ``[]`` only once every partition has reported
    end-of-partition since its last record, so ``iter_until_end`` stops at the true end.
    """

    def __init__(
        self,
        backend: KafkaBackend,
        topic: str,
        *,
        group: str | None,
        start: StartFrom,
        partitions: Sequence[int] | None,
    ) -> None:
        super().__init__(backend, topic, group=group, start=start, partitions=partitions)
        self._kb = backend
        self._client: RdConsumer | None = None
        self._at_end: dict[int, bool] = {}
        self._reader: RecordCipher | None = None

    def _init(self) -> None:
        if self._initialised:
            return
        kb = self._kb
        self._reader = None if kb._cipher is None else kb._reader()
        super()._init()  # positions from the group / start, as every backend does
        self._client = RdConsumer(kb._consumer_config("consumer", self.group))
        name = kb._t(self.topic)
        self._client.assign([TopicPartition(name, p, o) for p, o in self._positions.items()])
        self._at_end = dict.fromkeys(self._positions, False)

    def poll(self, max_records: int = 500) -> list[Record]:
        self._init()
        client = self._client
        assert client is not None
        kb = self._kb
        topic = self.topic
        reader = self._reader
        opened = kb._open_value
        positions, at_end = self._positions, self._at_end
        out: list[Record] = []
        deadline = time.monotonic() + kb.timeout_s
        checked = False
        while len(out) < max_records:
            msgs = client.consume(max_records - len(out), timeout=0)
            if not msgs:
                if out:
                    break
                if all(self._at_end.values()):
                    # End-of-partition is as old as the last fetch. Once per poll, ask the
                    # broker whether committed records arrived since (a produce that
                    # returned must be readable, as on every backend).
                    if checked or not self._behind():
                        break
                    checked = True
                if time.monotonic() > deadline:
                    waiting = sorted(p for p, end in self._at_end.items() if not end)
                    raise KafkaUnavailable(
                        f"Kafka zone {kb.zone!r}: no answer for topic {self.topic!r} "
                        f"partition(s) {waiting} within {kb.timeout_s:.0f}s"
                    )
                msg = client.poll(0.1)
                msgs = [] if msg is None else [msg]
            for msg in msgs:
                err = msg.error()
                if err is None:
                    p, offset = _where(msg)
                    if reader is None:
                        out.append(_record(topic, msg))
                    else:
                        # Opened from the message's fields: the broker's key and headers of
                        # a sealed record are not read (the real ones are inside).
                        value = msg.value()
                        ts = msg.timestamp()[1]
                        out.append(opened(reader, topic, p, offset, value or b"", ts))
                    positions[p] = offset + 1
                    at_end[p] = False
                elif err.code() == KafkaError._PARTITION_EOF:
                    # The end offset is past any control records, so lag can reach 0.
                    p, end = _where(msg)
                    positions[p] = end
                    at_end[p] = True
                elif err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED and self.group is None:
                    continue  # the placeholder group is never used
                else:
                    raise kb._error(err, f"read topic {self.topic!r}")
        return out

    def _behind(self) -> bool:
        kb = self._kb
        stable = kb._list_end_offsets(
            kb._t(self.topic),
            sorted(self._positions),
            f"read end offsets of topic {self.topic!r}",
            IsolationLevel.READ_COMMITTED,
        )
        behind = False
        for p, pos in self._positions.items():
            if stable.get(p, 0) > pos:
                self._at_end[p] = False  # wait for its records or a new end-of-partition
                behind = True
        return behind

    def lag(self) -> int:
        self._init()
        ends = self._kb.end_offsets(self.topic)
        return sum(max(0, ends.get(p, 0) - pos) for p, pos in self._positions.items())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._initialised = False


def _no_pseudonym(key: bytes) -> bytes:
    raise AssertionError("an unencrypted zone keeps record keys as they are")


def _where(msg: Message) -> tuple[int, int]:
    partition, offset = msg.partition(), msg.offset()
    assert partition is not None and offset is not None
    return partition, offset


def _record(topic: str, msg: Message) -> Record:
    partition, offset = _where(msg)
    _, ts = msg.timestamp()
    value = msg.value()
    # Consumed messages carry headers as a list of (name, value) pairs.
    headers: list[tuple[str, str | bytes | None]] = cast(Any, msg.headers()) or []
    return Record(
        topic,
        partition,
        offset,
        msg.key(),
        b"" if value is None else value,
        tuple((k, _header_value(v)) for k, v in headers),
        ts,
    )


def _header_value(v: str | bytes | None) -> bytes:
    if v is None:  # Kafka allows null header values; the model has bytes only
        return b""
    return v.encode() if isinstance(v, str) else v
