"""Helpers of the audit tests (a unique module name: pytest puts every test folder on sys.path)."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from trustzones.audit import AuditEvent
from trustzones.audit.events import access_decision, record_access

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_events(n: int, start: int = 0) -> list[AuditEvent]:
    """``n`` events alternating access decisions and per-message consumes, one second apart."""
    out: list[AuditEvent] = []
    for i in range(start, start + n):
        at = T0 + timedelta(seconds=i)
        if i % 3 == 0:
            out.append(
                access_decision(
                    principal=f"user-{i % 5}",
                    action="read",
                    resource="topic/payments",
                    zone="restricted" if i % 2 else "confidential",
                    decision="deny" if i % 4 == 0 else "allow",
                    reason="no live grant" if i % 4 == 0 else "grant g-1 is live",
                    policy_version="7",
                    at=at,
                )
            )
        else:
            out.append(
                record_access(
                    direction="consume",
                    principal=f"svc-{i % 2}",
                    zone="restricted",
                    topic="payments",
                    partition=i % 3,
                    offset=i,
                    content=b"record %d" % i,
                    at=at,
                )
            )
    return out


def raw(db: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as an attacker with the file would open it.

    The append-only triggers are dropped first: they stop mistakes in code, not someone
    holding the file.
    """
    con = sqlite3.connect(db, isolation_level=None)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    return con


# The tables of a schema "1" log, exactly as that code created them: the search columns are in
# ``events`` itself (no ``facets``). Such logs must keep opening, appending, searching and
# verifying.
LAYOUT_1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
    leaf_index INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    principal TEXT NOT NULL,
    zone TEXT NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    leaf_hash BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tree_size INTEGER NOT NULL,
    frontier BLOB NOT NULL,
    head TEXT NOT NULL
);
CREATE TABLE checkpoints (
    seq INTEGER PRIMARY KEY, tree_size INTEGER NOT NULL UNIQUE, note TEXT NOT NULL
);
"""


def make_layout_1(db: Path) -> None:
    """An empty file with the schema "1" tables; ``AuditLog.open`` initialises it."""
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.execute("PRAGMA page_size=16384")
    con.executescript(LAYOUT_1_SCHEMA)
    con.close()


def insert_row(con: sqlite3.Connection, index: int, event: AuditEvent, body: bytes) -> None:
    """Insert an event row directly, as a forger would, in the file's layout."""
    d = event.data
    leaf = hashlib.sha256(b"\x00" + body).digest()
    columns = {str(r[1]) for r in con.execute("PRAGMA table_info(events)")}
    if "facet" not in columns:
        con.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (index, event.id, event.time, d.principal, d.zone, d.action, d.decision, leaf, body),
        )
        return
    facet = (d.principal, d.zone, d.action, d.decision)
    con.execute(
        "INSERT OR IGNORE INTO facets(principal, zone, action, decision) VALUES (?, ?, ?, ?)",
        facet,
    )
    (fid,) = con.execute(
        "SELECT id FROM facets WHERE principal = ? AND zone = ? AND action = ? AND decision = ?",
        facet,
    ).fetchone()
    row = (index, event.id, event.time, fid, leaf, body)
    con.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", row)
