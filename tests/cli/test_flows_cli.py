"""The flow commands, run as a user would: generate, approvals, flows, quarantine, watermark."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

FLOW = "payments-to-analytics"


def tz(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["trustzones", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


def jsonl(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def approve_flow(w: Path) -> None:
    """Run the flow once (which opens its approval request), then approve it."""
    assert tz("flows", "run", "--once", cwd=w).returncode == 1
    (req,) = jsonl(tz("approvals", "list", "--json", cwd=w).stdout)
    r = tz("approvals", "approve", str(req["id"]), "--as", "security-officer", cwd=w)
    assert r.returncode == 0, r.stderr


def test_the_whole_story_from_the_command_line(tmp_path: Path) -> None:
    w = tmp_path / "w"
    assert tz("init", str(w), cwd=tmp_path).returncode == 0
    r = tz(
        "generate",
        "payments.transactions",
        "-n",
        "200",
        "--seed",
        "5",
        "--leak-rate",
        "0.1",
        "--as",
        "payments-service",
        cwd=w,
    )
    assert r.returncode == 0, r.stderr
    assert "generated 200 record(s)" in r.stderr

    (flow,) = jsonl(tz("flows", "list", "--json", cwd=w).stdout)
    assert {k: flow[k] for k in ("name", "source", "destination", "principal")} == {
        "name": FLOW,
        "source": "payments.transactions",
        "destination": "analytics.transactions",
        "principal": "flow-payments-to-analytics",
    }

    r = tz("flows", "run", "--once", cwd=w)
    assert r.returncode == 1
    assert "has not been approved" in r.stderr and "role 'security'" in r.stderr
    (req,) = jsonl(tz("approvals", "list", "--json", cwd=w).stdout)
    r = tz("approvals", "approve", str(req["id"]), "--as", "flow-payments-to-analytics", cwd=w)
    assert r.returncode == 1 and "self-approval is refused" in r.stderr
    r = tz("approvals", "approve", str(req["id"]), "--as", "security-officer", cwd=w)
    assert r.returncode == 0, r.stderr

    r = tz("flows", "run", "--once", "--json", cwd=w)
    assert r.returncode == 0, r.stderr
    (stats,) = jsonl(r.stdout)
    assert stats["read"] == 200
    assert stats["delivered"] + stats["quarantined"] == 200
    assert stats["quarantined"] > 5

    # The quarantine is in the restricted zone: people need just-in-time access to it.
    r = tz("quarantine", "list", FLOW, "--as", "security-officer", "--json", cwd=w)
    assert r.returncode == 1 and "just-in-time" in r.stderr
    r = tz(
        "access",
        "request",
        "--zone",
        "payments",
        "--for",
        "1h",
        "--reason",
        "review",
        "--as",
        "security-officer",
        "--json",
        cwd=w,
    )
    assert r.returncode == 0, r.stderr
    rid = json.loads(r.stdout)["id"]
    assert tz("access", "approve", rid, "--as", "security-officer", cwd=w).returncode == 1
    r = tz("access", "approve", rid, "--as", "ciso", cwd=w)
    assert r.returncode == 0, r.stderr
    held = jsonl(tz("quarantine", "list", FLOW, "--as", "security-officer", "--json", cwd=w).stdout)
    assert len(held) == stats["quarantined"]
    assert all({"source_partition", "source_offset", "reason"} <= set(h) for h in held)
    assert all(str(h["reason"]).startswith("DLP found") for h in held)
    r = tz("quarantine", "show", FLOW, str(held[0]["offset"]), "--as", "marketing-analyst", cwd=w)
    assert r.returncode == 1

    # The analyst reads the sanitised topic and hands 100 records to the watermark check.
    r = tz(
        "consume",
        "analytics.transactions",
        "--as",
        "marketing-analyst",
        "--from-beginning",
        "--max",
        "100",
        cwd=w,
    )
    assert r.returncode == 0, r.stderr
    leak = tmp_path / "leak.jsonl"
    leak.write_text(r.stdout)
    r = tz("watermark", "identify", str(leak), "--json", cwd=w)
    assert r.returncode == 0, r.stderr
    best = jsonl(r.stdout)[0]
    assert best["source"] == f"{FLOW} → analytics.transactions" and best["identified"]
    r = tz("consume", "payments.transactions", "--as", "marketing-analyst", cwd=w)
    assert r.returncode == 1 and "no read up" in r.stderr

    status = jsonl(tz("flows", "status", "--json", cwd=w).stdout)[0]
    assert status["approved"] is True and status["lag"] == 0


def test_flows_scale_out_by_disjoint_partition_sets(tmp_path: Path) -> None:
    w = tmp_path / "w"
    assert tz("init", str(w), cwd=tmp_path).returncode == 0
    tz(
        "generate",
        "payments.transactions",
        "-n",
        "90",
        "--seed",
        "9",
        "--leak-rate",
        "0",
        "--as",
        "payments-service",
        cwd=w,
    )
    approve_flow(w)
    first = jsonl(tz("flows", "run", "--once", "--json", "--partitions", "0", cwd=w).stdout)[0]
    rest = jsonl(tz("flows", "run", "--once", "--json", "--partitions", "1,2", cwd=w).stdout)[0]
    assert 0 < first["read"] < 90
    assert first["read"] + rest["read"] == 90
    again = jsonl(tz("flows", "run", "--once", "--json", cwd=w).stdout)[0]
    assert again["read"] == 0
    bad = tz("flows", "run", "--once", "--partitions", "x", cwd=w)
    assert bad.returncode == 2 and "--partitions" in bad.stderr


def test_flows_run_follows_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    import signal
    import time

    w = tmp_path / "w"
    assert tz("init", str(w), cwd=tmp_path).returncode == 0
    tz(
        "generate",
        "payments.transactions",
        "-n",
        "30",
        "--seed",
        "4",
        "--leak-rate",
        "0",
        "--as",
        "payments-service",
        cwd=w,
    )
    approve_flow(w)
    proc = subprocess.Popen(
        ["trustzones", "flows", "run", FLOW, "--json"],
        cwd=w,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the flow has drained the topic
            st = jsonl(tz("flows", "status", "--json", cwd=w).stdout)[0]
            if st["lag"] == 0 and st["positions"]:
                break
            time.sleep(0.5)
        time.sleep(1.0)
        assert proc.poll() is None, "a following flow must keep running"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    (stats,) = jsonl(out)
    assert stats["read"] == 30 and stats["delivered"] == 30
