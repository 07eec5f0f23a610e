"""The backend seam: what every streaming backend (embedded SQLite, Apache Kafka) implements.

A :class:`Backend` is the storage of **one zone**: its topics, their partitions and records,
its consumer groups' committed offsets, and transactions that make "append these records and
store these offsets" atomic. The zone runtime, flows and tests use only this interface, so the
same code and the same test suite run on every backend.

Offsets are per partition, start at 0 and grow by one per record. A committed offset is the
offset of the *next* record to read (Kafka's convention).

Ordering and threading: a backend object is used from one thread at a time. Several processes
may open the same zone at once; each append is atomic and durable when ``produce`` returns.

Example::

    from trustzones.streams import NewRecord, open_backend

    with open_backend(zone) as backend:
        backend.ensure_topic("clicks", partitions=3)
        backend.produce("clicks", [NewRecord(key=b"u1", value=b'{"page": "/"}')])
        for record in backend.fetch("clicks", partition=0, offset=0):
            ...
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, NamedTuple, Self

from trustzones.keys._errors import OPAQUE_MESSAGE

__all__ = [
    "RECORD_UNDECRYPTABLE",
    "UNDECRYPTABLE_HEADER",
    "UNDECRYPTABLE_HEADERS",
    "Backend",
    "Consumer",
    "Header",
    "NewRecord",
    "Record",
    "RecordAudit",
    "RecordPosition",
    "StartFrom",
    "Transaction",
    "withhold",
]

Header = tuple[str, bytes]
StartFrom = Literal["committed", "earliest", "latest"]

# A record stored encrypted that does not open (changed, moved, written in plaintext by another
# client, sealed under a key the zone does not hold) is withheld the same way on every backend:
# ``fetch`` and consumers return a stand-in at its position (``key=None``, ``value=b""``,
# headers :data:`UNDECRYPTABLE_HEADERS`), the reason goes to the backend's :data:`RecordAudit`
# callback as a :data:`RECORD_UNDECRYPTABLE` event, and readers go on past it.
UNDECRYPTABLE_HEADER = "tz.undecryptable"
"""The only header of a record returned in place of one that did not decrypt."""
UNDECRYPTABLE_HEADERS: tuple[Header, ...] = ((UNDECRYPTABLE_HEADER, OPAQUE_MESSAGE.encode()),)
"""The stand-in's headers: :data:`UNDECRYPTABLE_HEADER` with the one opaque message of
:class:`~trustzones.errors.DecryptionFailed` (the reason is only in the audit log)."""
RECORD_UNDECRYPTABLE = "streams.record_undecryptable"
"""Audit event type of a withheld record (zone, topic, partition, offset, reason)."""
RecordAudit = Callable[[Mapping[str, object]], None]
"""Receives :data:`RECORD_UNDECRYPTABLE` events (the reasons, for the audit log)."""


def withhold(
    audit: RecordAudit | None,
    zone: str,
    position: tuple[str, int, int, int],
    reason: str,
    log: logging.Logger,
) -> Record:
    """The stand-in for the record at ``position`` (topic, partition, offset, timestamp) that
    does not open: ``reason`` goes to ``audit`` (or, without one, to ``log``), never to the
    reader. The record stays withheld even when the reason cannot be recorded."""
    topic, partition, offset, ts = position
    event = {
        "type": RECORD_UNDECRYPTABLE,
        "zone": zone,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "reason": reason,
    }
    try:
        if audit is not None:
            audit(event)
        else:
            log.warning(
                "zone %r: record %s/%d@%d withheld: %s", zone, topic, partition, offset, reason
            )
    except Exception:
        log.exception("audit callback failed while recording an undecryptable record")
    return Record(topic, partition, offset, None, b"", UNDECRYPTABLE_HEADERS, ts)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record offered to a topic. ``partition=None`` lets the backend choose (by key)."""

    value: bytes
    key: bytes | None = None
    headers: tuple[Header, ...] = ()
    timestamp_ms: int | None = None
    partition: int | None = None


class Record(NamedTuple):
    """A stored record, as read back (a named tuple: cheap to build on the read path)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...]
    timestamp_ms: int

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or ``None``."""
        found = None
        for k, v in self.headers:
            if k == name:
                found = v
        return found


class RecordPosition(NamedTuple):
    """Where a record was stored."""

    topic: str
    partition: int
    offset: int


class Transaction(ABC):
    """Writes that become visible together on commit, or not at all.

    ``store_offsets`` may name a topic of *another* zone: that is how a flow keeps its source
    position in the destination zone, in the same transaction as the records it wrote.
    """

    @abstractmethod
    def produce(self, topic: str, records: Sequence[NewRecord]) -> None: ...

    @abstractmethod
    def store_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None: ...


class Backend(ABC):
    """One zone's storage. Constructors do no I/O; :meth:`open` (or ``with``) connects."""

    zone: str

    @abstractmethod
    def open(self) -> None:
        """Connect / open files. Idempotent."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- topics ---------------------------------------------------------------------------
    @abstractmethod
    def ensure_topic(self, topic: str, *, partitions: int, retention_ms: int | None = None) -> None:
        """Create the topic if missing. An existing topic keeps its partitions (never shrinks)."""

    @abstractmethod
    def list_topics(self) -> dict[str, int]:
        """Topic name → partition count."""

    @abstractmethod
    def partition_count(self, topic: str) -> int:
        """Raises :class:`~trustzones.errors.UnknownTopic` when the topic does not exist."""

    # -- records --------------------------------------------------------------------------
    @abstractmethod
    def produce(self, topic: str, records: Sequence[NewRecord]) -> list[RecordPosition]:
        """Append atomically and durably; returns each record's position, in input order."""

    @abstractmethod
    def fetch(
        self, topic: str, partition: int, offset: int, *, max_records: int = 500
    ) -> list[Record]:
        """Committed records of one partition from ``offset`` on (fewer at the end).

        On an encrypted zone a record that does not open comes back as its stand-in (headers
        :data:`UNDECRYPTABLE_HEADERS`) at its own offset, and the records after it follow."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Partition → offset the next record will get (the high watermark)."""

    # -- groups and transactions ----------------------------------------------------------
    @abstractmethod
    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        """Partition → next offset to read, for partitions the group has committed."""

    @abstractmethod
    def commit_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None: ...

    @abstractmethod
    def transaction(
        self, transactional_id: str, *, visible: bool = True
    ) -> AbstractContextManager[Transaction]:
        """A transaction; leaving the ``with`` block normally commits, an exception aborts.

        A commit is durable when the block ends. With ``visible`` (the default) what it wrote
        can also be read then; ``visible=False`` is for a writer that does not read its own
        writes back at once (a flow, batch after batch): where becoming readable lags the
        commit (Kafka writes the commit markers after it answers), the wait is left to
        :meth:`await_visible`, which the writer calls before anyone must see them."""

    def await_visible(self) -> None:  # noqa: B027 (a hook; backends whose commits lag override it)
        """Wait until what every transaction committed with ``visible=False`` wrote can be
        read. Nothing to wait for where commits are readable at once (the default)."""

    # -- consuming ------------------------------------------------------------------------
    def consumer(
        self,
        topic: str,
        *,
        group: str | None = None,
        start: StartFrom = "committed",
        partitions: Sequence[int] | None = None,
    ) -> Consumer:
        """A consumer of ``topic``. Backends may override with a native implementation."""
        return Consumer(self, topic, group=group, start=start, partitions=partitions)


@dataclass
class Consumer:
    """Reads a topic partition by partition, round-robin, and commits through its group.

    Without a group it keeps its position in memory only. ``start`` applies to partitions the
    group has no committed offset for (``"committed"`` falls back to ``"earliest"``).
    """

    backend: Backend
    topic: str
    group: str | None = None
    start: StartFrom = "committed"
    partitions: Sequence[int] | None = None
    _positions: dict[int, int] = field(default_factory=dict, init=False)
    _initialised: bool = field(default=False, init=False)
    _start_at: dict[int, int] = field(default_factory=dict, init=False)

    def start_at(self, positions: Mapping[int, int]) -> None:
        """Read the named partitions from these offsets instead of where the group or
        ``start`` would begin (a reader that keeps its positions elsewhere, such as a flow).
        Call it before the first read."""
        if self._initialised:
            raise ValueError("start_at() must be called before the consumer first reads")
        self._start_at = dict(positions)

    def _init(self) -> None:
        if self._initialised:
            return
        parts = (
            list(self.partitions)
            if self.partitions is not None
            else list(range(self.backend.partition_count(self.topic)))
        )
        committed = self.backend.committed_offsets(self.group, self.topic) if self.group else {}
        ends = self.backend.end_offsets(self.topic) if self.start == "latest" else {}
        for p in parts:
            if p in self._start_at:
                self._positions[p] = self._start_at[p]
            elif p in committed and self.start != "earliest":
                self._positions[p] = committed[p]
            elif self.start == "latest":
                self._positions[p] = ends.get(p, 0)
            else:
                self._positions[p] = 0
        self._initialised = True

    @property
    def positions(self) -> dict[int, int]:
        self._init()
        return dict(self._positions)

    def poll(self, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` records from the assigned partitions; ``[]`` when caught up."""
        self._init()
        out: list[Record] = []
        for p, pos in self._positions.items():
            if len(out) >= max_records:
                break
            batch = self.backend.fetch(self.topic, p, pos, max_records=max_records - len(out))
            if batch:
                self._positions[p] = batch[-1].offset + 1
                out.extend(batch)
        return out

    def lag(self) -> int:
        self._init()
        ends = self.backend.end_offsets(self.topic)
        return sum(max(0, ends.get(p, 0) - pos) for p, pos in self._positions.items())

    def commit(self) -> None:
        if self.group is None:
            return
        self._init()
        self.backend.commit_offsets(self.group, self.topic, self._positions)

    def iter_until_end(self, batch: int = 500) -> Iterator[Record]:
        while True:
            records = self.poll(batch)
            if not records:
                return
            yield from records

    def follow(self, *, batch: int = 500, idle_sleep: float = 0.2) -> Iterator[Record]:
        while True:
            records = self.poll(batch)
            if not records:
                time.sleep(idle_sleep)
                continue
            yield from records
