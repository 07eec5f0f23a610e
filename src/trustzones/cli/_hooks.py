"""Extension points the parts add to (e.g. ``init`` writing credentials or keys)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trustzones.config import Config

INIT_HOOKS: list[Callable[[Config], list[Path]]] = []
