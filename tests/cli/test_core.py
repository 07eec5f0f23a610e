"""The trustzones command, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

CLICK = '{"event_id":"e1","timestamp":"2026-11-28T10:00:00Z","session_id":"s1","page":"/"}'


def tz(
    *args: str, stdin: str = "", cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["trustzones", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_init_validate_zones(tmp_path: Path) -> None:
    r = tz("init", str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "w" / "trustzones.yaml").exists()
    r = tz("validate", cwd=tmp_path / "w")
    assert r.returncode == 0 and "valid — 2 zones, 3 topics" in r.stdout
    r = tz("zones", "--json", cwd=tmp_path / "w")
    zones = [json.loads(line) for line in r.stdout.splitlines()]
    assert [z["zone"] for z in zones] == ["payments", "analytics"]
    assert zones[0]["topics"] == ["payments.transactions"]
    r = tz("init", str(tmp_path / "w"))
    assert r.returncode == 1 and "already exists; use --force" in r.stderr


def test_config_from_env_and_flag(tmp_path: Path) -> None:
    tz("init", str(tmp_path / "w"))
    cfg = str(tmp_path / "w" / "trustzones.yaml")
    assert tz("validate", cwd=tmp_path, env={"TRUSTZONES_CONFIG": cfg}).returncode == 0
    assert tz("--config", cfg, "validate", cwd=tmp_path).returncode == 0
    r = tz("validate", cwd=tmp_path)
    assert r.returncode == 1
    assert "no such file. Create one with `trustzones init`" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    tz("init", str(tmp_path / "w"))
    p = tmp_path / "w" / "trustzones.yaml"
    p.write_text(
        p.read_text()
        .replace("zone: analytics\n", "zone: analytix\n", 1)
        .replace(
            "clearance: public, auth_methods: [password]",
            "clearance: publik, auth_methods: [password]",
        )
    )
    r = tz("validate", cwd=tmp_path / "w")
    assert r.returncode == 1
    assert "2 problems found" in r.stderr or "problems found" in r.stderr
    assert "zone 'analytix', which does not exist" in r.stderr
    assert "unknown classification 'publik'" in r.stderr


def test_produce_consume_and_refusals(tmp_path: Path) -> None:
    w = tmp_path / "w"
    tz("init", str(w))
    lines = CLICK + "\n" + CLICK.replace('"page":"/"', '"page":7') + "\n"
    r = tz("produce", "analytics.clickstream", "--as", "clickstream-service", stdin=lines, cwd=w)
    assert r.returncode == 1
    assert (
        "refused line 2, field page: does not match the schema of 'analytics.clickstream': "
        "must be of type 'string'" in r.stderr
    )
    assert "produced 1 record(s) to analytics.clickstream; refused 1" in r.stderr
    r = tz(
        "consume",
        "analytics.clickstream",
        "--as",
        "marketing-analyst",
        "--from-beginning",
        "--json",
        cwd=w,
    )
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert rec["value"]["event_id"] == "e1"
    assert rec["headers"]["tz.producer"] == "clickstream-service"
    assert {"partition", "offset", "key", "value", "headers"} <= set(rec)
    r = tz("consume", "payments.transactions", "--as", "marketing-analyst", cwd=w)
    assert r.returncode == 1
    assert "may not read 'payments.transactions'" in r.stderr and "no read up" in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    r = tz("-v", "consume", "payments.transactions", "--as", "marketing-analyst", cwd=w)
    assert "Traceback" in r.stderr


def test_group_commits_between_runs(tmp_path: Path) -> None:
    w = tmp_path / "w"
    tz("init", str(w))
    tz("produce", "analytics.clickstream", "--as", "clickstream-service", stdin=CLICK, cwd=w)
    args = ("consume", "analytics.clickstream", "--as", "marketing-analyst", "--group", "g")
    assert len(tz(*args, cwd=w).stdout.splitlines()) == 1
    assert tz(*args, cwd=w).stdout == ""
    tz("produce", "analytics.clickstream", "--as", "clickstream-service", stdin=CLICK, cwd=w)
    assert len(tz(*args, cwd=w, env={"TRUSTZONES_CONSUME_GROUP": "g"}).stdout.splitlines()) == 1


@pytest.mark.parametrize("bad", ["maybe", "2"])
def test_boolean_env_is_strict(tmp_path: Path, bad: str) -> None:
    w = tmp_path / "w"
    tz("init", str(w))
    r = tz(
        "consume",
        "analytics.clickstream",
        "--as",
        "marketing-analyst",
        cwd=w,
        env={"TRUSTZONES_CONSUME_FOLLOW": bad},
    )
    assert r.returncode == 2


def test_keys_commands_use_the_workspace_and_rotation_keeps_data_readable(
    tmp_path: Path,
) -> None:
    w = tmp_path / "w"
    tz("init", str(w))
    assert (
        tz(
            "produce", "analytics.clickstream", "--as", "clickstream-service", stdin=CLICK, cwd=w
        ).returncode
        == 0
    )
    r = tz("keys", "rotate", "--zone", "analytics", cwd=w)
    assert r.returncode == 0, r.stderr
    assert "KEK version 2 is now active" in r.stdout
    (status,) = json.loads(tz("keys", "status", "--zone", "analytics", "--json", cwd=w).stdout)
    assert status["kek"]["latest"] == 2
    r = tz(
        "consume", "analytics.clickstream", "--as", "marketing-analyst", "--from-beginning", cwd=w
    )
    assert r.returncode == 0 and json.loads(r.stdout)["event_id"] == "e1"
