"""The embedded backend: one SQLite database file per zone.

Layout of a zone file (WAL mode):

- ``topics(name, partitions, retention_ms)``
- ``partitions(topic, partition, next_offset)`` — the high watermark, kept in the same
  transaction as the appends so offsets never repeat, even after retention deleted records
- ``records(topic, partition, offset, key, value, headers, ts)`` — one row per record
- ``group_offsets(grp, topic, partition, next_offset)`` — committed consumer positions; the
  topic may belong to another zone (a flow's source position kept in its destination)

Durability: each ``produce`` and each transaction is one SQLite write transaction opened with
``BEGIN IMMEDIATE`` (so concurrent writers queue on the database lock instead of failing
half way). With ``synchronous=FULL`` (the default) a record is on disk when ``produce``
returns; a process killed at any moment leaves either the whole batch or none of it.

Encryption at rest: given a :class:`RecordCipher`, the key, headers and value of every record
are sealed together into ``value`` (``key`` and ``headers`` stay NULL), with associated data
binding zone, topic, partition and offset, so a row copied to another place does not decrypt.

A sealed row that does not open (a changed byte, a row moved to another topic, partition,
offset or zone, a plaintext row, a data key this zone does not hold) never stops a reader, as
on the Kafka backend: ``fetch`` and consumers return a stand-in at its offset (``key=None``,
``value=b""``, headers :data:`~trustzones.streams.base.UNDECRYPTABLE_HEADERS` with the one
opaque message of :class:`~trustzones.errors.DecryptionFailed`), the reason, with topic,
partition and offset, goes to the ``audit`` callback (event
:data:`~trustzones.streams.base.RECORD_UNDECRYPTABLE`), and the records after it follow. A flow
then quarantines it, so every record is still accounted for. A backend given a wrap-only
sealer (a flow writing down) may produce but not read: ``fetch`` raises
:class:`~trustzones.errors.KeyAccessDenied`, whatever is stored.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

from trustzones._sqlite import insert_rows
from trustzones.errors import (
    DecryptionFailed,
    KeyAccessDenied,
    StreamError,
    TransactionAborted,
    UnknownTopic,
)
from trustzones.streams._partition import partition_for
from trustzones.streams.base import (
    Backend,
    Header,
    NewRecord,
    Record,
    RecordAudit,
    RecordPosition,
    Transaction,
    withhold,
)

__all__ = ["EmbeddedBackend", "RecordCipher", "RecordSealer"]

_log = logging.getLogger("trustzones.streams.embedded")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, retention_ms INTEGER,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partitions (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    key BLOB, value BLOB NOT NULL, headers BLOB, ts INTEGER NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
) WITHOUT ROWID;
"""


class RecordSealer(Protocol):
    """Seals record bytes at rest (a writer that may not read, such as a flow writing down)."""

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes: ...


@runtime_checkable
class RecordCipher(RecordSealer, Protocol):
    """Seals and opens record bytes; the keys part provides zone-key implementations."""

    def open(self, ciphertext: bytes, *, aad: bytes) -> bytes: ...


#: The sealed plaintext's head: key flag, key length, header block length; then the key, the
#: header block and the value. In the header block, each header: name and value length, name,
#: value. The Kafka backend seals the same layout.
_SEALED_HEAD = struct.Struct(">BII")
_HEADER_HEAD = struct.Struct(">HI")


def _load_native_pack() -> Callable[[object], bytes | None] | None:
    """``trustzones_native.pack_headers`` (``native/src/records.rs``: the bytes of
    :func:`_pack_headers`, or None for what it leaves to Python), if the native core is
    installed and has it."""
    try:
        native = importlib.import_module("trustzones_native")
    except ImportError:
        return None
    return cast("Callable[[object], bytes | None] | None", getattr(native, "pack_headers", None))


_native_pack_headers = _load_native_pack()


def _pack_header(name: str, value: bytes) -> bytes:
    encoded = name.encode()
    return _HEADER_HEAD.pack(len(encoded), len(value)) + encoded + value


def _pack_headers(headers: Sequence[Header]) -> bytes:
    return b"".join([_pack_header(k, v) for k, v in headers])


def _unpack_headers(data: bytes | None) -> tuple[Header, ...]:
    if not data:
        return ()
    out: list[Header] = []
    i = 0
    step = _HEADER_HEAD.size
    while i < len(data):
        kl, vl = _HEADER_HEAD.unpack_from(data, i)
        i += step
        out.append((data[i : i + kl].decode(), bytes(data[i + kl : i + kl + vl])))
        i += kl + vl
    return tuple(out)


#: Bounds of :class:`_HeaderCodec`'s caches: entries, and the longest value (packing) or header
#: block (unpacking) kept.
_CACHE_ENTRIES = 4096
_CACHE_LONGEST = 512


class _HeaderCodec:
    """The header block of a record (per header: ``>HI`` name and value lengths, name,
    value), with two small caches; both backends keep one each (the Kafka backend seals
    the same layout).

    Headers repeat: a producer's lineage headers are the same on every record of a batch,
    and a flow's share all but their source position. Packing caches the bytes of each
    (name, value) pair; unpacking caches the decoded tuple of each whole block. Both are
    bounded (:data:`_CACHE_ENTRIES` entries, emptied when full; nothing longer than
    :data:`_CACHE_LONGEST` bytes), hold only what their backend wrote or read, and go with
    it. Results are identical to ``_pack_headers`` / ``_unpack_headers``.
    """

    __slots__ = ("_native", "_packed", "_unpacked")

    def __init__(self, *, native: bool = True) -> None:
        self._packed: dict[Header, bytes] = {}
        self._unpacked: dict[bytes, tuple[Header, ...]] = {}
        # The native core packs a whole block in one call (without: the cached Python path).
        self._native = _native_pack_headers if native else None

    def pack(self, headers: Sequence[Header]) -> bytes:
        if self._native is not None:
            block = self._native(headers)
            if block is not None:
                return block
        cache = self._packed
        parts: list[bytes] = []
        for header in headers:
            try:
                packed = cache.get(header)
            except TypeError:  # an unhashable pair (a list, a bytearray value): not cached
                packed = None
                cacheable = False
            else:
                cacheable = True
            if packed is None:
                name, value = header
                packed = _pack_header(name, value)
                if cacheable and len(value) <= _CACHE_LONGEST:
                    if len(cache) >= _CACHE_ENTRIES:
                        cache.clear()
                    cache[header] = packed
            parts.append(packed)
        return b"".join(parts)

    def unpack(self, block: bytes) -> tuple[Header, ...]:
        if not block:
            return ()
        cache = self._unpacked
        headers = cache.get(block)
        if headers is None:
            headers = _unpack_headers(block)  # raises on a malformed block: never cached
            if len(block) <= _CACHE_LONGEST:
                if len(cache) >= _CACHE_ENTRIES:
                    cache.clear()
                cache[block] = headers
        return headers


def _pack_sealed(key: bytes | None, headers: bytes, value: bytes) -> bytes:
    k = b"" if key is None else key
    flag = 0 if key is None else 1
    return _SEALED_HEAD.pack(flag, len(k), len(headers)) + k + headers + value


#: Why a row of a sealed zone did not give its record (audited with the stand-in).
_NOT_SEALED = "record is not sealed (plaintext row?)"
_DOES_NOT_OPEN = (
    "record does not open here: changed, moved from another topic, partition or zone, or "
    "sealed under a key this zone does not hold"
)
_MALFORMED = "record opened but its contents are malformed"


class EmbeddedBackend(Backend):
    """A zone stored in one SQLite file. Example::

    with EmbeddedBackend("analytics", Path("data/analytics.db")) as b:
        b.ensure_topic("clicks", partitions=2)
        b.produce("clicks", [NewRecord(value=b"{}")])
    """

    def __init__(
        self,
        zone: str,
        path: Path,
        *,
        cipher: RecordSealer | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout_s: float = 30.0,
        audit: RecordAudit | None = None,
    ) -> None:
        """``cipher`` seals records at rest (a :class:`RecordCipher` also opens them; a
        wrap-only sealer may only write); ``audit`` receives the reasons records did not open
        (without it they are logged as warnings)."""
        self.zone = zone
        self.path = Path(path)
        self._cipher = cipher
        self._audit = audit
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._partitions: dict[str, int] = {}
        self._rr = itertools.count()
        self._last_purge: dict[str, float] = {}
        self._headers = _HeaderCodec()
        self._aad_prefixes: dict[tuple[str, int], bytes] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            if not self._has_schema(db):
                db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StreamError(
                f"zone {self.zone!r}: cannot open its database {self.path} ({exc}). Check that "
                "the data directory exists and is writable."
            ) from exc
        self._db = db

    @staticmethod
    def _has_schema(db: sqlite3.Connection) -> bool:
        row = db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='group_offsets'"
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StreamError(f"zone {self.zone!r}: database busy or locked ({exc}).") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise TransactionAborted(f"zone {self.zone!r}: commit failed ({exc}).") from exc

    # -- topics ---------------------------------------------------------------------------
    def ensure_topic(self, topic: str, *, partitions: int, retention_ms: int | None = None) -> None:
        if partitions < 1:
            raise StreamError(f"topic {topic!r}: partitions must be ≥ 1, got {partitions}")
        with self._write() as db:
            row = db.execute("SELECT partitions FROM topics WHERE name=?", (topic,)).fetchone()
            now = int(time.time() * 1000)
            if row is None:
                db.execute(
                    "INSERT INTO topics VALUES (?,?,?,?)", (topic, partitions, retention_ms, now)
                )
                current = 0
            else:
                current = int(row[0])
                if partitions > current:
                    db.execute("UPDATE topics SET partitions=? WHERE name=?", (partitions, topic))
                db.execute("UPDATE topics SET retention_ms=? WHERE name=?", (retention_ms, topic))
            for p in range(current, partitions):
                db.execute("INSERT OR IGNORE INTO partitions VALUES (?,?,0)", (topic, p))
        self._partitions.pop(topic, None)

    def list_topics(self) -> dict[str, int]:
        return {
            str(n): int(p)
            for n, p in self.db.execute("SELECT name, partitions FROM topics ORDER BY name")
        }

    def partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is not None:
            return n
        row = self.db.execute("SELECT partitions FROM topics WHERE name=?", (topic,)).fetchone()
        if row is None:
            raise UnknownTopic(
                f"topic {topic!r} does not exist in zone {self.zone!r}. Declare it in "
                "trustzones.yaml (or create it) first."
            )
        self._partitions[topic] = int(row[0])
        return int(row[0])

    # -- records --------------------------------------------------------------------------
    def _aad_prefix(self, topic: str, partition: int) -> bytes:
        """The associated data of a record of ``topic`` in ``partition`` up to its offset,
        ``tz1 NUL zone NUL topic NUL partition NUL`` (one per partition, remembered)."""
        prefix = self._aad_prefixes.get((topic, partition))
        if prefix is None:
            prefix = f"tz1\x00{self.zone}\x00{topic}\x00{partition}\x00".encode()
            if len(self._aad_prefixes) < 4096:
                self._aad_prefixes[(topic, partition)] = prefix
        return prefix

    def _append(
        self, db: sqlite3.Connection, topic: str, records: Sequence[NewRecord]
    ) -> list[RecordPosition]:
        n = self.partition_count(topic)
        targets: list[int] = []
        for r in records:
            if r.partition is not None:
                if not 0 <= r.partition < n:
                    raise StreamError(
                        f"topic {topic!r} has {n} partitions; "
                        f"partition {r.partition} is out of range"
                    )
                targets.append(r.partition)
            elif r.key is not None:
                targets.append(partition_for(r.key, n))
            else:
                targets.append(next(self._rr) % n)
        nexts: dict[int, int] = {}
        for p in set(targets):
            row = db.execute(
                "SELECT next_offset FROM partitions WHERE topic=? AND partition=?", (topic, p)
            ).fetchone()
            nexts[p] = int(row[0]) if row else 0
        now = int(time.time() * 1000)
        rows: list[tuple[Any, ...]] = []
        positions: list[RecordPosition] = []
        cipher = self._cipher
        add_row, add_pos = rows.append, positions.append
        prefixes = self._aad_prefixes
        for r, p in zip(records, targets, strict=True):
            off = nexts[p]
            nexts[p] = off + 1
            ts = now if r.timestamp_ms is None else r.timestamp_ms
            headers = self._headers.pack(r.headers) if r.headers else b""
            # Blobs as bytearrays, and no NULL parameters where a column's default is NULL:
            # see trustzones._sqlite (about 3 us less per sealed record).
            if cipher is not None:
                prefix = prefixes.get((topic, p)) or self._aad_prefix(topic, p)
                plain = _pack_sealed(r.key, headers, r.value)
                blob = cipher.seal(plain, aad=b"%b%d" % (prefix, off))
                add_row((topic, p, off, bytearray(blob), ts))
            else:
                key = None if r.key is None else bytearray(r.key)
                add_row((topic, p, off, key, bytearray(r.value), bytearray(headers) or None, ts))
            add_pos(RecordPosition(topic, p, off))
        if cipher is not None:
            insert_rows(db, 'INSERT INTO records (topic, partition, "offset", value, ts)', 5, rows)
        else:
            insert_rows(
                db,
                'INSERT INTO records (topic, partition, "offset", key, value, headers, ts)',
                7,
                rows,
            )
        db.executemany(
            "UPDATE partitions SET next_offset=? WHERE topic=? AND partition=?",
            [(nxt, topic, p) for p, nxt in nexts.items()],
        )
        return positions

    def produce(self, topic: str, records: Sequence[NewRecord]) -> list[RecordPosition]:
        if not records:
            return []
        with self._write() as db:
            positions = self._append(db, topic, records)
        self._maybe_purge(topic)
        return positions

    def fetch(
        self, topic: str, partition: int, offset: int, *, max_records: int = 500
    ) -> list[Record]:
        n = self.partition_count(topic)
        if not 0 <= partition < n:
            raise StreamError(f"topic {topic!r} has no partition {partition}")
        rows = self.db.execute(
            'SELECT "offset", key, value, headers, ts FROM records '
            'WHERE topic=? AND partition=? AND "offset">=? ORDER BY "offset" LIMIT ?',
            (topic, partition, offset, max_records),
        ).fetchall()
        cipher = self._cipher
        if cipher is None:
            # tuple.__new__ builds the named tuples without a Python-level call per record.
            new = tuple.__new__
            unpack = self._headers.unpack
            return [
                new(
                    Record,
                    (
                        topic,
                        partition,
                        off,
                        key,
                        value,
                        unpack(headers) if headers else (),
                        ts,
                    ),
                )
                for off, key, value, headers, ts in rows
            ]
        if not isinstance(cipher, RecordCipher):
            raise KeyAccessDenied(
                f"this process may write to zone {self.zone!r} but not read it (wrap-only keys)"
            )
        return self._open_rows(cipher, topic, partition, rows)

    def _open_rows(
        self, cipher: RecordCipher, topic: str, partition: int, rows: list[Any]
    ) -> list[Record]:
        """The records of the sealed ``rows`` (offset, key, value, headers, timestamp) as
        produced, or the undecryptable stand-in of each that does not open (the reason is
        audited)."""
        prefix = self._aad_prefix(topic, partition)
        open_ = cipher.open
        unpack_headers = self._headers.unpack
        head, at = _SEALED_HEAD.unpack_from, _SEALED_HEAD.size
        new = tuple.__new__  # the named tuples without a Python-level call per record
        out: list[Record] = []
        add = out.append
        for offset, key, sealed, headers, ts in rows:
            # A sealed row keeps key and headers inside the ciphertext; anything else in
            # those columns (or a value that is not a blob) was not written by a sealing
            # backend.
            if key is not None or headers is not None or not isinstance(sealed, bytes):
                add(self._undecryptable(topic, partition, offset, ts, _NOT_SEALED))
                continue
            try:
                plain = open_(sealed, aad=b"%b%d" % (prefix, offset))
            except DecryptionFailed:
                add(self._undecryptable(topic, partition, offset, ts, _DOES_NOT_OPEN))
                continue
            try:
                flag, kl, hl = head(plain, 0)
                real_key = plain[at : at + kl] if flag else None
                unpacked = unpack_headers(plain[at + kl : at + kl + hl])
            except (struct.error, UnicodeDecodeError):
                add(self._undecryptable(topic, partition, offset, ts, _MALFORMED))
                continue
            value = plain[at + kl + hl :]
            add(new(Record, (topic, partition, offset, real_key, value, unpacked, ts)))
        return out

    def _undecryptable(
        self, topic: str, partition: int, offset: int, ts: int, reason: str
    ) -> Record:
        return withhold(self._audit, self.zone, (topic, partition, offset, ts), reason, _log)

    def end_offsets(self, topic: str) -> dict[int, int]:
        self.partition_count(topic)
        return {
            int(p): int(o)
            for p, o in self.db.execute(
                "SELECT partition, next_offset FROM partitions WHERE topic=? ORDER BY partition",
                (topic,),
            )
        }

    def start_offsets(self, topic: str) -> dict[int, int]:
        """Partition → lowest offset still stored (retention may have removed older ones)."""
        ends = self.end_offsets(topic)
        out = {}
        for p, end in ends.items():
            row = self.db.execute(
                'SELECT min("offset") FROM records WHERE topic=? AND partition=?', (topic, p)
            ).fetchone()
            out[p] = int(row[0]) if row and row[0] is not None else end
        return out

    # -- groups and transactions ----------------------------------------------------------
    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        return {
            int(p): int(o)
            for p, o in self.db.execute(
                "SELECT partition, next_offset FROM group_offsets WHERE grp=? AND topic=?",
                (group, topic),
            )
        }

    @staticmethod
    def _store_offsets(
        db: sqlite3.Connection, group: str, topic: str, offsets: Mapping[int, int]
    ) -> None:
        now = int(time.time() * 1000)
        db.executemany(
            "INSERT INTO group_offsets VALUES (?,?,?,?,?) ON CONFLICT (grp, topic, partition) "
            "DO UPDATE SET next_offset=excluded.next_offset, updated_ms=excluded.updated_ms",
            [(group, topic, int(p), int(o), now) for p, o in offsets.items()],
        )

    def commit_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        if not offsets:
            return
        with self._write() as db:
            self._store_offsets(db, group, topic, offsets)

    @contextmanager
    def transaction(self, transactional_id: str, *, visible: bool = True) -> Iterator[Transaction]:
        # A committed SQLite transaction is readable at once: ``visible`` changes nothing.
        with self._write() as db:
            yield _EmbeddedTransaction(self, db)

    # -- retention ------------------------------------------------------------------------
    def _maybe_purge(self, topic: str, *, every_s: float = 60.0) -> None:
        now = time.monotonic()
        if now - self._last_purge.get(topic, 0.0) < every_s:
            return
        self._last_purge[topic] = now
        self.enforce_retention(topic)

    def enforce_retention(self, topic: str, *, now_ms: int | None = None) -> int:
        """Delete records older than the topic's retention; returns how many went."""
        row = self.db.execute("SELECT retention_ms FROM topics WHERE name=?", (topic,)).fetchone()
        if row is None or row[0] is None:
            return 0
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(row[0])
        with self._write() as db:
            cur = db.execute("DELETE FROM records WHERE topic=? AND ts<?", (topic, cutoff))
            return cur.rowcount


class _EmbeddedTransaction(Transaction):
    def __init__(self, backend: EmbeddedBackend, db: sqlite3.Connection) -> None:
        self._backend = backend
        self._db = db

    def produce(self, topic: str, records: Sequence[NewRecord]) -> None:
        if records:
            self._backend._append(self._db, topic, records)

    def store_offsets(self, group: str, topic: str, offsets: Mapping[int, int]) -> None:
        if offsets:
            self._backend._store_offsets(self._db, group, topic, offsets)
