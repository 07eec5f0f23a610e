"""The ``aggregate`` audit level: record counts per time window, nothing lost, nothing twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustzones.audit import AuditEvent, AuditLog, NoteSigner, verify_log
from trustzones.audit.events import AGGREGATE
from trustzones.audit.windows import RecordWindows, recover_pending
from trustzones.errors import AuditError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a multiple of 60 s since the epoch


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Sink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.calls = 0

    def __call__(self, events: Sequence[AuditEvent]) -> None:
        self.calls += 1
        self.events.extend(events)


def data(e: AuditEvent) -> dict[str, object]:
    return {**e.data.model_dump(exclude_none=True), **e.data.extra}


def windows(sink: Sink, clock: Clock, window_s: int = 60) -> RecordWindows:
    return RecordWindows(sink, window_s=window_s, clock=clock)


def test_counts_of_several_batches_make_one_event_per_key_and_window() -> None:
    sink, clock = Sink(), Clock()
    w = windows(sink, clock)
    w.count(principal="svc", zone="z", topic="t", action="produce",
            records=[(0, 10, 5), (0, 11, 7), (2, 3, 1)])  # fmt: skip
    clock.now += timedelta(seconds=30)
    w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 12, 2)])
    w.count(principal="ana", zone="z", topic="t", action="consume", records=[(2, 3, 1)])
    assert sink.events == []  # nothing is written while the window is open
    w.close()
    assert sink.calls == 1  # one atomic append for the whole window
    by_principal = {e.data.principal: e for e in sink.events}
    produced = by_principal["svc"]
    assert produced.type == AGGREGATE
    assert data(produced) == {
        "principal": "svc", "action": "produce", "resource": "topic/t", "zone": "z",
        "decision": "allow", "topic": "t", "count": 4, "allowed": 4, "denied": 0, "bytes": 15,
        "window_start": "2026-03-01T12:00:00.000000Z",
        "window_end": "2026-03-01T12:01:00.000000Z",
        "partitions": [0, 2], "first_offsets": [10, 3], "last_offsets": [12, 3],
    }  # fmt: skip
    assert data(by_principal["ana"])["count"] == 1
    assert produced.time == "2026-03-01T12:00:30.000000Z"  # written at close, by the clock


def test_window_boundaries_are_half_open() -> None:
    sink, clock = Sink(), Clock(T0 + timedelta(seconds=59, microseconds=999_999))
    w = windows(sink, clock)
    w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 1, 1)])
    clock.now = T0 + timedelta(seconds=60)  # the first instant of the next window
    w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 2, 1)])
    (first,) = sink.events  # the later record closed the first window
    assert (data(first)["window_start"], data(first)["window_end"], data(first)["count"]) == (
        "2026-03-01T12:00:00.000000Z", "2026-03-01T12:01:00.000000Z", 1,
    )  # fmt: skip
    w.close()
    assert data(sink.events[1])["window_start"] == "2026-03-01T12:01:00.000000Z"
    assert data(sink.events[1])["first_offsets"] == [2]


def test_a_clock_stepping_back_counts_into_the_open_window() -> None:
    sink, clock = Sink(), Clock(T0 + timedelta(seconds=90))
    w = windows(sink, clock)
    w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 1, 1)])
    clock.now = T0  # an earlier window: already past, never reopened
    w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 2, 1)])
    w.close()
    (only,) = sink.events
    assert (data(only)["count"], data(only)["window_start"]) == (2, "2026-03-01T12:01:00.000000Z")


def test_close_is_idempotent_and_counting_after_it_is_refused() -> None:
    sink, clock = Sink(), Clock()
    w = windows(sink, clock)
    w.close()
    w.close()
    assert sink.calls == 0
    with pytest.raises(AuditError, match=r"^the record counter is closed; nothing was counted$"):
        w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 1, 1)])


def test_a_failed_write_keeps_the_counts_and_raises() -> None:
    clock = Clock()
    calls: list[int] = []

    def failing(events: Sequence[AuditEvent]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise AuditError("disk full")

    w = RecordWindows(failing, window_s=60, clock=clock)
    w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 1, 1)])
    with pytest.raises(AuditError, match=r"^disk full$"):
        w.flush()
    assert w.flush() == 1  # still counted, written by the next attempt
    assert calls == [1, 1]


def test_not_a_record_action_is_refused() -> None:
    w = windows(Sink(), Clock())
    with pytest.raises(AuditError, match=r"^cannot count 'delete'/'allow' records: not a record"):
        w.count(principal="svc", zone="z", topic="t", action="delete",  # type: ignore[arg-type]
                records=[(0, 1, 1)])  # fmt: skip


batches = st.lists(
    st.tuples(
        st.integers(0, 200),  # seconds after the previous batch
        st.sampled_from(["svc-a", "svc-b"]),
        st.sampled_from(["produce", "consume"]),
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 10**4)),
                 min_size=1, max_size=20),
    ),
    min_size=1,
    max_size=40,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, window_s=st.sampled_from([1, 7, 60]))
def test_counts_add_up_to_exactly_what_was_counted(
    batches: list[tuple[int, str, str, list[tuple[int, int, int]]]], window_s: int
) -> None:
    sink, clock = Sink(), Clock()
    w = windows(sink, clock, window_s)
    expected_count: Counter[tuple[str, str]] = Counter()
    expected_bytes: Counter[tuple[str, str]] = Counter()
    expected_windows: Counter[tuple[str, str, float]] = Counter()
    got_windows: Counter[tuple[str, str, float]] = Counter()
    for step, principal, action, records in batches:
        clock.now += timedelta(seconds=step)
        w.count(principal=principal, zone="z", topic="t", action=action,  # type: ignore[arg-type]
                records=records)  # fmt: skip
        expected_count[(principal, action)] += len(records)
        start_s = clock.now.timestamp() - clock.now.timestamp() % window_s
        expected_windows[(principal, action, start_s)] += len(records)
        expected_bytes[(principal, action)] += sum(r[2] for r in records)
    w.close()
    got_count: Counter[tuple[str, str]] = Counter()
    got_bytes: Counter[tuple[str, str]] = Counter()
    seen = set()
    for e in sink.events:
        d = data(e)
        key = (e.data.principal, e.data.action)
        got_count[key] += int(d["count"])  # type: ignore[call-overload]
        got_bytes[key] += int(d["bytes"])  # type: ignore[call-overload]
        start = datetime.fromisoformat(str(d["window_start"]))
        end = datetime.fromisoformat(str(d["window_end"]))
        assert end - start == timedelta(seconds=window_s)
        assert start.timestamp() % window_s == 0
        assert (key, start) not in seen  # one event per key and window
        seen.add((key, start))
        got_windows[(*key, start.timestamp())] += int(d["count"])  # type: ignore[call-overload]
    assert got_count == expected_count
    assert got_windows == expected_windows  # each record in the window its time falls in
    assert got_bytes == expected_bytes
    assert len({e.id for e in sink.events}) == len(sink.events)


# -- crashes, exits and the pending files ------------------------------------------------------

CHILD = """
import os, signal, sys
from datetime import UTC, datetime
from trustzones.audit import AuditLog, NoteSigner
from trustzones.audit.windows import RecordWindows

log = AuditLog.open(sys.argv[1], signer=NoteSigner.from_file(sys.argv[2]))
w = RecordWindows(log.append_many, window_s=3600, pending_dir=sys.argv[3])
w.count(principal="svc", zone="z", topic="t", action="produce",
        records=[(0, i, 10) for i in range(25)])
w.count(principal="svc", zone="z", topic="t", action="consume", records=[(1, 7, 3)])
print("counted", flush=True)
if sys.argv[4] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
# "exit": leave without closing anything; the exit hook writes the counts
"""


def run_child(tmp_path: Path, db: Path, signer: NoteSigner, how: str) -> Path:
    key = tmp_path / "audit.key"
    pub = tmp_path / "audit.pub"
    if not key.exists():
        from trustzones.audit.notes import write_key_files

        write_key_files(signer, key, pub)
    pending = tmp_path / "pending"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(db), str(key), str(pending), how],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.stdout == "counted\n", proc.stderr
    assert proc.returncode == (-9 if how == "kill" else 0), proc.stderr
    return pending


def aggregates(db: Path, signer: NoteSigner) -> list[AuditEvent]:
    from trustzones.audit import AuditReader

    reader = AuditReader(db, principal="auditor", authorize=lambda who, op: True)
    return [s.event for s in reader.tail(1000) if s.event.type == AGGREGATE]


def test_sigkill_loses_no_counts_the_next_process_writes_them(
    tmp_path: Path, db: Path, signer: NoteSigner
) -> None:
    pending = run_child(tmp_path, db, signer, "kill")
    assert aggregates(db, signer) == []
    assert len(list(pending.glob("*.db"))) == 1
    with AuditLog.open(db, signer=signer) as log:
        assert recover_pending(pending, log.append_many) == 2
        assert recover_pending(pending, log.append_many) == 0  # written once only
    got = {e.data.action: data(e) for e in aggregates(db, signer)}
    assert (got["produce"]["count"], got["produce"]["bytes"], got["produce"]["recovered"]) == (
        25, 250, True,
    )  # fmt: skip
    assert (got["produce"]["first_offsets"], got["produce"]["last_offsets"]) == ([0], [24])
    assert got["consume"]["count"] == 1
    assert list(pending.iterdir()) == []
    verify_log(db, signer.verifier())


def test_an_unclosed_counter_is_written_at_interpreter_exit(
    tmp_path: Path, db: Path, signer: NoteSigner
) -> None:
    pending = run_child(tmp_path, db, signer, "exit")
    assert sorted(data(e)["count"] for e in aggregates(db, signer)) == [1, 25]  # type: ignore[type-var]
    assert list(pending.iterdir()) == []
    verify_log(db, signer.verifier())


def test_counts_written_just_before_a_crash_are_not_written_again(
    tmp_path: Path, db: Path, signer: NoteSigner
) -> None:
    pending = tmp_path / "pending"
    with AuditLog.open(db, signer=signer) as log:

        def append_then_die(events: Sequence[AuditEvent]) -> None:
            log.append_many(events)
            raise KeyboardInterrupt  # dies after the events, before clearing the file

        w = RecordWindows(append_then_die, window_s=60, clock=Clock(), pending_dir=pending)
        w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 1, 4)])
        with pytest.raises(KeyboardInterrupt):
            w.flush()
        w._release()  # the process is gone: its lock is free, its file stays
        assert recover_pending(pending, log.append_many) == 0
    assert [data(e)["count"] for e in aggregates(db, signer)] == [1]
    assert list(pending.iterdir()) == []


def test_the_files_of_a_live_process_are_left_alone(
    tmp_path: Path, db: Path, signer: NoteSigner
) -> None:
    pending = tmp_path / "pending"
    with AuditLog.open(db, signer=signer) as log:
        w = RecordWindows(log.append_many, window_s=60, clock=Clock(), pending_dir=pending)
        w.count(principal="svc", zone="z", topic="t", action="produce", records=[(0, 1, 4)])
        assert recover_pending(pending, log.append_many) == 0
        assert len(list(pending.glob("*.db"))) == 1
        w.close()
        assert list(pending.iterdir()) == []
    assert [data(e)["count"] for e in aggregates(db, signer)] == [1]
