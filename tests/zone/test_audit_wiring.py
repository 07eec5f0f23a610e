"""Everything the zone runtime and flows do lands in the audit zone, and nothing secret does."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from trustzones.audit import NoteVerifier, verify_log
from trustzones.audit.events import AGGREGATE
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


def events(ws: Workspace) -> list[dict[str, Any]]:
    ws.audit.close()
    return read_events(ws.config.root)


def read_events(workspace_dir: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(workspace_dir / "audit" / "audit.db")
    try:
        rows = con.execute("SELECT body FROM events ORDER BY leaf_index").fetchall()
    finally:
        con.close()
    return [orjson.loads(r[0]) for r in rows]


def events_so_far(ws: Workspace) -> list[dict[str, Any]]:
    """The events written so far, without closing anything (open counts stay open)."""
    return read_events(ws.config.root)


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


CLICK = {"event_id": "e", "timestamp": "2026-11-28T10:00:00Z", "session_id": "s", "page": "/"}


def next_hour() -> datetime:
    """The next full hour after now: a multiple of the window since the epoch, and later than
    the real time at which the ``workspace_dir`` fixture ran ``init`` and enrolled the profile's
    TOTP secrets (a code from before that moment is refused as a replay). Taken when the test
    runs, not when the module is imported: the suite may reach this test minutes later."""
    return datetime.fromtimestamp((int(time.time()) // 3600 + 1) * 3600, UTC)


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def set_window(workspace_dir: Path, seconds: int) -> None:
    config = workspace_dir / "trustzones.yaml"
    text = config.read_text()
    assert "audit:\n  data_dir: audit\n" in text
    config.write_text(text.replace("audit:\n", f"audit:\n  aggregate_window: {seconds}\n", 1))


def test_aggregate_zone_counts_records_per_time_window(workspace_dir: Path) -> None:
    set_window(workspace_dir, 10)
    t0 = next_hour()
    clock = Clock(t0)
    value = orjson.dumps(CLICK)
    with Workspace.open(clock=clock) as ws:
        # window [0 s, 10 s): 5 + 3 produced, 8 consumed in two polls
        ws.produce("analytics.clickstream", [value] * 5, principal="clickstream-service")
        clock.now += timedelta(seconds=4)
        ws.produce("analytics.clickstream", [value] * 3, principal="clickstream-service")
        consumer = ws.consumer("analytics.clickstream", principal="marketing-analyst",
                               start="earliest")  # fmt: skip
        consumed = len(consumer.poll(6)) + len(consumer.poll(6))
        assert consumed == 8
        assert not [e for e in events_so_far(ws) if e["type"] == AGGREGATE]
        # window [20 s, 30 s): 2 produced; this record closes the first window
        clock.now = t0 + timedelta(seconds=25)
        ws.produce("analytics.clickstream", [value] * 2, principal="clickstream-service")
        first = [e for e in events_so_far(ws) if e["type"] == AGGREGATE]
        assert sorted((e["data"]["action"], e["data"]["count"]) for e in first) == [  # type: ignore[index]
            ("consume", 8), ("produce", 8),
        ]  # fmt: skip
    # Workspace.close() wrote the open window before closing the log.
    evs = read_events(workspace_dir)
    aggs = [e["data"] for e in evs if e["type"] == AGGREGATE]
    assert sorted(
        (a["action"], a["window_start"], a["count"], a["bytes"])
        for a in aggs  # type: ignore[index]
    ) == [
        ("consume", stamp(t0), 8, 8 * len(value)),
        ("produce", stamp(t0), 8, 8 * len(value)),
        ("produce", stamp(t0 + timedelta(seconds=20)), 2, 2 * len(value)),
    ]
    produced = [a for a in aggs if a["action"] == "produce"]  # type: ignore[index]
    assert {a["principal"] for a in produced} == {"clickstream-service"}  # type: ignore[index]
    assert all(a["window_end"] for a in aggs)  # type: ignore[index]
    # Access decisions are still audited one by one; no per-batch or per-record events.
    writes = [
        e for e in evs
        if e["type"] == "io.trustzones.access.decision" and e["data"]["action"] == "write"  # type: ignore[index]
    ]  # fmt: skip
    assert len(writes) == 3
    assert not [e for e in evs if e["type"] in ("io.trustzones.zone.produce",
                                                "io.trustzones.record.produced")]  # fmt: skip
    assert not (workspace_dir / "audit" / "pending-counts").exists() or not list(
        (workspace_dir / "audit" / "pending-counts").iterdir()
    )
    ok = subprocess.run(["trustzones", "audit", "verify"], cwd=workspace_dir,
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_access_zone_still_writes_one_event_per_batch(workspace_dir: Path) -> None:
    config = workspace_dir / "trustzones.yaml"
    text = config.read_text()
    assert text.count("audit_level: aggregate") == 1
    config.write_text(text.replace("audit_level: aggregate", "audit_level: access"))
    with Workspace.open() as ws:
        ws.produce("analytics.clickstream", [orjson.dumps(CLICK)] * 5,
                   principal="clickstream-service")  # fmt: skip
        ws.produce("analytics.clickstream", [orjson.dumps(CLICK)] * 2,
                   principal="clickstream-service")  # fmt: skip
        evs = events(ws)
    batches = [e for e in evs if e["type"] == "io.trustzones.zone.produce"]
    assert [b["data"]["count"] for b in batches] == [5, 2]  # type: ignore[index]
    assert not [e for e in evs if e["type"] in (AGGREGATE, "io.trustzones.record.produced")]


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


def test_deferred_events_are_appended_together_when_the_block_ends(
    workspace_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Workspace.open() as ws:
        log = ws.audit.log()
        appends: list[int] = []
        real = log.append_many

        def counting(evs: Any) -> Any:
            appends.append(len(evs))
            return real(evs)

        monkeypatch.setattr(log, "append_many", counting)
        before = len(events_so_far(ws))
        with ws.audit.deferred() as pending:
            ws.emit("test.first", {"principal": "payments-service", "resource": "r1"})
            with ws.audit.deferred() as inner:  # nested: the same list
                assert inner is pending
                ws.emit("test.second", {"principal": "payments-service", "resource": "r2"})
            assert len(pending) == 2
            assert len(events_so_far(ws)) == before  # nothing recorded yet
        kinds = [e["type"] for e in events_so_far(ws)[before:]]
        assert kinds == ["io.trustzones.test.first", "io.trustzones.test.second"]
        assert appends == [2]  # one transaction for both

        # A block that raises still records what it collected.
        with pytest.raises(RuntimeError), ws.audit.deferred():
            ws.emit("test.third", {"principal": "payments-service", "resource": "r3"})
            raise RuntimeError("the action failed")
        assert events_so_far(ws)[-1]["type"] == "io.trustzones.test.third"
        # Outside a block every event is its own transaction, as before.
        ws.emit("test.fourth", {"principal": "payments-service", "resource": "r4"})
        assert appends == [2, 1, 1]


def test_a_deferred_event_that_cannot_be_recorded_fails_the_block(workspace_dir: Path) -> None:
    with Workspace.open() as ws:
        log = ws.audit.log()

        def broken(_evs: Any) -> Any:
            raise OSError("disk full")

        log.append_many = broken  # type: ignore[method-assign]
        with pytest.raises(AuditError, match="could not record 1 deferred events"):
            with ws.audit.deferred():
                ws.emit("test.lost", {"principal": "payments-service", "resource": "r"})
