"""Fixtures for the keys tests: keystores (local and a real OpenBao), audit capture, a clock."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from keys_helpers import AuditLog, Bao, FakeClock

from trustzones.keys import (
    Keystore,
    LocalKeystore,
    MasterKey,
    SqliteKeyTable,
    VaultTransitKeystore,
)

ROOT = Path(__file__).resolve().parents[2]
ZONE = "payments"


def _load_openbao_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tz_openbao", ROOT / "scripts" / "openbao.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tz_openbao"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def openbao() -> Iterator[Bao]:
    """A real OpenBao dev server with Transit: the one .ci/run started (TRUSTZONES_TEST_BAO_*),
    else one started here. Never skipped: if it cannot start, the Vault tests error."""
    addr = os.environ.get("TRUSTZONES_TEST_BAO_ADDR")
    token = os.environ.get("TRUSTZONES_TEST_BAO_TOKEN")
    if addr and token:
        yield Bao(addr, token)
        return
    script = _load_openbao_script()
    server = script.OpenBaoDev()
    server.start()
    try:
        yield Bao(server.addr, server.token)
    finally:
        server.cleanup()


@pytest.fixture
def vault_keystore(openbao: Bao) -> Iterator[VaultTransitKeystore]:
    # A fresh key prefix per test: tests never see each other's keys.
    prefix = f"t{uuid.uuid4().hex[:12]}-"
    with VaultTransitKeystore(url=openbao.addr, token=openbao.token, key_prefix=prefix) as ks:
        yield ks


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def local_keystore(keydir: Path, master_key: MasterKey) -> LocalKeystore:
    return LocalKeystore(keydir, master_key=master_key)


@pytest.fixture(params=["local", pytest.param("vault", marks=pytest.mark.vault)])
def keystore(request: pytest.FixtureRequest) -> Keystore:
    """Each test using this runs on the local keystore and on a real OpenBao server."""
    if request.param == "local":
        ks: Keystore = request.getfixturevalue("local_keystore")
    else:
        ks = request.getfixturevalue("vault_keystore")
    return ks


@pytest.fixture
def table(tmp_path: Path) -> Iterator[SqliteKeyTable]:
    with SqliteKeyTable(tmp_path / f"{ZONE}.keys.sqlite") as t:
        yield t


@pytest.fixture
def audit() -> AuditLog:
    return AuditLog()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
