"""Shared fixtures. Kafka fixtures live in kafka_fixtures.py (a plugin module)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from trustzones.cli import main

# The Kafka fixtures are a plugin module beside this file (found without importing it, so
# pytest can rewrite its asserts).
pytest_plugins = (
    ["kafka_fixtures"] if importlib.util.find_spec("kafka_fixtures") is not None else []
)


@pytest.fixture
def workspace_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh e-commerce workspace written by `trustzones init`, as the current directory."""
    d = tmp_path / "ws"
    assert main(["init", str(d)]) == 0
    monkeypatch.chdir(d)
    monkeypatch.delenv("TRUSTZONES_CONFIG", raising=False)
    return d
