"""How a flow starts: fence a predecessor and read the positions, in each zone."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flow_helpers import approve, payment

from trustzones.errors import StreamError
from trustzones.flows import open_flow
from trustzones.flows._runner import FlowRunner
from trustzones.zone import Workspace

FLOW = "payments-to-analytics"


def _moved(ws: Workspace) -> None:
    approve(ws)
    values = [payment(i) for i in range(30)] + [payment(30, note="card 4111 1111 1111 1111")]
    ws.produce("payments.transactions", values, principal="payments-service")
    stats = open_flow(ws, FLOW).run(once=True, batch=7)
    assert stats.read == 31 and stats.quarantined == 1


def test_overlapped_start_reads_what_the_sequential_one_reads(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _moved(ws)
    runner = open_flow(ws, FLOW)
    src, dst = ws.backend("payments"), runner.dest_backend()
    sequential = runner._fence_and_read(src, dst)
    positions, quarantine_positions = sequential
    assert sum(positions.values()) == 31  # all read
    # The quarantine's progress is stored with the batches that quarantined something.
    assert quarantine_positions
    assert all(quarantine_positions.get(p, 0) <= positions[p] for p in positions)
    # The zones' steps on two threads, as when a zone is on Kafka.
    monkeypatch.setattr(FlowRunner, "_overlap_start", lambda self: True)
    seen: list[str] = []
    read = src.committed_offsets

    def on_source(*args: Any, **kwargs: Any) -> dict[int, int]:
        seen.append(threading.current_thread().name)
        return read(*args, **kwargs)

    monkeypatch.setattr(src, "committed_offsets", on_source)
    assert open_flow(ws, FLOW)._fence_and_read(src, dst) == sequential
    assert seen and seen[0] != threading.current_thread().name


def test_a_failed_start_raises_once_the_source_zone_is_idle(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _moved(ws)
    monkeypatch.setattr(FlowRunner, "_overlap_start", lambda self: True)
    runner = open_flow(ws, FLOW)
    src, dst = ws.backend("payments"), runner.dest_backend()
    destination_failed = threading.Event()
    source_done: list[bool] = []
    read = src.committed_offsets

    def slow_source(*args: Any, **kwargs: Any) -> dict[int, int]:
        destination_failed.wait(10)
        time.sleep(0.2)  # still busy when the destination's error is raised
        out = read(*args, **kwargs)
        source_done.append(True)
        return out

    def failing_destination(*args: Any, **kwargs: Any) -> dict[int, int]:
        destination_failed.set()
        raise StreamError("destination zone unreachable")

    monkeypatch.setattr(src, "committed_offsets", slow_source)
    monkeypatch.setattr(dst, "committed_offsets", failing_destination)
    with pytest.raises(StreamError, match="destination zone unreachable"):
        runner._fence_and_read(src, dst)
    assert source_done == [True]  # nothing uses the source zone after the error
