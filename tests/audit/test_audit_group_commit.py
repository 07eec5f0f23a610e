"""Group commit: concurrent appends from threads share transactions, and fail together."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_helpers import make_events

from trustzones.audit import AuditEventRejected, AuditLog, AuditReader, NoteSigner, verify_log
from trustzones.errors import AuditError


def _count_transactions(log: AuditLog) -> list[int]:
    """Count the write transactions the log commits (wraps its private commit step)."""
    calls = [0]
    inner = log._append_rows

    def counting(batch: object) -> range:
        calls[0] += 1
        return inner(batch)  # type: ignore[arg-type]

    log._append_rows = counting  # type: ignore[method-assign]
    return calls


def _wait_for_queue(log: AuditLog, n: int) -> None:
    """Block until ``n`` appends wait in the queue (they queue behind a stuck leader)."""
    with log._cond:
        while len(log._queue) < n:
            log._cond.wait(0.01)


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()


def _hold_file_lock(db: Path) -> sqlite3.Connection:
    """Another process's writer, as SQLite sees it: holds the file's write lock."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    return con


def _appender(log: AuditLog, event_index: int, results: dict[int, object]) -> Callable[[], None]:
    event = make_events(1, start=event_index)[0]

    def run() -> None:
        try:
            results[event_index] = log.append(event)
        except Exception as exc:  # collected and checked by the test
            results[event_index] = exc

    return run


def test_concurrent_single_appends_share_one_transaction(db: Path, signer: NoteSigner) -> None:
    with AuditLog.open(db, signer=signer, checkpoint_interval=16) as log:
        log.append(make_events(1, start=1000)[0])  # create the file and a first entry
        calls = _count_transactions(log)
        blocker = _hold_file_lock(db)
        results: dict[int, object] = {}
        threads = [threading.Thread(target=_appender(log, i, results)) for i in range(24)]
        _run(threads[:1])  # the first thread leads and waits for the file lock ...
        with log._cond:
            while not log._writing:
                log._cond.wait(0.01)
        _run(threads[1:])
        _wait_for_queue(log, 23)  # ... while the 23 others queue behind it
        blocker.execute("COMMIT")
        blocker.close()
        for t in threads:
            t.join()
    assert calls[0] == 2  # the leader's own event, then all 23 queued ones together
    indices = sorted(r for r in results.values() if isinstance(r, int))
    assert indices == list(range(1, 25))  # every caller got a distinct, durable index
    report = verify_log(db, signer.verifier())
    assert report.tree_size == 25
    stored = AuditReader(db, principal="carol", authorize=lambda w, o: True).tail(100)
    for i, index in results.items():
        assert isinstance(index, int)
        want = make_events(1, start=i)[0]  # same content and time, fresh id
        assert (stored[index].event.data, stored[index].event.time) == (want.data, want.time)


def test_many_threads_appending_keep_every_event_and_each_threads_order(
    db: Path, signer: NoteSigner
) -> None:
    with AuditLog.open(db, signer=signer, checkpoint_interval=16) as log:
        calls = _count_transactions(log)
        got: dict[int, list[int]] = {}

        def worker(w: int) -> None:
            events = make_events(40, start=w * 1000)
            got[w] = [log.append(e) for e in events]

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        _run(threads)
        for t in threads:
            t.join()
    assert sorted(i for idx in got.values() for i in idx) == list(range(320))
    for indices in got.values():
        assert indices == sorted(indices)  # one thread's events in its call order
    assert 1 <= calls[0] <= 320
    assert verify_log(db, signer.verifier()).tree_size == 320


def test_a_failed_group_raises_in_every_waiting_caller(db: Path, signer: NoteSigner) -> None:
    with AuditLog.open(db, signer=signer):
        pass
    log = AuditLog(db, signer=signer, busy_timeout_s=0.2)
    try:
        blocker = _hold_file_lock(db)
        results: dict[int, object] = {}
        threads = [threading.Thread(target=_appender(log, i, results)) for i in range(6)]
        _run(threads)
        for t in threads:
            t.join()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert len(results) == 6
        for outcome in results.values():
            assert isinstance(outcome, AuditError)
            assert "stayed locked by another writer" in str(outcome)
            assert "nothing was appended" in str(outcome)
        assert verify_log(db, signer.verifier()).tree_size == 0  # fail closed: nothing written
        assert log.append(make_events(1)[0]) == 0  # and the log still works afterwards
    finally:
        log.close()


def test_a_clashing_batch_fails_alone_when_grouped(db: Path, signer: NoteSigner) -> None:
    """Two queued batches in one group; one repeats an event id: only that caller fails."""
    with AuditLog.open(db, signer=signer) as log:
        first = make_events(1, start=1)[0]
        log.append(first)
        blocker = _hold_file_lock(db)
        results: dict[str, object] = {}

        def run(name: str, event_start: int, events: list[object]) -> None:
            try:
                results[name] = log.append_many(events)  # type: ignore[arg-type]
            except Exception as exc:  # collected and checked below
                results[name] = exc

        leader = threading.Thread(target=run, args=("leader", 0, make_events(1, start=2)))
        leader.start()
        with log._cond:
            while not log._writing:
                log._cond.wait(0.01)
        good = threading.Thread(target=run, args=("good", 0, make_events(3, start=10)))
        bad = threading.Thread(target=run, args=("bad", 0, [*make_events(2, start=20), first]))
        good.start()
        _wait_for_queue(log, 1)
        bad.start()
        _wait_for_queue(log, 2)
        blocker.execute("COMMIT")
        blocker.close()
        for t in (leader, good, bad):
            t.join()
    assert results["leader"] == range(1, 2)
    assert results["good"] == range(2, 5)
    assert isinstance(results["bad"], AuditEventRejected)
    assert "same id is already in the log" in str(results["bad"])
    assert verify_log(db, signer.verifier()).tree_size == 5  # the bad batch left nothing


def test_appends_after_close_fail(db: Path, signer: NoteSigner) -> None:
    log = AuditLog.open(db, signer=signer)
    log.close()
    with pytest.raises(AuditError, match=r"the audit log .* is closed; nothing was appended"):
        log.append(make_events(1)[0])
