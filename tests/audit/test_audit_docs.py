"""The runnable examples at the top of the audit modules still run."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "module",
    ["trustzones.audit.merkle", "trustzones.audit.notes", "trustzones.audit.events",
     "trustzones.audit.log"],
)  # fmt: skip
def test_module_example_runs(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = importlib.import_module(module).__doc__ or ""
    block = doc.split("::\n\n", 1)[1]
    lines = []
    for line in block.split("\n"):
        if line and not line.startswith("    "):
            break
        lines.append(line)
    monkeypatch.chdir(tmp_path)  # examples may create files
    exec(compile(textwrap.dedent("\n".join(lines)), module, "exec"), {})  # noqa: S102
