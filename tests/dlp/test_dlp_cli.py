"""trustzones dlp scan."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from trustzones.cli import main

LINES = [
    b'{"customer": {"cards": [{"number": "4111 1111 1111 1111"}]}, "n": 5555555555554444}',
    b'not json {"ssn": "123-45-6789"}',
    b"",
    b'{"note": "call +1 415 555 0132"}',
    b'{"ok": "nothing"}',
    b'{"ssn": "123-45-6789"',
]


def write(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_scan_json_output_and_bad_lines(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, LINES)
    assert main(["dlp", "scan", str(path), "--json"]) == 4
    out, err = capfd.readouterr()
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["record"], r["path"], r["type"], r["start"], r["end"]) for r in rows] == [
        (0, "customer.cards[0].number", "CREDIT_CARD", 0, 19),
        (0, "n", "CREDIT_CARD", 0, 16),
        (3, "note", "PHONE_NUMBER", 5, 20),
    ]
    assert f"{path}:2: skipped: not valid JSON" in err
    assert f"{path}:6: skipped: not valid JSON" in err
    assert "123-45-6789" not in err and "123-45-6789" not in out
    assert "3 finding(s)" in err and "2 unreadable line(s)" in err


def test_scan_exit_status(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["dlp", "scan", str(write(tmp_path, [LINES[0]]))]) == 3
    out, _ = capfd.readouterr()
    assert "record 0  customer.cards[0].number  CREDIT_CARD  [0, 19)  0.99" in out
    assert main(["dlp", "scan", str(write(tmp_path, [LINES[4]]))]) == 0
    assert main(["dlp", "scan", str(tmp_path / "missing.jsonl")]) == 1
    _, err = capfd.readouterr()
    assert "cannot read" in err


def test_scan_types_and_engine(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, [LINES[0], LINES[3]])
    assert (
        main(["dlp", "scan", str(path), "--json", "--types", "phone_number", "--engine", "python"])
        == 3
    )
    out, _ = capfd.readouterr()
    assert [orjson.loads(line)["type"] for line in out.splitlines()] == ["PHONE_NUMBER"]
    for engine in ("native", "hyperscan"):
        args = ["dlp", "scan", str(path), "--json", "--types", "phone_number", "--engine", engine]
        assert main(args) == 3
        again, err = capfd.readouterr()
        assert again == out
    assert main(["dlp", "scan", str(path), "--types", "NOPE"]) == 1
    _, err = capfd.readouterr()
    assert "unknown entity type" in err
