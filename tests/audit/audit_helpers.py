"""Helpers of the audit tests (a unique module name: pytest puts every test folder on sys.path)."""

from __future__ import annotations

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
