"""The audit zone on Kafka: the same tamper-evident log, kept in a single-partition topic.

Example::

    from trustzones.audit import NoteSigner
    from trustzones.audit._kafka import KafkaAuditLog, KafkaAuditReader, verify_kafka_log
    from trustzones.streams._kafka_admin import KafkaConnection

    writer = KafkaConnection("broker:9092", username="trustzones-audit", password="...")
    with KafkaAuditLog(writer, signer=signer, prefix="prod.") as log:
        log.record_many(events)          # one Kafka transaction, durable when it returns
        note = log.checkpoint()          # signed checkpoint, also kept in the checkpoint topic
    report = verify_kafka_log(auditor_connection, signer.verifier(), prefix="prod.")

Layout. ``<prefix>tz.audit`` holds one record per event (key: the event id, value: its RFC 8785
body, exactly the bytes the Merkle tree hashes); ``<prefix>tz.audit.checkpoints`` holds signed
checkpoint notes. Both have one partition, ``retention.ms=-1`` and ``cleanup.policy=delete``
(``trustzones apply`` creates them, see :mod:`trustzones.provision._audit`).

The Merkle leaves are the *committed* records of the log topic in offset order (read with
``isolation.level=read_committed``), so any number of writer processes may append without
coordinating: each ``record_many`` is one Kafka transaction, and the broker orders them.

Signed batches. On SQLite every append re-signs the head inside the same transaction; on Kafka a
writer cannot know the tree size when it writes (others append concurrently). Instead every
record carries the header ``tz.audit.batch`` = ``<batch id>:<i>:<n>`` and the last record of a
batch carries ``tz.audit.sig``: a C2SP signed note, with the log's key, of::

    trustzones-audit-batch/v1
    <origin>
    <batch id>
    <n>
    <base64 SHA-256 of the batch's n leaf hashes, in order>

so a record produced into the topic by anyone without the signing key (the cluster admin
included) is found by ``verify``: it is not part of a complete, correctly signed batch; a
replayed batch repeats its batch id. Checkpoints pin the order and the count: ``verify``
recomputes the tree and compares every checkpoint's root at its size.

What stays with the broker's ACLs (provisioned by ``apply``): only the writer may WRITE to the
topics; nobody but the cluster's super user may DELETE or ALTER them (explicit DENY rules guard
against a later, broader ALLOW); auditors may READ. Deleting records from the head of the log
(the admin's ``DeleteRecords``) is caught by ``verify`` as a checkpoint mismatch.

Reading scans the topic from the start (there is no index): ``tail``, ``search``, ``prove`` and
``verify`` cost O(n). Threading: a ``KafkaAuditLog`` may be shared by threads (appends are
serialised by a lock, one transaction each).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from trustzones.audit._errors import LogTampered, ProofInvalid
from trustzones.audit._verify import VerifyReport
from trustzones.audit.events import AuditEvent, _utc_time, canonical_json
from trustzones.audit.log import AuditorCheck, AuditorGate, InclusionProofBundle, StoredEvent
from trustzones.audit.merkle import CompactRange, inclusion_proof, leaf_hash, range_hash
from trustzones.audit.notes import Checkpoint, NoteSigner, NoteVerifier
from trustzones.errors import AuditError
from trustzones.streams._kafka_admin import KafkaConnection, translate_kafka_error

__all__ = [
    "BATCH_HEADER",
    "CHECKPOINT_TOPIC",
    "LOG_TOPIC",
    "SIGNATURE_HEADER",
    "TRANSACTIONAL_PREFIX",
    "KafkaAuditLog",
    "KafkaAuditReader",
    "audit_topics",
    "verify_kafka_log",
]

LOG_TOPIC = "tz.audit"
CHECKPOINT_TOPIC = "tz.audit.checkpoints"
TRANSACTIONAL_PREFIX = "tz.audit.writer."
BATCH_HEADER = "tz.audit.batch"
SIGNATURE_HEADER = "tz.audit.sig"
_BATCH_FORMAT = "trustzones-audit-batch/v1"


def audit_topics(prefix: str = "") -> tuple[str, str]:
    """The log topic and the checkpoint topic under ``prefix``."""
    return prefix + LOG_TOPIC, prefix + CHECKPOINT_TOPIC


def _batch_text(origin: str, batch_id: str, leaves: Sequence[bytes]) -> str:
    digest = hashlib.sha256(b"".join(leaves)).digest()
    return (
        f"{_BATCH_FORMAT}\n{origin}\n{batch_id}\n{len(leaves)}\n"
        f"{base64.b64encode(digest).decode()}\n"
    )


def _kafka_error(action: str, exc: BaseException) -> AuditError:
    return AuditError(f"the Kafka audit log: {action} failed ({exc}); nothing is recorded")


# -- reading the topics -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    offset: int
    body: bytes
    headers: dict[str, bytes]


def _scan(conn: KafkaConnection, topic: str, *, timeout_s: float) -> Iterator[_Entry]:
    """Every committed record of partition 0 of ``topic``, in offset order, up to its end."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    conf = conn.client_config(f"tz-audit-reader-{uuid.uuid4().hex[:8]}")
    conf.update(
        {
            "group.id": f"tz.audit.reader.{uuid.uuid4().hex[:8]}",  # never joined or committed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    consumer = Consumer(conf)
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            raise translate_kafka_error(
                exc, action=f"read the audit topic {topic!r}", conn=conn
            ) from exc
        if meta is None or meta.error is not None:
            why = meta.error.str() if meta is not None and meta.error is not None else "missing"
            raise AuditError(
                f"cannot read the audit topic {topic!r} ({why}): run `trustzones apply`, and "
                "read it as a principal the broker lets READ it (an auditor)"
            )
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        # consume() waits until it has num_messages or its timeout passed, so ask often and
        # briefly; the end of the partition (at the last stable offset) arrives as an event.
        deadline = time.monotonic() + timeout_s
        while True:
            batch = consumer.consume(num_messages=10_000, timeout=0.1)
            if batch:
                deadline = time.monotonic() + timeout_s
            elif time.monotonic() > deadline:
                raise AuditError(f"reading the audit topic {topic!r} timed out")
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return
                    if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                        continue  # the reader's group is never used: it only assigns
                    raise AuditError(f"reading the audit topic {topic!r} failed: {err.str()}")
                raw: Any = msg.headers() or []
                headers = {str(k): bytes(v or b"") for k, v in raw}
                offset: Any = msg.offset()
                value: Any = msg.value()
                yield _Entry(int(offset), bytes(value or b""), headers)
    finally:
        consumer.close()


def _checkpoints(
    conn: KafkaConnection, topic: str, verifier: NoteVerifier, *, timeout_s: float
) -> list[tuple[int, Checkpoint, str]]:
    """The checkpoint topic: (offset, parsed checkpoint, note); raises on a bad one."""
    out = []
    for entry in _scan(conn, topic, timeout_s=timeout_s):
        note = entry.body.decode("utf-8", errors="replace")
        try:
            cp = Checkpoint.open(note, verifier)
        except ProofInvalid as exc:
            raise LogTampered(
                f"audit log verification failed: checkpoint at offset {entry.offset}: {exc}",
                checkpoint=entry.offset,
            ) from exc
        if cp.origin != verifier.name:
            raise LogTampered(
                f"audit log verification failed: checkpoint at offset {entry.offset} is for "
                f"the log {cp.origin!r}",
                checkpoint=entry.offset,
            )
        out.append((entry.offset, cp, note))
    return out


class _Batches:
    """Checks the batch signatures as records are read (see the module docstring)."""

    def __init__(self, verifier: NoteVerifier) -> None:
        self._verifier = verifier
        self._open: dict[str, tuple[int, int, list[bytes]]] = {}  # id → (first leaf, n, hashes)
        self._seen: set[str] = set()

    def add(self, index: int, entry: _Entry, leaf: bytes) -> None:
        raw = entry.headers.get(BATCH_HEADER)
        parts = raw.decode("ascii", errors="replace").split(":") if raw else []
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise self._bad(index, entry, "it is not part of a batch signed by the audit writer")
        batch_id, i, n = parts[0], int(parts[1]), int(parts[2])
        if batch_id in self._seen:
            raise self._bad(index, entry, f"it repeats batch {batch_id} (a replayed record)")
        first, count, leaves = self._open.setdefault(batch_id, (index, n, []))
        if i != len(leaves) or n != count or i >= n:
            raise self._bad(index, entry, f"it is out of place in batch {batch_id}")
        leaves.append(leaf)
        if len(leaves) < n:
            return
        del self._open[batch_id]
        self._seen.add(batch_id)
        note = entry.headers.get(SIGNATURE_HEADER, b"").decode("utf-8", errors="replace")
        want = _batch_text(self._verifier.name, batch_id, leaves)
        try:
            signed = self._verifier.open(note)
        except ProofInvalid:
            signed = None
        if signed != want:
            raise LogTampered(
                f"audit log verification failed: entry {first}: batch {batch_id} (entries from "
                f"{first}) is not signed by the log's key: a record was changed or forged",
                leaf_index=first,
            )

    def finish(self) -> None:
        if self._open:
            batch_id, (first, n, leaves) = min(self._open.items(), key=lambda kv: kv[1][0])
            raise LogTampered(
                f"audit log verification failed: entry {first}: batch {batch_id} has "
                f"{len(leaves)} of its {n} records (a record was forged or removed)",
                leaf_index=first,
            )

    @staticmethod
    def _bad(index: int, entry: _Entry, why: str) -> LogTampered:
        return LogTampered(
            f"audit log verification failed: entry {index} (offset {entry.offset}): {why}; it "
            "was produced outside the audit log",
            leaf_index=index,
        )


def verify_kafka_log(
    conn: KafkaConnection,
    verifier: NoteVerifier,
    *,
    prefix: str = "",
    trusted: Sequence[str] = (),
    timeout_s: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Recompute the Kafka audit log; check every batch signature and checkpoint.

    Steps: (1) read and check every signed checkpoint (and the ``trusted`` ones); (2) read the
    log in offset order, checking each record's batch signature and rebuilding the tree;
    (3) at each checkpoint's size, its root must equal the recomputed root (two checkpoints
    that both match one tree are consistent, so no separate consistency proof is needed);
    (4) no checkpoint may claim more entries than the log holds (truncation or rollback).
    """
    log_topic, cp_topic = audit_topics(prefix)
    # 1. Checkpoints, signed by the log's key, of this log.
    stored = _checkpoints(conn, cp_topic, verifier, timeout_s=timeout_s)
    claims: dict[int, list[tuple[str, bytes, int | str]]] = {}
    for offset, cp, _note in stored:
        claims.setdefault(cp.size, []).append((f"checkpoint {offset}", cp.root_hash, offset))
    for n, note in enumerate(trusted):
        cp = Checkpoint.open(note, verifier)
        if cp.origin != verifier.name:
            raise ProofInvalid(f"trusted checkpoint {n + 1} is for the log {cp.origin!r}")
        claims.setdefault(cp.size, []).append(
            (f"trusted checkpoint {n + 1}", cp.root_hash, f"trusted {n + 1}")
        )
    # 2-3. The log: batch signatures, the tree, and each claim at its size.
    batches = _Batches(verifier)
    tree = CompactRange()
    if 0 in claims:
        _check_claims(claims.pop(0), tree.root(), 0)
    for entry in _scan(conn, log_topic, timeout_s=timeout_s):
        index = tree.size
        leaf = leaf_hash(entry.body)
        batches.add(index, entry, leaf)
        tree.append(leaf)
        if tree.size in claims:
            _check_claims(claims.pop(tree.size), tree.root(), tree.size)
        if progress is not None and tree.size % 8192 == 0:
            progress(tree.size, tree.size)
    batches.finish()
    # 4. Claims beyond the end: the log lost entries.
    if claims:
        size = min(claims)
        label = claims[size][0][0]
        raise LogTampered(
            f"audit log verification failed: the log has {tree.size} entries but {label} "
            f"covers {size}: it was truncated or rolled back",
            leaf_index=tree.size,
            checkpoint=claims[size][0][2],
        )
    return VerifyReport(verifier.name, tree.size, tree.root(), len(stored), len(trusted))


def _check_claims(found: list[tuple[str, bytes, int | str]], root: bytes, size: int) -> None:
    for label, claimed, where in found:
        if claimed != root:
            raise LogTampered(
                f"audit log verification failed: {label} (tree size {size}) does not match the "
                f"entries: one of the first {size} was changed, removed, reordered or inserted",
                checkpoint=where,
            )


# -- writing ----------------------------------------------------------------------------------


class KafkaAuditLog:
    """The writer of the audit zone on Kafka (an :class:`~trustzones.audit.AuditSink`).

    Each :meth:`record_many` is one Kafka transaction of signed records, durable (``acks=all``,
    committed) when it returns; if it raises, nothing of it is visible to readers.
    """

    def __init__(
        self,
        conn: KafkaConnection,
        *,
        signer: NoteSigner,
        prefix: str = "",
        timeout_s: float = 30.0,
    ) -> None:
        self._conn = conn
        self._signer = signer
        self.prefix = prefix
        self.topic, self.checkpoint_topic = audit_topics(prefix)
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._producer: Any = None

    @property
    def origin(self) -> str:
        return self._signer.name

    def open(self) -> Self:
        """Connect and register the transactional producer (idempotent, acks=all)."""
        from confluent_kafka import KafkaException, Producer

        with self._lock:
            if self._producer is not None:
                return self
            conf = self._conn.client_config("tz-audit-writer")
            conf.update(
                {
                    "transactional.id": f"{self.prefix}{TRANSACTIONAL_PREFIX}{uuid.uuid4().hex}",
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 5,
                }
            )
            producer = Producer(conf)
            try:
                producer.init_transactions(self._timeout)
            except KafkaException as exc:
                raise _kafka_error("registering the transactional writer", exc) from exc
            self._producer = producer
        return self

    def append_many(self, events: Sequence[AuditEvent]) -> int:
        """Append events atomically and in order (one transaction); return how many."""
        if not events:
            raise ValueError("append_many needs at least one event")
        bodies = [canonical_json(e) for e in events]
        leaves = [leaf_hash(b) for b in bodies]
        batch_id = uuid.uuid4().hex
        note = self._signer.sign(_batch_text(self.origin, batch_id, leaves))
        n = len(bodies)
        self._transaction(
            self.topic,
            [
                (
                    e.id.encode(),
                    body,
                    [(BATCH_HEADER, f"{batch_id}:{i}:{n}".encode())]
                    + ([(SIGNATURE_HEADER, note.encode())] if i == n - 1 else []),
                )
                for i, (e, body) in enumerate(zip(events, bodies, strict=True))
            ],
        )
        return n

    def append(self, event: AuditEvent) -> None:
        self.append_many([event])

    def record(self, event: AuditEvent) -> None:
        """:class:`AuditSink` entry point: append one event (durable when this returns)."""
        self.append_many([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        """:class:`AuditSink` entry point: append a batch atomically."""
        if events:
            self.append_many(events)

    def _transaction(self, topic: str, records: list[tuple[bytes, bytes, Any]]) -> None:
        from confluent_kafka import KafkaException

        if self._producer is None:
            self.open()
        errors: list[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        last = len(records) - 1
        with self._lock:
            producer = self._producer
            produce = producer.produce
            # 1. Begin; 2. produce every record; 3. flush and check the deliveries; 4. commit.
            # Any failure aborts, so readers (read_committed) see nothing of it. Only the last
            # record reports its delivery (one partition, delivered in order): a record that
            # fails before it fails the transaction, and librdkafka refuses to commit it.
            try:
                producer.begin_transaction()
                for i, (key, value, headers) in enumerate(records):
                    if i == last:
                        produce(topic, value, key, 0, headers=headers, on_delivery=delivered)
                    else:
                        produce(topic, value, key, 0, headers=headers)
                if producer.flush(self._timeout) or errors:
                    raise AuditError(
                        f"the broker did not acknowledge every audit record ({errors[:1]})"
                    )
                producer.commit_transaction(self._timeout)
            except (KafkaException, AuditError, BufferError) as exc:
                with contextlib.suppress(KafkaException):  # fenced or broken: nothing to abort
                    producer.abort_transaction(self._timeout)
                # A new writer next time: after a refused record this one's sequence numbers
                # lag the broker's, and its next transaction would fail too.
                self._producer = None
                raise _kafka_error(f"appending to {topic!r}", exc) from exc

    def checkpoint(self) -> str:
        """Read the log up to its end, sign its tree head, keep it in the checkpoint topic."""
        with self._lock:
            tree = CompactRange()
            batches = _Batches(self._signer.verifier())
            for index, entry in enumerate(_scan(self._conn, self.topic, timeout_s=self._timeout)):
                leaf = leaf_hash(entry.body)
                batches.add(index, entry, leaf)  # never sign over a forged record
                tree.append(leaf)
            batches.finish()
            note = self._signer.sign(Checkpoint(self.origin, tree.size, tree.root()).text())
        self._transaction(self.checkpoint_topic, [(b"checkpoint", note.encode(), [])])
        return note

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self._timeout)
                self._producer = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- auditors ---------------------------------------------------------------------------------


class KafkaAuditReader(AuditorGate):
    """Read access to the Kafka audit log for auditors: tail, search, get, prove.

    As :class:`~trustzones.audit.AuditReader`: ``authorize(principal, operation)`` is asked
    first (anything but ``True`` denies); the broker then checks the connection's READ ACL.
    """

    def __init__(
        self,
        conn: KafkaConnection,
        *,
        verifier: NoteVerifier,
        principal: str,
        authorize: AuditorCheck,
        prefix: str = "",
        timeout_s: float = 30.0,
    ) -> None:
        self._conn = conn
        self._verifier = verifier
        super().__init__(principal=principal, authorize=authorize)
        self.topic, self.checkpoint_topic = audit_topics(prefix)
        self._timeout = timeout_s

    def _events(self) -> Iterator[tuple[int, _Entry]]:
        yield from enumerate(_scan(self._conn, self.topic, timeout_s=self._timeout))

    def tail(self, limit: int = 20) -> list[StoredEvent]:
        """The last ``limit`` events, oldest first."""
        self._check("tail")
        last: list[tuple[int, bytes]] = []
        for index, entry in self._events():
            last.append((index, entry.body))
            if len(last) > limit:
                del last[0]
        return [self._stored(i, b) for i, b in last]

    def search(
        self,
        *,
        principal: str | None = None,
        zone: str | None = None,
        action: str | None = None,
        decision: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events matching every given filter, oldest first; ``until`` is exclusive."""
        self._check("search")
        bounds = []
        for value in (since, until):
            try:
                bounds.append(None if value is None else str(_utc_time(value)))
            except ValueError as exc:
                raise AuditError(f"search time {value!r}: {exc}") from exc
        lo, hi = bounds
        out: list[StoredEvent] = []
        for index, entry in self._events():
            s = self._stored(index, entry.body)
            d = s.event.data
            if (
                (principal is None or d.principal == principal)
                and (zone is None or d.zone == zone)
                and (action is None or d.action == action)
                and (decision is None or d.decision == decision)
                and (lo is None or s.event.time >= lo)
                and (hi is None or s.event.time < hi)
            ):
                out.append(s)
                if len(out) >= limit:
                    break
        return out

    def get(self, event_id: str) -> StoredEvent:
        """The event with id ``event_id``."""
        self._check("get")
        for index, entry in self._events():
            if f'"id":"{event_id}"'.encode() in entry.body:
                s = self._stored(index, entry.body)
                if s.event.id == event_id:
                    return s
        raise AuditError(f"no event with id {event_id!r} in the audit topic {self.topic!r}")

    def prove(self, event_id: str) -> InclusionProofBundle:
        """An inclusion proof of ``event_id`` against the latest checkpoint that covers it."""
        self._check("prove")
        checkpoints = _checkpoints(
            self._conn, self.checkpoint_topic, self._verifier, timeout_s=self._timeout
        )
        leaves: list[bytes] = []
        found: tuple[int, bytes] | None = None
        for index, entry in self._events():
            leaves.append(leaf_hash(entry.body))
            if (
                found is None
                and f'"id":"{event_id}"'.encode() in entry.body
                and self._stored(index, entry.body).event.id == event_id
            ):
                found = (index, entry.body)
        if found is None:
            raise AuditError(f"no event with id {event_id!r} in the audit topic {self.topic!r}")
        index, body = found
        covering = [(cp, note) for _o, cp, note in checkpoints if index < cp.size <= len(leaves)]
        if not covering:
            raise AuditError(
                f"event {event_id!r} (entry {index}) is not covered by a signed checkpoint "
                "yet: run `trustzones audit checkpoint` first"
            )
        cp, note = max(covering, key=lambda c: c[0].size)
        if range_hash(leaves, 0, cp.size) != cp.root_hash:
            raise LogTampered(
                f"the checkpoint of size {cp.size} does not match the log; run "
                "`trustzones audit verify`",
                leaf_index=index,
            )
        path = inclusion_proof(lambda lo, hi: range_hash(leaves, lo, hi), index, cp.size)
        import orjson

        return InclusionProofBundle(
            event=orjson.loads(body),
            leaf_index=index,
            tree_size=cp.size,
            inclusion_path=[base64.b64encode(h).decode() for h in path],
            checkpoint=note,
        )


def connection_from_settings(
    bootstrap: str,
    *,
    username: str,
    password: str,
    security_protocol: Any = "SASL_PLAINTEXT",
    sasl_mechanism: Any = "SCRAM-SHA-512",
    ssl_ca_location: str | None = None,
) -> KafkaConnection:
    """A connection for the audit topics (password kept secret by :class:`KafkaConnection`)."""
    extra = {"ssl.ca.location": ssl_ca_location} if ssl_ca_location else {}
    return KafkaConnection(
        bootstrap,
        username=username,
        password=password,  # type: ignore[arg-type]  # wrapped in SecretStr by the connection
        security_protocol=security_protocol,
        sasl_mechanism=sasl_mechanism,
        extra=extra,
    )
