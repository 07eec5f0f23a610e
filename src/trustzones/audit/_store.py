"""The audit zone's SQLite file: schema, connections and the store-backed subtree hashes.

Tables:

* ``events``: one row per leaf: ``leaf_index`` (0-based), the event's id and time, its
  ``facet``, ``leaf_hash`` and ``body`` (the RFC 8785 canonical JSON that was hashed). Indexed
  by id only (unique: it refuses a repeated id, and ``get``/``prove`` look events up by it).
  Searches scan in leaf order and stop at their limit: every secondary index is a second
  B-tree insert per appended event, and the time and (principal, time) indexes cost about 30%
  of the bare insert rate (78,800 -> 109,000 rows/s without them, measured on the
  benchmark's events).
* ``facets``: the distinct (principal, zone, action, decision) tuples readers filter on, one
  row each; an event refers to its tuple by ``facet``. The same few tuples repeat in event
  after event, and one integer per row instead of four strings made the insert about 20%
  cheaper (17,200 instead of 22,000 instructions per row, callgrind). The copies in ``events``
  and ``facets`` are checked against the body by ``verify_log``.
* ``nodes``: the hash of every complete perfect subtree of ``2**NODE_LEVEL`` leaves or more,
  saved as appends complete them, so that a proof needs O(log n) reads.
* ``state``: one row: tree size, the compact-range frontier and the signed head (a checkpoint
  note for the whole log, re-signed by every append).
* ``checkpoints``: signed checkpoints kept for history, taken every ``checkpoint_interval``
  leaves and on request.
* ``meta``: the log's origin, verifier key and schema version (its layout, below).

Layouts: logs created before ``facets`` (schema "1") keep their four search columns in
``events`` (principal, zone, action, decision) and, the oldest of them, two more indexes; they
open, append, search and verify unchanged, each in its own layout (see :func:`layout`). Stored
events are never rewritten, so there is no migration.

Triggers refuse ``UPDATE`` and ``DELETE`` on events, facets, nodes, checkpoints and meta. They
only stop mistakes in code: someone with the file can drop them, which is what the Merkle tree
and the signatures are for.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from trustzones.audit.merkle import node_hash, range_hash
from trustzones.errors import AuditError

__all__ = [
    "NODE_LEVEL",
    "StoreSubtrees",
    "connect",
    "create_schema",
    "layout",
]

NODE_LEVEL = 8
"""Subtrees of 256 leaves and more are saved; smaller ones are rehashed from leaf hashes."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS facets (
    id INTEGER PRIMARY KEY,
    principal TEXT NOT NULL,
    zone TEXT NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    UNIQUE (principal, zone, action, decision)
);
CREATE TABLE IF NOT EXISTS events (
    leaf_index INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    facet INTEGER NOT NULL,
    leaf_hash BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tree_size INTEGER NOT NULL,
    frontier BLOB NOT NULL,
    head TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY,
    tree_size INTEGER NOT NULL UNIQUE,
    note TEXT NOT NULL
);
"""

_APPEND_ONLY = ("events", "facets", "nodes", "checkpoints", "meta")


def layout(con: sqlite3.Connection) -> int:
    """The layout of the log's ``events`` table: 2 with ``facets``, 1 with the search columns
    in ``events`` itself (logs created before schema 2)."""
    columns = {str(row[1]) for row in con.execute("PRAGMA table_info(events)")}
    return 2 if "facet" in columns else 1


def create_schema(con: sqlite3.Connection) -> None:
    """Create the tables and append-only triggers (inside the caller's transaction).

    A log that already has its tables keeps them as they are (an older layout included)."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone() is None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
    tables = {str(r[0]) for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table in _APPEND_ONLY:
        if table not in tables:
            continue
        for op in ("UPDATE", "DELETE"):
            con.execute(
                f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: {op} on {table} "
                "is refused'); END"
            )


def connect(path: Path, *, read_only: bool, busy_timeout_s: float) -> sqlite3.Connection:
    """Open the audit database; read-only connections never create or change the file."""
    try:
        if read_only:
            if not path.is_file():
                raise AuditError(
                    f"no audit log at {path}: check the --db path (the log is created by the "
                    "first append)"
                )
            con = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                timeout=busy_timeout_s,
                check_same_thread=False,
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(
                path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=False
            )
            # Big pages for a new file (no effect on an existing one): events are ~500-byte
            # rows appended in order, and 16 KiB pages made batched appends ~20% faster.
            con.execute("PRAGMA page_size=16384")
            # WAL lets readers and verify run while appenders write; FULL syncs the WAL on
            # every commit, so an append that returned survives a power cut.
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            # A transaction's dirty pages may fill up to 64 MiB (4,096 pages) before SQLite
            # spills them to the WAL ahead of the commit; by default that starts past the
            # page cache's 2 MiB, which made batches of 10,000 events (~9 MB) cost ~25% more
            # CPU per event than batches of 1,000. The page cache's size is unchanged.
            con.execute("PRAGMA cache_spill=4096")
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit log {path}: {exc}") from exc
    return con


class StoreSubtrees:
    """``subtree(lo, hi)`` for the proof generators, answered from ``nodes`` and leaf hashes.

    Ranges of at least ``2**NODE_LEVEL`` aligned leaves come from one ``nodes`` row; smaller
    ones are rehashed from at most ``2**NODE_LEVEL`` leaf hashes, so a proof costs O(log n).
    """

    def __init__(self, con: sqlite3.Connection, tree_size: int) -> None:
        self._con = con
        self._size = tree_size

    def __call__(self, lo: int, hi: int) -> bytes:
        if not 0 <= lo < hi <= self._size:
            raise AuditError(f"subtree [{lo}, {hi}) is outside the tree of size {self._size}")
        width = hi - lo
        if width & (width - 1) == 0 and lo % width == 0:
            level = width.bit_length() - 1
            if level >= NODE_LEVEL:
                row = self._con.execute(
                    "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, lo >> level)
                ).fetchone()
                if row is None:
                    raise AuditError(
                        f"the audit log lacks the saved hash of subtree [{lo}, {hi}); run "
                        "`trustzones audit verify`"
                    )
                return bytes(row[0])
            leaves = [
                bytes(r[0])
                for r in self._con.execute(
                    "SELECT leaf_hash FROM events WHERE leaf_index >= ? AND leaf_index < ? "
                    "ORDER BY leaf_index",
                    (lo, hi),
                )
            ]
            if len(leaves) != width:
                raise AuditError(
                    f"the audit log lacks entries in [{lo}, {hi}); run `trustzones audit verify`"
                )
            return range_hash(leaves, 0, width)
        split = 1 << ((width - 1).bit_length() - 1)
        return node_hash(self(lo, lo + split), self(lo + split, hi))
