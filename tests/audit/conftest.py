"""Fixtures for the audit tests: a signing key, a fresh log. Helpers are in audit_helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trustzones.audit import AuditLog, NoteSigner


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate("audit.test/restricted")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "audit.db"


@pytest.fixture
def log(db: Path, signer: NoteSigner) -> Iterator[AuditLog]:
    with AuditLog.open(db, signer=signer, checkpoint_interval=16) as opened:
        yield opened
