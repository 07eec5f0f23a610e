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
