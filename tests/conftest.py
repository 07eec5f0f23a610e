"""Shared fixtures. Kafka fixtures live in kafka_fixtures.py (a plugin module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustzones.cli import main

pytest_plugins: list[str] = []
try:  # the Kafka plugin lands with the Kafka backend
    import kafka_fixtures  # noqa: F401

    pytest_plugins.append("kafka_fixtures")
except ModuleNotFoundError:
    pass


@pytest.fixture
def workspace_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh e-commerce workspace written by `trustzones init`, as the current directory."""
    d = tmp_path / "ws"
    assert main(["init", str(d)]) == 0
    monkeypatch.chdir(d)
    monkeypatch.delenv("TRUSTZONES_CONFIG", raising=False)
    return d
