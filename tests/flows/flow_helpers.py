"""Helpers shared by the flow tests."""

from __future__ import annotations

import orjson

from trustzones.errors import ApprovalRequired
from trustzones.flows import open_approvals, open_flow, require_approved
from trustzones.zone import Workspace


def approve(ws: Workspace, flow: str = "payments-to-analytics") -> None:
    runner = open_flow(ws, flow)
    try:
        require_approved(ws, runner)
    except ApprovalRequired:
        store = open_approvals(ws)
        (req,) = [r for r in store.list() if r.subject == flow]
        store.approve(req.id, approver="security-officer")
        store.close()
    require_approved(ws, runner)


def payment(i: int, **over: object) -> bytes:
    doc = {
        "transaction_id": f"tx-{i}",
        "timestamp": "2026-11-28T10:00:00Z",
        "amount": 10.0 + i,
        "currency": "EUR",
        "card": {"number": "4111 1111 1111 1111", "brand": "visa", "cvv": "123", "expiry": "12/29"},
        "customer": {
            "id": f"c-{i % 7}",
            "name": "Ada Lovelace",
            "email": "Ada@Example.com",
            "age": 36,
            "zip": "94107",
            "country": "US",
        },
        "note": "gift wrap please",
    }
    doc.update(over)
    return orjson.dumps(doc)


def all_records(ws: Workspace, topic: str, acting_zone: str | None = None) -> list:
    zone = acting_zone or ws.config.topics[topic].zone
    assert zone is not None
    b = ws.backend(zone)
    out = []
    for p in range(b.partition_count(topic)):
        off = 0
        while True:
            got = b.fetch(topic, p, off, max_records=1000)
            if not got:
                break
            out += got
            off = got[-1].offset + 1
    return out
