"""The key table: the wrapped keys of one zone, stored with the zone's data.

Every key a zone uses is generated locally, wrapped by the zone KEK and kept here as a
:class:`KeyRecord`: data keys (``dek``) named by the 16-byte id each ciphertext carries, the
zone's root secret (``root``, for :meth:`ZoneCipher.secret`), the zone's deterministic field key
(``field``) and one key per data subject (``subject``, destroyed by crypto-shredding). Only
wrapped bytes are stored, so the table can live next to the data it protects; a reader in
another process needs this table and the zone's KEK, nothing else.

Rotation rewrites only ``wrapped``/``kek_version`` of rows (compare-and-set), never data.

:class:`SqliteKeyTable` is the embedded backend's table; a Kafka zone can implement
:class:`KeyTable` on a compacted topic. Thread-safe.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, cast

from ._errors import KeystoreError

__all__ = [
    "KeyKind",
    "KeyRecord",
    "KeyTable",
    "MemoryKeyTable",
    "SqliteKeyTable",
    "WrappedUpdate",
]

KeyKind = Literal["dek", "root", "field", "subject"]
_UNIQUE_KINDS = ("root", "field", "subject")  # at most one row per (kind, owner)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A wrapped key of one zone. ``owner`` is the subject reference for subject keys, else
    ``b""``; ``created_at`` is Unix time; ``encryptions`` is flushed by the writer."""

    key_id: bytes
    kind: KeyKind
    owner: bytes
    kek_version: int
    wrapped: bytes
    created_at: float
    encryptions: int = 0


@dataclass(frozen=True, slots=True)
class WrappedUpdate:
    """Replace ``key_id``'s wrapped key by ``wrapped`` if it is still ``expected``."""

    key_id: bytes
    expected: bytes
    wrapped: bytes
    kek_version: int


class KeyTable(ABC):
    """Storage for one zone's :class:`KeyRecord` rows. Use as a context manager."""

    @abstractmethod
    def insert(self, record: KeyRecord) -> KeyRecord:
        """Store ``record``. For ``root``, ``field`` and ``subject`` keys only one row may exist
        per ``(kind, owner)``: if one does, it is returned unchanged (the caller uses it)."""

    @abstractmethod
    def get(self, key_id: bytes) -> KeyRecord | None:
        """The row with ``key_id``."""

    @abstractmethod
    def find(self, kind: KeyKind, owner: bytes = b"") -> KeyRecord | None:
        """The unique row of ``kind``/``owner`` (not for ``dek``)."""

    @abstractmethod
    def records(self) -> Iterator[KeyRecord]:
        """Every row (a snapshot)."""

    @abstractmethod
    def replace_wrapped(
        self, key_id: bytes, *, expected: bytes, wrapped: bytes, kek_version: int
    ) -> bool:
        """Set a row's wrapped key if it still equals ``expected``; ``False`` if not."""

    def replace_wrapped_many(self, updates: Sequence[WrappedUpdate]) -> int:
        """:meth:`replace_wrapped` for many rows (one transaction where the storage has them);
        returns how many rows changed."""
        return sum(
            self.replace_wrapped(
                u.key_id, expected=u.expected, wrapped=u.wrapped, kek_version=u.kek_version
            )
            for u in updates
        )

    @abstractmethod
    def add_encryptions(self, key_id: bytes, count: int) -> None:
        """Add ``count`` to a data key's encryption counter."""

    @abstractmethod
    def delete_owner(self, kind: KeyKind, owner: bytes) -> int:
        """Delete (overwriting on disk where possible) every row of ``kind``/``owner``."""

    @abstractmethod
    def get_meta(self, name: str) -> int | None:
        """A small integer setting (``kek_version``: the newest KEK version a writer should use)."""

    @abstractmethod
    def set_meta(self, name: str, value: int) -> None:
        """Store a small integer setting."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the storage."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemoryKeyTable(KeyTable):
    """A key table in memory (tests, and wrap-only writers that need no persistence)."""

    def __init__(self) -> None:
        self._rows: dict[bytes, KeyRecord] = {}
        self._meta: dict[str, int] = {}
        self._lock = threading.Lock()

    def insert(self, record: KeyRecord) -> KeyRecord:
        with self._lock:
            if record.kind in _UNIQUE_KINDS:
                for row in self._rows.values():
                    if row.kind == record.kind and row.owner == record.owner:
                        return row
            if record.key_id in self._rows:
                raise KeystoreError("duplicate key id in key table")
            self._rows[record.key_id] = record
            return record

    def get(self, key_id: bytes) -> KeyRecord | None:
        return self._rows.get(key_id)

    def find(self, kind: KeyKind, owner: bytes = b"") -> KeyRecord | None:
        with self._lock:
            for row in self._rows.values():
                if row.kind == kind and row.owner == owner:
                    return row
        return None

    def records(self) -> Iterator[KeyRecord]:
        with self._lock:
            rows = list(self._rows.values())
        return iter(rows)

    def replace_wrapped(
        self, key_id: bytes, *, expected: bytes, wrapped: bytes, kek_version: int
    ) -> bool:
        with self._lock:
            row = self._rows.get(key_id)
            if row is None or row.wrapped != expected:
                return False
            self._rows[key_id] = replace(row, wrapped=wrapped, kek_version=kek_version)
            return True

    def add_encryptions(self, key_id: bytes, count: int) -> None:
        with self._lock:
            row = self._rows.get(key_id)
            if row is not None:
                self._rows[key_id] = replace(row, encryptions=row.encryptions + count)

    def delete_owner(self, kind: KeyKind, owner: bytes) -> int:
        with self._lock:
            doomed = [k for k, r in self._rows.items() if r.kind == kind and r.owner == owner]
            for k in doomed:
                del self._rows[k]
            return len(doomed)

    def get_meta(self, name: str) -> int | None:
        return self._meta.get(name)

    def set_meta(self, name: str, value: int) -> None:
        self._meta[name] = value


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tz_keys (
    key_id BLOB PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('dek', 'root', 'field', 'subject')),
    owner BLOB NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped BLOB NOT NULL,
    created_at REAL NOT NULL,
    encryptions INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS tz_keys_unique_owner ON tz_keys (kind, owner)
    WHERE kind != 'dek';
CREATE TABLE IF NOT EXISTS tz_keys_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_COLUMNS = "key_id, kind, owner, kek_version, wrapped, created_at, encryptions"


def _row(r: tuple[bytes, str, bytes, int, bytes, float, int]) -> KeyRecord:
    return KeyRecord(bytes(r[0]), cast(KeyKind, r[1]), bytes(r[2]), r[3], bytes(r[4]), r[5], r[6])


class SqliteKeyTable(KeyTable):
    """A key table in a SQLite file (created with mode 0600; tables ``tz_keys*``).

    ``secure_delete`` is on, so shredded rows are overwritten with zeros in the file, and a
    WAL (if the file uses one) is checkpointed and truncated after a delete.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        if not self._path.exists():
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._conn = self._connect()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA secure_delete = ON")
        self._pid = os.getpid()
        return conn

    @property
    def _db(self) -> sqlite3.Connection:
        # SQLite connections must not cross fork(): a child opens its own.
        if self._pid != os.getpid():
            self._conn = self._connect()
        return self._conn

    def __repr__(self) -> str:
        return f"SqliteKeyTable({str(self._path)!r})"

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    def insert(self, record: KeyRecord) -> KeyRecord:
        with self._lock:
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO tz_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    record.key_id,
                    record.kind,
                    record.owner,
                    record.kek_version,
                    record.wrapped,
                    record.created_at,
                    record.encryptions,
                ),
            )
            if cur.rowcount == 1:
                return record
        if record.kind == "dek":
            raise KeystoreError("duplicate key id in key table")
        existing = self.find(record.kind, record.owner)
        if existing is None:  # pragma: no cover - deleted between the two statements
            raise KeystoreError("key table changed concurrently; retry")
        return existing

    def _one(self, sql: str, args: tuple[object, ...]) -> KeyRecord | None:
        with self._lock:
            r = self._db.execute(sql, args).fetchone()
        return None if r is None else _row(r)

    def get(self, key_id: bytes) -> KeyRecord | None:
        return self._one(f"SELECT {_COLUMNS} FROM tz_keys WHERE key_id = ?", (key_id,))  # noqa: S608

    def find(self, kind: KeyKind, owner: bytes = b"") -> KeyRecord | None:
        return self._one(
            f"SELECT {_COLUMNS} FROM tz_keys WHERE kind = ? AND owner = ?",  # noqa: S608
            (kind, owner),
        )

    def records(self) -> Iterator[KeyRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM tz_keys").fetchall()  # noqa: S608
        return iter([_row(r) for r in rows])

    def replace_wrapped(
        self, key_id: bytes, *, expected: bytes, wrapped: bytes, kek_version: int
    ) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE tz_keys SET wrapped = ?, kek_version = ? WHERE key_id = ? AND wrapped = ?",
                (wrapped, kek_version, key_id, expected),
            )
            return cur.rowcount == 1

    def replace_wrapped_many(self, updates: Sequence[WrappedUpdate]) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                changed = 0
                for u in updates:
                    cur = self._db.execute(
                        "UPDATE tz_keys SET wrapped = ?, kek_version = ? "
                        "WHERE key_id = ? AND wrapped = ?",
                        (u.wrapped, u.kek_version, u.key_id, u.expected),
                    )
                    changed += cur.rowcount
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return changed

    def add_encryptions(self, key_id: bytes, count: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE tz_keys SET encryptions = encryptions + ? WHERE key_id = ?",
                (count, key_id),
            )

    def delete_owner(self, kind: KeyKind, owner: bytes) -> int:
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM tz_keys WHERE kind = ? AND owner = ?", (kind, owner)
            )
            # With a WAL, the old page images stay in the -wal file until a checkpoint.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return cur.rowcount

    def get_meta(self, name: str) -> int | None:
        with self._lock:
            r = self._db.execute(
                "SELECT value FROM tz_keys_meta WHERE name = ?", (name,)
            ).fetchone()
        return None if r is None else int(r[0])

    def set_meta(self, name: str, value: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO tz_keys_meta (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._conn.close()
