"""The README's run command: `trustzones demo` tells the whole story and ends verified."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def test_demo_runs_the_story_end_to_end(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            "python3",
            "-m",
            "trustzones",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--payments",
            "200",
            "--clicks",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "refused at the analytics zone's door" in out
    assert "has not been approved" in out
    assert "lacks the role 'security'" in out  # the analyst may not approve the flow
    assert "self-approval is not allowed" in out  # nor the officer their own JIT request
    assert "security-officer approved request" in out
    assert "DLP found CREDIT_CARD in the output" in out  # the planted card in a free-text note
    assert "ciso approved just-in-time access" in out
    assert "denied: 'marketing-analyst' may not read 'payments.transactions'" in out
    assert "every signature verified" in out


def test_demo_runs_without_the_optional_extras(tmp_path: Path) -> None:
    # The README's run command installs `.` alone: no confluent-kafka (the `kafka` extra) and
    # no native core. A None in sys.modules makes their imports fail as if not installed.
    code = (
        "import sys\n"
        "sys.modules['confluent_kafka'] = None\n"
        "sys.modules['trustzones_native'] = None\n"
        "from trustzones.cli import main\n"
        "code = main(['demo', '--dir', sys.argv[1], '--payments', '60', '--clicks', '20'])\n"
        "assert 'confluent_kafka' not in sys.modules or sys.modules['confluent_kafka'] is None\n"
        "sys.exit(code)\n"
    )
    r = subprocess.run(
        ["python3", "-c", code, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "every signature verified" in r.stdout
