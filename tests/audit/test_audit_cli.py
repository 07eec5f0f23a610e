"""``trustzones audit ...``: the commands end to end, through the real ``trustzones`` entry point
(errors become exit 1 with a message) and, for the reading commands, with an auditor check
installed the way the access part will install it (``ctx.meta[AUDITOR_CHECK]``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import click
import pytest
from audit_helpers import make_events, raw
from click.testing import CliRunner

from trustzones.audit import AuditLog, NoteSigner
from trustzones.cli import main
from trustzones.cli._audit import AUDITOR_CHECK
from trustzones.cli._audit import group as audit_group


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    key, pub, db = tmp_path / "secrets" / "audit.key", tmp_path / "audit.pub", tmp_path / "a.db"
    key.parent.mkdir()
    assert main(["audit", "keygen", "--origin", "audit.test/cli", "--key", str(key),
                 "--public-key", str(pub)]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert out.out.strip() == pub.read_text().strip()
    assert "PRIVATE" not in out.out + out.err
    with AuditLog.open(db, signer=NoteSigner.from_file(key)) as log:
        log.append_many(make_events(40))
    return key, pub, db


def as_auditor(args: list[str], who_may_read: str = "carol") -> click.testing.Result:
    """Run ``audit ARGS`` with an auditor check that lets only ``who_may_read`` read."""

    @click.group()
    @click.pass_context
    def root(ctx: click.Context) -> None:
        ctx.meta[AUDITOR_CHECK] = lambda principal, operation: principal == who_may_read

    root.add_command(audit_group)
    return CliRunner().invoke(root, ["audit", *args])


def test_the_audit_group_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--help"]) == 0
    out = capsys.readouterr().out
    for command in ("tail", "search", "verify", "prove", "check-proof", "checkpoint", "keygen"):
        assert command in out


def test_verify_ok_and_tampered(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, pub, db = setup
    assert main(["audit", "verify", "--db", str(db), "--public-key", str(pub)]) == 0
    assert capsys.readouterr().out.startswith("ok: audit.test/cli: 40 entries, root ")
    con = raw(db)
    con.execute("UPDATE events SET body = CAST(REPLACE(CAST(body AS TEXT), '\"offset\":4', "
                "'\"offset\":5') AS BLOB) WHERE leaf_index = 4")  # fmt: skip
    con.close()
    assert main(["audit", "verify", "--db", str(db), "--public-key", str(pub)]) == 1
    err = capsys.readouterr().err
    assert "error: audit log verification failed: entry 4 (event id " in err


def test_reading_is_denied_without_an_auditor_check(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, db = setup
    for args in (["tail"], ["search", "--zone", "restricted"], ["prove", "some-id"]):
        assert main(["audit", *args, "--db", str(db), "--as", "carol"]) == 1
        captured = capsys.readouterr()
        assert "needs the auditor role" in captured.err
        assert captured.out == ""


def test_tail_and_search_for_auditors(setup: tuple[Path, Path, Path]) -> None:
    _, _, db = setup
    result = as_auditor(["tail", "--db", str(db), "--as", "carol", "-n", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["37", "38", "39"]
    result = as_auditor(
        ["search", "--db", str(db), "--as", "carol", "--principal", "user-0", "--json"]
    )
    assert result.exit_code == 0, result.output
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["leaf_index"] for f in found] == [0, 15, 30]
    assert {f["event"]["data"]["principal"] for f in found} == {"user-0"}
    result = as_auditor(
        ["search", "--db", str(db), "--as", "carol", "--decision", "deny",
         "--since", "2026-03-01T12:00:10Z", "--until", "2026-03-01T12:00:30Z"]
    )  # fmt: skip
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["12", "24"]
    denied = as_auditor(["tail", "--db", str(db), "--as", "mallory"])
    assert denied.exit_code != 0 and "auditor role" in str(denied.exception)


def test_prove_and_check_proof(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pub, db = setup
    con = sqlite3.connect(db)
    (event_id,) = con.execute("SELECT event_id FROM events WHERE leaf_index = 17").fetchone()
    con.close()
    proof = tmp_path / "proof.json"
    result = as_auditor(["prove", event_id, "--db", str(db), "--as", "carol", "--out", str(proof)])
    assert result.exit_code == 0, result.output
    assert main(["audit", "check-proof", str(proof), "--public-key", str(pub)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["id"] == event_id
    assert "ok: entry 17 of a signed log of 40 entries" in captured.err
    doc = json.loads(proof.read_text())
    doc["event"]["data"]["offset"] = 18
    proof.write_text(json.dumps(doc))
    assert main(["audit", "check-proof", str(proof), "--public-key", str(pub)]) == 1
    assert "not entry 17 of the signed log" in capsys.readouterr().err
    printed = as_auditor(["prove", event_id, "--db", str(db), "--as", "carol"])
    assert json.loads(printed.stdout)["leaf_index"] == 17


def test_checkpoint_and_trusted_verify(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub, db = setup
    assert main(["audit", "checkpoint", "--db", str(db), "--key", str(key)]) == 0
    note = capsys.readouterr().out
    assert note.startswith("audit.test/cli\n40\n") and "\n\n— audit.test/cli " in note
    published = tmp_path / "published.txt"
    published.write_text(note)
    args = ["audit", "verify", "--db", str(db), "--public-key", str(pub), "--trusted"]
    assert main([*args, str(published)]) == 0
    assert "1 checkpoints, extends 1 trusted" in capsys.readouterr().out
    assert main(["audit", "checkpoint", "--db", str(tmp_path / "none.db"), "--key", str(key)]) == 1
    assert "no audit log at" in capsys.readouterr().err
