"""Exactly-once across two zone files: SIGKILL a running flow many times, then count."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from flow_helpers import all_records, approve

from trustzones.flows import event_key, generate_events
from trustzones.zone import Workspace
from workspace_helpers import kill_at_random

FLOW = "payments-to-analytics"
RUNNER = r"""
import sys
from trustzones.flows import open_flow
from trustzones.zone import Workspace
with Workspace.open() as ws:
    r = open_flow(ws, "payments-to-analytics")
    r.prepare()
    while True:
        s = r.step(int(sys.argv[1]))
        print(s.read, flush=True)
        if s.read == 0:
            break
"""


# ``run``: it reports after each batch it has written. On the embedded backend it writes
# each batch inline, before deciding the next.
PIPELINED = r"""
import sys
from trustzones.flows import open_flow
from trustzones.zone import Workspace
with Workspace.open() as ws:
    r = open_flow(ws, "payments-to-analytics")
    r.run(once=True, batch=int(sys.argv[1]), on_progress=lambda s: print(s.read, flush=True))
    print("done", flush=True)
"""
# ``run`` as on Kafka: the batches go two at a time, a writer thread writing one while the
# next is decided.
THREADED = PIPELINED.replace("    r.run(", "    r._overlap_pays = lambda: True\n    r.run(", 1)


def _run_and_kill(cwd: Path, rng: random.Random, batch: int, runner: str = RUNNER) -> bool:
    return kill_at_random([sys.executable, "-c", runner, str(batch)], cwd, rng)


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner", [RUNNER, PIPELINED, THREADED], ids=["step", "run", "run-threaded"]
)
def test_sigkill_at_random_points_keeps_exactly_once(
    ws: Workspace, workspace_dir: Path, runner: str
) -> None:
    approve(ws)
    events = generate_events(ws.config, "payments.transactions", 2500, seed=11, leak_rate=0.1)
    res = ws.produce(
        "payments.transactions",
        [orjson.dumps(e) for e in events],
        principal="payments-service",
        keys=[event_key(ws.config, "payments.transactions", e) for e in events],
    )
    assert len(res.accepted) == 2500
    rng = random.Random(99 if runner is RUNNER else 98)
    kills = 0
    for _ in range(12):
        if _run_and_kill(workspace_dir, rng, batch=rng.choice((7, 50, 200)), runner=runner):
            break
        kills += 1
    # Finish cleanly.
    out = subprocess.run(
        [sys.executable, "-c", runner, "100"],
        cwd=workspace_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.splitlines()[-1] in ("0", "done")  # it ran to the end
    assert kills >= 3, "the flow finished before it could be killed often enough"

    with Workspace.open() as fresh:

        def origins(records: list) -> Counter[tuple[bytes, bytes]]:
            return Counter(
                (dict(r.headers)["tz.source.partition"], dict(r.headers)["tz.source.offset"])
                for r in records
            )

        delivered = origins(all_records(fresh, "analytics.transactions"))
        held = origins(
            all_records(fresh, "tz.quarantine.payments-to-analytics", acting_zone="payments")
        )
    assert max(delivered.values()) == 1, "a record was delivered twice"
    assert max(held.values()) == 1, "a record was quarantined twice"
    assert not set(delivered) & set(held), "a record was both delivered and quarantined"
    source = {(str(p.partition).encode(), str(p.offset).encode()) for p in res.accepted}
    assert set(delivered) | set(held) == source, "a record was lost"
    assert len(held) > 50  # ~10% of the events hide a card number or an SSN
