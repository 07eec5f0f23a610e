"""Record counts per time window: the ``aggregate`` audit level.

Example::

    from trustzones.audit import AuditLog, NoteSigner
    from trustzones.audit.windows import RecordWindows

    log = AuditLog.open("audit.db", signer=NoteSigner.generate("audit.example/main"))
    windows = RecordWindows(log.append_many, window_s=60, pending_dir="audit/pending")
    windows.count(principal="svc", zone="analytics", topic="clicks", action="produce",
                  records=[(0, 41, 120), (0, 42, 98)])    # (partition, offset, bytes)
    windows.close()                                       # writes the open window's counts

A zone at audit level ``aggregate`` does not write an event per record or per batch: it counts
records per key ``(principal, zone, topic, action, decision)`` in fixed windows of
``window_s`` seconds aligned to the Unix epoch (``[k * window_s, (k + 1) * window_s)``), and
writes one ``io.trustzones.record.aggregate`` event per key and window with the count, the bytes,
the first and last offset per partition and the window's start and end. The access decisions
(allow and deny) are still audited one by one by the caller; only record counting aggregates.

When counts are written:

* when a record is counted at or after the open window's end (all keys share the window, so
  every key's counts are written together, in one atomic append);
* on :meth:`RecordWindows.flush` and :meth:`RecordWindows.close` (``Workspace.close()``);
* at interpreter exit, for windows still open then (a failure there is printed to stderr, and
  the counts stay in the pending file for the next process to write).

A clock that steps backwards counts into the open window (records are never dropped or put in a
window already written). Times come from ``clock`` (injectable, for tests).

**Crashes.** Every ``count()`` first adds the batch to a small SQLite file of this process in
``pending_dir`` (WAL, ``synchronous=NORMAL``: one write, no fsync) and then to memory. After
a crash (SIGKILL, an uncaught signal, ``os._exit``) the counts are in that file, and the next
process that calls :func:`recover_pending` (the workspace does when it opens its audit log)
writes them as events marked ``recovered: true``: a SIGKILL loses nothing. An operating system
crash or power cut may lose the counts of the window that was open (at most ``window_s``
seconds of counting in each process): syncing that file on every batch would cost an fsync per
batch, as much as the per-batch event this level replaces, and the records themselves are
already counted on a durable path only at ``access`` and ``per-message`` levels. Choose one of
those for a zone where this matters.

Event ids are derived from (pending file, window, key), so writing the same counts twice is
refused by the log as a repeated id: a crash between writing the events and clearing the pending
file cannot count anything twice. A pending file belongs to a live process while that process
holds an exclusive ``flock`` on its lock file; only files whose lock is free are recovered.

Not thread-safe on its own: one instance per workspace (the workspace is single-threaded);
the exit hook takes the same lock as :meth:`count`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import sqlite3
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from trustzones.audit._errors import AuditEventRejected
from trustzones.audit.events import AuditEvent, aggregate
from trustzones.errors import AuditError

__all__ = ["DEFAULT_WINDOW_S", "RecordWindows", "recover_pending"]

DEFAULT_WINDOW_S = 60

Append = Callable[[Sequence[AuditEvent]], object]
Key = tuple[str, str, str, str, str]
"""(principal, zone, topic, action, decision)"""

_US = 1_000_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    principal TEXT NOT NULL,
    zone TEXT NOT NULL,
    topic TEXT NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    window_start_us INTEGER NOT NULL,
    window_end_us INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    PRIMARY KEY (principal, zone, topic, action, decision, window_start_us, partition)
) WITHOUT ROWID
"""
_UPSERT = """
INSERT INTO counts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO UPDATE SET
    records = records + excluded.records,
    bytes = bytes + excluded.bytes,
    first_offset = min(first_offset, excluded.first_offset),
    last_offset = max(last_offset, excluded.last_offset)
"""


@dataclass(slots=True)
class _Partition:
    records: int = 0
    bytes: int = 0
    first: int = -1
    last: int = -1

    def add(self, offset: int, size: int) -> None:
        self.records += 1
        self.bytes += size
        self.first = offset if self.first < 0 else min(self.first, offset)
        self.last = max(self.last, offset)


@dataclass(slots=True)
class _Window:
    start_us: int
    end_us: int
    keys: dict[Key, dict[int, _Partition]] = field(default_factory=dict)


def _time_us(when: datetime) -> int:
    if when.tzinfo is None:
        raise AuditError("the audit clock must return timezone-aware datetimes")
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def _at(us: int) -> datetime:
    return datetime.fromtimestamp(us // _US, tz=UTC).replace(microsecond=us % _US)


def _event_id(owner: str, start_us: int, key: Key) -> str:
    """A UUIDv8 naming (pending file, window, key): rewriting the same counts repeats it."""
    digest = bytearray(hashlib.sha256("\x1f".join((owner, str(start_us), *key)).encode()).digest())
    digest[6] = digest[6] & 0x0F | 0x80  # version 8
    digest[8] = digest[8] & 0x3F | 0x80  # variant 10
    return str(uuid.UUID(bytes=bytes(digest[:16])))


def _events(
    owner: str,
    start_us: int,
    end_us: int,
    keys: dict[Key, dict[int, _Partition]],
    now: datetime,
    *,
    recovered: bool,
) -> list[AuditEvent]:
    out = []
    for key in sorted(keys):
        principal, zone, topic, action, decision = key
        parts = keys[key]
        count = sum(p.records for p in parts.values())
        out.append(
            aggregate(
                principal=principal,
                zone=zone,
                topic=topic,
                action=action,  # type: ignore[arg-type]  # checked when counted
                allowed=count if decision == "allow" else 0,
                denied=count if decision == "deny" else 0,
                window_start=_at(start_us),
                window_end=_at(end_us),
                at=now,
                byte_count=sum(p.bytes for p in parts.values()),
                offsets={n: (p.first, p.last) for n, p in parts.items()},
                event_id=_event_id(owner, start_us, key),
                recovered=True if recovered else None,
            )
        )
    return out


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # WAL + NORMAL: a commit is a write() into the WAL, no fsync. It survives the death of
    # the process (the kernel has the data), not a power cut; see the module docstring.
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(_SCHEMA)
    return con


class RecordWindows:
    """Counts records per (principal, zone, topic, action, decision) and time window.

    ``append`` writes a batch of events atomically (``AuditLog.append_many``). With
    ``pending_dir`` the open counts are also kept in a file there, so a crash loses nothing
    (see the module docstring); without it they live only in memory.
    """

    def __init__(
        self,
        append: Append,
        *,
        window_s: int = DEFAULT_WINDOW_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pending_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if window_s < 1:
            raise ValueError("window_s must be at least 1 second")
        self._append = append
        self._window_us = window_s * _US
        self._clock = clock
        self._lock = threading.Lock()
        self._open: _Window | None = None
        self._closed = False
        self.owner = uuid.uuid4().hex
        self._con: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._paths: tuple[Path, Path] | None = None
        if pending_dir is not None:
            directory = Path(pending_dir)
            try:
                directory.mkdir(parents=True, exist_ok=True)
                lock_path = directory / f"{self.owner}.lock"
                self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                db_path = directory / f"{self.owner}.db"
                self._con = _connect(db_path)
                self._paths = (db_path, lock_path)
            except (OSError, sqlite3.Error) as exc:
                self._release()
                raise AuditError(
                    f"cannot keep audit counts in {directory}: {exc}; check that the directory "
                    "is writable"
                ) from exc
        _live.add(self)

    def count(
        self,
        *,
        principal: str,
        zone: str,
        topic: str,
        action: Literal["produce", "consume"],
        records: Iterable[tuple[int, int, int]],
        decision: Literal["allow", "deny"] = "allow",
    ) -> None:
        """Count ``(partition, offset, bytes)`` records; writes the windows this one closes.

        Raises :class:`AuditError` when the counts cannot be kept or the closed windows
        cannot be written (fail closed: the caller must not go on as if audited).
        """
        if action not in ("produce", "consume") or decision not in ("allow", "deny"):
            raise AuditError(f"cannot count {action!r}/{decision!r} records: not a record action")
        key: Key = (principal, zone, topic, action, decision)
        batch: dict[int, _Partition] = {}
        for partition, offset, size in records:
            part = batch.get(partition)
            if part is None:
                part = batch[partition] = _Partition()
            part.add(offset, size)
        if not batch:
            return
        now_us = _time_us(self._clock())
        with self._lock:
            if self._closed:
                raise AuditError("the record counter is closed; nothing was counted")
            window = self._open
            if window is not None and now_us >= window.end_us:
                self._write(window, recovered=False)
                window = None
            if window is None:
                start = now_us - now_us % self._window_us
                window = self._open = _Window(start, start + self._window_us)
            # 1. The pending file first: once it has the batch, a crash cannot lose it.
            if self._con is not None:
                rows = [
                    (*key, window.start_us, window.end_us, n, p.records, p.bytes, p.first, p.last)
                    for n, p in batch.items()
                ]
                try:
                    self._con.executemany(_UPSERT, rows)
                except sqlite3.Error as exc:
                    raise AuditError(f"cannot keep audit counts: {exc}") from exc
            # 2. Then memory, which the events are made from.
            parts = window.keys.setdefault(key, {})
            for n, p in batch.items():
                mine = parts.get(n)
                if mine is None:
                    parts[n] = p
                else:
                    mine.records += p.records
                    mine.bytes += p.bytes
                    mine.first = min(mine.first, p.first)
                    mine.last = max(mine.last, p.last)

    def flush(self) -> int:
        """Write the open window's counts now; return how many events were written."""
        with self._lock:
            window, self._open = self._open, None
            if window is None:
                return 0
            return self._write(window, recovered=False)

    def _write(self, window: _Window, *, recovered: bool) -> int:
        """Write a window's events, then forget them (lock held)."""
        self._open = None
        if not window.keys:
            return 0
        events = _events(
            self.owner, window.start_us, window.end_us, window.keys, self._clock(),
            recovered=recovered,
        )  # fmt: skip
        try:
            self._append(events)
        except BaseException:
            self._open = window  # still counted: a later flush (or recovery) writes it
            raise
        if self._con is not None:
            try:
                self._con.execute(
                    "DELETE FROM counts WHERE window_start_us = ?", (window.start_us,)
                )
            except sqlite3.Error as exc:  # the events are written; their ids stop a rewrite
                raise AuditError(f"cannot clear written audit counts: {exc}") from exc
        return len(events)

    def close(self) -> None:
        """Write the open window's counts and remove the pending file (idempotent).

        If writing fails the pending file stays, for :func:`recover_pending`, and this raises.
        """
        with self._lock:
            if self._closed:
                return
            window, self._open = self._open, None
            if window is not None:
                self._write(window, recovered=False)
            self._closed = True
            paths = self._paths
            self._release()
        _live.discard(self)
        if paths is not None:
            for path in (paths[0], Path(f"{paths[0]}-wal"), Path(f"{paths[0]}-shm"), paths[1]):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _release(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _at_exit(self) -> None:
        try:
            self.close()
        except Exception as exc:  # no caller to raise to: say so, keep the file
            print(
                f"trustzones: could not write the open audit counts at exit ({exc}); they are "
                "kept and will be written by the next process that opens the audit log",
                file=sys.stderr,
            )


_live: weakref.WeakSet[RecordWindows] = weakref.WeakSet()


@atexit.register
def _flush_all_at_exit() -> None:
    for windows in list(_live):
        windows._at_exit()


def recover_pending(pending_dir: str | os.PathLike[str], append: Append) -> int:
    """Write the counts left by processes that stopped without writing them; return how many
    events were written. Files of live processes (their lock is held) are left alone."""
    directory = Path(pending_dir)
    if not directory.is_dir():
        return 0
    written = 0
    for db_path in sorted(directory.glob("*.db")):
        owner = db_path.stem
        lock_path = directory / f"{owner}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            if not db_path.exists():  # recovered by another process meanwhile
                continue
            written += _recover_file(db_path, owner, append)
            for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm"), lock_path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        finally:
            os.close(fd)
    return written


def _recover_file(db_path: Path, owner: str, append: Append) -> int:
    try:
        con = _connect(db_path)
        try:
            rows = con.execute(
                "SELECT principal, zone, topic, action, decision, window_start_us, "
                "window_end_us, partition, records, bytes, first_offset, last_offset "
                "FROM counts ORDER BY window_start_us"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the pending audit counts in {db_path}: {exc}") from exc
    windows: dict[tuple[int, int], dict[Key, dict[int, _Partition]]] = {}
    for p, z, t, a, d, start, end, n, records, size, first, last in rows:
        keys = windows.setdefault((int(start), int(end)), {})
        keys.setdefault((p, z, t, a, d), {})[int(n)] = _Partition(records, size, first, last)
    written = 0
    now = datetime.now(UTC)
    for (start, end), keys in sorted(windows.items()):
        for event in _events(owner, start, end, keys, now, recovered=True):
            try:
                append([event])
            except AuditEventRejected:
                continue  # already written before the crash (same id)
            written += 1
    return written
