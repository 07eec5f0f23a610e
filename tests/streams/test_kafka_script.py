"""scripts/kafka.py as a command: start, status, refuse a second start, stop cleanly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trustzones.streams._kafka import KafkaBackend

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kafka.py"

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240
    )


def alive(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def test_start_status_stop(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    started = run("start", "--clusters", "1", "--state-dir", str(state_dir))
    try:
        assert started.returncode == 0, started.stderr
        state_file = state_dir / "kafka.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600  # it holds the admin password
        [cluster] = json.loads(state_file.read_text())["clusters"]
        assert json.loads(started.stdout) == {"clusters": [cluster]}
        assert cluster["bootstrap"].startswith("127.0.0.1:")
        assert alive(cluster["pid"])
        status = run("status", "--state-dir", str(state_dir))
        assert status.stdout.split("\t")[-1].strip() == "running"
        again = run("start", "--clusters", "1", "--state-dir", str(state_dir))
        assert again.returncode == 1
        assert "stop" in again.stderr
        with KafkaBackend(
            "z",
            bootstrap=cluster["bootstrap"],
            username=cluster["username"],
            password=cluster["password"],
        ) as backend:
            backend.ensure_topic("t", partitions=1)
            assert backend.list_topics() == {"t": 1}
    finally:
        stopped = run("stop", "--state-dir", str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert not alive(cluster["pid"])
    assert "stopped" in run("status", "--state-dir", str(state_dir)).stdout
    assert run("stop", "--state-dir", str(state_dir)).returncode == 0  # idempotent
    server_log = Path(cluster["dir"]) / "logs" / "server.log"
    assert "shut down completed" in server_log.read_text().lower() or os.environ.get("CI")
