"""A flow over an embedded zone whose file was tampered with: the record that does not open is
withheld by the backend, quarantined by the flow with a reason, and audited; the others are
delivered, and nothing stalls."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from trustzones.errors import ApprovalRequired
from trustzones.flows import open_approvals, open_flow, open_quarantine, require_approved
from trustzones.zone import Workspace
from workspace_helpers import grant_jit

FLOW = "payments-to-analytics"
SOURCE = "payments.transactions"
QUARANTINE = "tz.quarantine.payments-to-analytics"


def payment(i: int) -> bytes:
    return orjson.dumps(
        {
            "transaction_id": f"tx-{i}",
            "timestamp": "2026-11-28T10:00:00Z",
            "amount": 10.0 + i,
            "currency": "EUR",
            "card": {"number": "4111 1111 1111 1111", "cvv": "123", "expiry": "12/29"},
            "customer": {"id": f"c-{i}", "email": "ada@example.com", "zip": "94107"},
        }
    )


def approve(ws: Workspace) -> None:
    runner = open_flow(ws, FLOW)
    with pytest.raises(ApprovalRequired, match="is new or changed and has not been approved"):
        require_approved(ws, runner)  # files the request
    store = open_approvals(ws)
    try:
        (req,) = [r for r in store.list() if r.subject == FLOW]
        store.approve(req.id, approver="security-officer")
    finally:
        store.close()
    require_approved(ws, runner)


def flip_last_byte(db: Path, topic: str, partition: int, offset: int) -> None:
    """Change one byte of a stored record with plain sqlite3 (the layout in ``_embedded.py``)."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        where = (topic, partition, offset)
        (value,) = con.execute(
            'SELECT value FROM records WHERE topic=? AND partition=? AND "offset"=?', where
        ).fetchone()
        con.execute(
            'UPDATE records SET value=? WHERE topic=? AND partition=? AND "offset"=?',
            (value[:-1] + bytes([value[-1] ^ 1]), *where),
        )
    finally:
        con.close()


def test_a_tampered_record_is_quarantined_and_the_others_delivered(workspace_dir: Path) -> None:
    with Workspace.open() as ws:
        assert ws.config.zones["payments"].controls.encryption_at_rest
        approve(ws)
        res = ws.produce(SOURCE, [payment(i) for i in range(4)], principal="payments-service")
        assert not res.rejected
        victim = res.accepted[1]
        flip_last_byte(
            ws.config.data_dir("payments") / "payments.db", SOURCE, victim.partition, victim.offset
        )
        events: list[tuple[str, dict[str, object]]] = []
        ws.event_sinks.append(lambda kind, data: events.append((kind, dict(data))))

        stats = open_flow(ws, FLOW).run(once=True)

        assert (stats.read, stats.delivered, stats.quarantined) == (4, 3, 1)
        analytics = ws.backend("analytics")
        delivered = sorted(
            orjson.loads(r.value)["transaction_id"]
            for p in range(analytics.partition_count("analytics.transactions"))
            for r in analytics.fetch("analytics.transactions", p, 0)
        )
        assert delivered == ["tx-0", "tx-2", "tx-3"]
        grant_jit(ws, "security-officer")
        (held,) = open_quarantine(ws, FLOW).list(principal="security-officer")
        assert (held.source_partition, held.source_offset) == (victim.partition, victim.offset)
        assert held.reason == (
            "source record could not be decrypted (the reason is in the audit log)"
        )
        # The quarantine holds the stand-in, never the reason it did not open.
        (stored,) = ws.backend("payments").fetch(QUARANTINE, 0, held.offset, max_records=1)
        assert stored.value == b""
        assert b"does not open" not in b"".join(v for _, v in stored.headers)
        # The reason went to the audit zone (sinks run once it is recorded there).
        assert [d for k, d in events if k == "streams.record_undecryptable"] == [
            {
                "zone": "payments",
                "topic": SOURCE,
                "partition": victim.partition,
                "offset": victim.offset,
                "reason": (
                    "record does not open here: changed, moved from another topic, partition "
                    "or zone, or sealed under a key this zone does not hold"
                ),
            }
        ]

        # Nothing stalls or repeats: the next run starts after the withheld record.
        again = open_flow(ws, FLOW).run(once=True)
        assert (again.read, again.delivered, again.quarantined) == (0, 0, 0)
        assert len(open_quarantine(ws, FLOW).list(principal="security-officer")) == 1
