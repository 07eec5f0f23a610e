"""Helpers for tests that act in the example workspace."""

from __future__ import annotations

from datetime import timedelta

from trustzones.access import Resource
from trustzones.zone import Workspace


def grant_jit(
    ws: Workspace, principal: str, zone: str = "payments", *, approver: str = "ciso", hours: int = 1
) -> str:
    """A just-in-time read grant on ``zone``, requested by ``principal`` and approved."""
    store = ws.access.grants
    now = ws.clock()
    req = store.request(
        principal,
        Resource(zone),
        access=frozenset({"read"}),
        duration=timedelta(hours=hours),
        reason="test",
        now=now,
    )
    req = store.approve(req.id, approver=approver, now=now)
    assert req.grant_id is not None
    return req.grant_id
