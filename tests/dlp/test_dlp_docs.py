"""The runnable examples in the public modules' docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["scanner", "transforms", "vault", "redact", "synth"],
)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(f"trustzones.dlp.{module}")
    result = doctest.testmod(mod)
    assert result.attempted > 0
    assert result.failed == 0
