"""Several processes appending to one audit file at once, and a process killed mid-append."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

from audit_helpers import make_events

from trustzones.audit import AuditLog, AuditReader, NoteSigner, verify_log
from trustzones.audit.notes import write_key_files

APPENDER = r"""
import sys, time
from trustzones.audit import AuditLog, NoteSigner
from trustzones.audit.events import record_access

db, key, name = sys.argv[1:4]
batches, batch = int(sys.argv[4]), int(sys.argv[5])
signer = NoteSigner.from_file(key)
with AuditLog.open(db, signer=signer, checkpoint_interval=50) as log:
    print("ready", flush=True)
    sys.stdin.readline()  # the go signal: every appender starts at once
    n = 0
    for b in range(batches):
        events = [
            record_access(direction="produce", principal=name, zone="restricted", topic="t",
                          partition=0, offset=n + i, content=b"%d" % (n + i))
            for i in range(batch)
        ]
        log.append_many(events)
        n += batch
        print(n, flush=True)
        time.sleep(0.002)  # callers do other work between appends
"""


def _keys(tmp_path: Path) -> tuple[Path, NoteSigner]:
    signer = NoteSigner.generate("audit.test/concurrent")
    key = tmp_path / "audit.key"
    write_key_files(signer, key, tmp_path / "audit.pub")
    return key, signer


def _spawn(db: Path, key: Path, name: str, batches: int, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(db), str(key), name, str(batches), str(batch)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _start(procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every appender has opened the log, then let them all go at once."""
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def test_two_processes_append_concurrently_without_forking_the_log(tmp_path: Path) -> None:
    key, signer = _keys(tmp_path)
    db = tmp_path / "audit.db"
    with AuditLog.open(db, signer=signer):  # create the file once, before the race
        pass
    procs = [_spawn(db, key, name, 40, 7) for name in ("proc-a", "proc-b")]
    _start(procs)
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.split()[-1] == "280"
    report = verify_log(db, signer.verifier())
    assert report.tree_size == 560
    stored = AuditReader(db, principal="carol", authorize=lambda w, o: True).tail(1000)
    assert [s.leaf_index for s in stored] == list(range(560))
    for name in ("proc-a", "proc-b"):
        offsets = [s.event.data.extra["offset"] for s in stored if s.event.data.principal == name]
        assert offsets == list(range(280))  # each process's events in its own order
    # The two processes really interleaved (their batches alternate somewhere).
    owners = [s.event.data.principal for s in stored]
    assert sum(1 for a, b in itertools.pairwise(owners) if a != b) > 2


def test_a_process_killed_while_appending_leaves_a_valid_log(tmp_path: Path) -> None:
    key, signer = _keys(tmp_path)
    db = tmp_path / "audit.db"
    proc = _spawn(db, key, "victim", 100_000, 50)
    _start([proc])
    assert proc.stdout is not None
    for _ in range(20):  # let it commit a few batches, then kill it mid-stream
        proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        assert stream is not None
        stream.close()
    report = verify_log(db, signer.verifier())
    assert report.tree_size >= 1000 and report.tree_size % 50 == 0  # whole batches only
    with AuditLog.open(db, signer=signer) as log:
        assert log.append(make_events(1, start=5000)[0]) == report.tree_size
    assert verify_log(db, signer.verifier()).tree_size == report.tree_size + 1
