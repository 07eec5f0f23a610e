"""``trustzones access``: request/approve/deny/grants/revoke/break-glass/review/schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from access_helpers import NOW
from click.testing import CliRunner, Result

from trustzones.access import load_directory
from trustzones.cli._access import AccessCliContext, group
from trustzones.errors import AccessDenied

DIRECTORY = {
    "levels": ["public", "internal", "confidential", "restricted"],
    "zones": {
        "analytics": {"classification": "public", "topics": ["clicks"]},
        "payments": {
            "classification": "restricted",
            "topics": ["cards"],
            "auth_methods": ["mtls", "oidc"],
            "mfa_required": True,
            "jit_required": True,
            "approvals": {"count": 2, "approver_role": "executive"},
            "break_glass_roles": ["oncall"],
        },
    },
    "principals": {
        "dana": {"kind": "user", "clearance": "restricted", "auth_methods": ["oidc"],
                 "roles": ["oncall"]},
        "cfo": {"kind": "user", "clearance": "restricted", "auth_methods": ["oidc"],
                "roles": ["executive"]},
        "ceo": {"kind": "user", "clearance": "restricted", "auth_methods": ["oidc"],
                "roles": ["executive"]},
        "auditor": {"kind": "user", "clearance": "restricted", "auth_methods": ["oidc"],
                    "roles": ["security-admin"]},
    },
    "grants": [
        {"id": "g-cfo", "principal": "cfo", "zone": "payments", "access": ["read"]},
        {"id": "g-ceo", "principal": "ceo", "zone": "payments", "access": ["read"]},
    ],
}  # fmt: skip


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    directory = tmp_path / "access.yaml"
    directory.write_text(yaml.safe_dump(DIRECTORY))
    return directory, tmp_path / "grants.db"


def run(files: tuple[Path, Path], actor: str, *args: str) -> Result:
    directory, store = files
    return CliRunner().invoke(
        group, ["--store", str(store), "--directory", str(directory), "--actor", actor, *args]
    )


def test_request_json_prints_the_new_id(files: tuple[Path, Path]) -> None:
    result = run(
        files, "dana", "request", "--topic", "payments/cards", "--for", "2h",
        "--reason", "INC-7", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["id"].startswith("req-") and data["status"] == "pending"
    assert data["resource"] == "payments/cards" and data["duration_minutes"] == 120


def test_request_approve_grants_revoke_flow(files: tuple[Path, Path]) -> None:
    out = run(files, "dana", "request", "--topic", "cards", "--for", "1h30m", "--reason", "x",
              "--json")  # fmt: skip
    request_id = json.loads(out.output)["id"]
    pending = run(files, "cfo", "approve", request_id)
    assert pending.output.strip() == f"request {request_id} pending: 1 of 2 approvals"
    granted = json.loads(run(files, "ceo", "approve", request_id, "--json").output)
    assert granted["status"] == "granted"
    grant_id = granted["grant_id"]
    listing = json.loads(run(files, "auditor", "grants", "--principal", "dana", "--json").output)
    assert [g["id"] for g in listing] == [grant_id]
    assert listing[0]["approved_by"] == ["cfo", "ceo"]
    revoked = run(files, "auditor", "revoke", grant_id, "--reason", "done")
    assert revoked.exit_code == 0 and revoked.output.strip() == f"grant {grant_id} revoked"
    assert json.loads(run(files, "auditor", "grants", "--principal", "dana", "--json").output) == []
    everything = json.loads(
        run(files, "auditor", "grants", "--principal", "dana", "--all", "--json").output
    )
    assert everything[0]["status"] == "revoked" and everything[0]["revoked_by"] == "auditor"


def test_self_approval_raises_access_denied(files: tuple[Path, Path]) -> None:
    request_id = json.loads(
        run(
            files, "cfo", "request", "--zone", "payments", "--for", "1h", "--reason", "r", "--json"
        ).output
    )["id"]
    result = run(files, "cfo", "approve", request_id)
    assert result.exit_code == 1
    assert isinstance(result.exception, AccessDenied)
    assert "self-approval is not allowed" in str(result.exception)


def test_deny_and_pending_list(files: tuple[Path, Path]) -> None:
    request_id = json.loads(
        run(
            files, "dana", "request", "--zone", "payments", "--for", "1h", "--reason", "r", "--json"
        ).output
    )["id"]
    pending = json.loads(run(files, "cfo", "requests", "--json").output)
    assert [r["id"] for r in pending] == [request_id]
    assert run(files, "cfo", "deny", request_id, "--reason", "no").output.strip() == (
        f"request {request_id} denied"
    )
    assert json.loads(run(files, "cfo", "requests", "--json").output) == []


def test_break_glass_and_review(files: tuple[Path, Path]) -> None:
    out = run(files, "dana", "break-glass", "--zone", "payments", "--reason", "SEV1", "--json")
    assert out.exit_code == 0, out.output
    grant = json.loads(out.output)
    assert grant["break_glass"] is True
    review = json.loads(run(files, "auditor", "review", "--zone", "payments", "--json").output)
    flagged = [row for row in review if row["break_glass"]]
    assert [row["id"] for row in flagged] == [grant["id"]]
    text = run(files, "auditor", "review", "--zone", "payments").output
    assert "BREAK-GLASS" in text and "g-cfo" in text
    audit_log = files[1].with_name("grants.db.audit.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in audit_log]
    assert any(e["kind"] == "access.break_glass" and e["flagged"] for e in events)


def test_usage_errors(files: tuple[Path, Path]) -> None:
    both = run(files, "dana", "request", "--topic", "cards", "--zone", "payments", "--for", "1h",
               "--reason", "r")  # fmt: skip
    assert both.exit_code == 2 and "exactly one of --topic or --zone" in both.output
    missing = CliRunner().invoke(group, ["grants"])
    assert missing.exit_code == 2 and "--store" in missing.output


def test_schema_needs_no_files() -> None:
    result = CliRunner().invoke(group, ["schema"])
    assert result.exit_code == 0 and "namespace Trustzones" in result.output


def test_injected_context_and_clock(files: tuple[Path, Path]) -> None:
    directory, store = files
    events: list[object] = []
    obj = AccessCliContext(load_directory(directory), store, "dana", events.append, lambda: NOW)
    result = CliRunner().invoke(
        group, ["request", "--zone", "payments", "--for", "1h", "--reason", "r", "--json"], obj=obj
    )
    assert json.loads(result.output)["created_at"] == NOW.isoformat()
    assert len(events) == 1


def test_top_level_cli_reports_handled_errors(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from trustzones.cli import main

    directory, store = files
    base = ["access", "--store", str(store), "--directory", str(directory)]
    assert main([*base, "--actor", "cfo", "approve", "req-missing"]) == 1
    assert "no request 'req-missing'" in capsys.readouterr().err
