from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trustzones.zone import Workspace


@pytest.fixture
def ws(workspace_dir: Path) -> Iterator[Workspace]:
    w = Workspace.open()
    yield w
    w.close()
