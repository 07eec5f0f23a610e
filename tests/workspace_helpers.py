"""Helpers for tests that act in the example workspace."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

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


def kill_at_random(
    argv: list[str], cwd: Path, rng: random.Random, *, max_delay: float = 0.15
) -> bool:
    """Start ``argv``; SIGKILL it at a random moment after its first line of output. True if
    it had already finished on its own. The window is short so that a fast process is still
    killed part of the way through, run after run."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        started = time.monotonic()
        seen = False
        while not seen and proc.poll() is None and time.monotonic() - started < 60:
            seen = bool(proc.stdout.readline())
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, max_delay))
        finished = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return finished
