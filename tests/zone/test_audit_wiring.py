"""Everything the zone runtime and flows do lands in the audit zone, and nothing secret does."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import orjson
import pytest

from trustzones.audit import NoteVerifier, verify_log
from trustzones.errors import AccessDenied, AuditError
from trustzones.zone import Workspace

CARD = "4111 1111 1111 1111"
PAYMENT = {
    "transaction_id": "t1",
    "timestamp": "2026-11-28T10:00:00Z",
    "amount": 12.5,
    "currency": "EUR",
    "card": {"number": CARD, "cvv": "123"},
    "customer": {"id": "c1", "email": "ada@example.com"},
}


def events(ws: Workspace) -> list[dict[str, object]]:
    ws.audit.close()
    con = sqlite3.connect(ws.audit.db)
    try:
        rows = con.execute("SELECT body FROM events ORDER BY leaf_index").fetchall()
    finally:
        con.close()
    return [orjson.loads(r[0]) for r in rows]


def test_per_message_zone_audits_every_record_without_its_content(workspace_dir: Path) -> None:
    with Workspace.open() as ws:
        res = ws.produce(
            "payments.transactions", [orjson.dumps(PAYMENT)] * 3, principal="payments-service"
        )
        assert len(res.accepted) == 3
        evs = events(ws)
    produced = [e for e in evs if e["type"] == "io.trustzones.record.produced"]
    assert len(produced) == 3
    offsets = sorted((e["data"]["partition"], e["data"]["offset"]) for e in produced)  # type: ignore[index]
    assert offsets == sorted((p.partition, p.offset) for p in res.accepted)
    assert all(str(e["data"]["content_hash"]).startswith("sha256:") for e in produced)  # type: ignore[index]
    raw = (workspace_dir / "audit" / "audit.db").read_bytes()
    assert CARD.encode() not in raw and b"ada@example.com" not in raw


def test_aggregate_zone_counts_batches(workspace_dir: Path) -> None:
    click = {"event_id": "e", "timestamp": "2026-11-28T10:00:00Z", "session_id": "s", "page": "/"}
    with Workspace.open() as ws:
        ws.produce(
            "analytics.clickstream", [orjson.dumps(click)] * 5, principal="clickstream-service"
        )
        evs = events(ws)
    (agg,) = [e for e in evs if e["type"] == "io.trustzones.zone.produce"]
    assert agg["data"]["count"] == 5  # type: ignore[index]
    assert not [e for e in evs if e["type"] == "io.trustzones.record.produced"]


def test_denials_are_audited(workspace_dir: Path) -> None:
    with Workspace.open() as ws:
        with pytest.raises(AccessDenied):
            ws.consumer("payments.transactions", principal="marketing-analyst")
        evs = events(ws)
    denies = [
        e
        for e in evs
        if e["type"] == "io.trustzones.access.decision" and e["data"]["decision"] == "deny"
    ]  # type: ignore[index]
    assert denies and denies[-1]["data"]["principal"] == "marketing-analyst"  # type: ignore[index]
    assert "no read up" in str(denies[-1]["data"]["reason"])  # type: ignore[index]


def test_without_its_audit_key_the_workspace_refuses_to_act(workspace_dir: Path) -> None:
    (workspace_dir / ".trustzones" / "audit.key").unlink()
    with Workspace.open() as ws, pytest.raises((AccessDenied, AuditError)):
        ws.produce("payments.transactions", [orjson.dumps(PAYMENT)], principal="payments-service")
    with Workspace.open() as ws:
        assert sum(ws.backend("payments").end_offsets("payments.transactions").values()) == 0


def test_cli_verify_detects_an_edited_event(workspace_dir: Path) -> None:
    with Workspace.open() as ws:
        ws.produce("payments.transactions", [orjson.dumps(PAYMENT)], principal="payments-service")
        ws.audit.close()
        report = verify_log(ws.audit.db, NoteVerifier.from_file(ws.audit.public_key_path))
        assert report.tree_size >= 3
    ok = subprocess.run(
        ["trustzones", "audit", "verify"],
        cwd=workspace_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    con = sqlite3.connect(workspace_dir / "audit" / "audit.db")
    body = con.execute("SELECT body FROM events WHERE leaf_index = 1").fetchone()[0]
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    forged = body.replace(b'"allow"', b'"deny"', 1) if b'"allow"' in body else body + b" "
    con.execute("UPDATE events SET body = ? WHERE leaf_index = 1", (forged,))
    con.commit()
    con.close()
    bad = subprocess.run(
        ["trustzones", "audit", "verify"],
        cwd=workspace_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "entry 1" in bad.stderr, bad.stderr
