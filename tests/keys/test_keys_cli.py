"""``trustzones keys`` commands, run through click against real files and a real OpenBao."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from keys_helpers import Bao

from trustzones.cli._keys import group
from trustzones.errors import DecryptionFailed
from trustzones.keys import (
    InsecureKeyFile,
    KeystoreError,
    LocalKeystore,
    MasterKey,
    SqliteKeyTable,
    ZoneCipher,
)

AAD = b"payments/cards/0/1"


def _run(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(group, args, env=env, input=stdin, catch_exceptions=True)


@pytest.fixture
def store(tmp_path: Path) -> dict[str, str]:
    """Environment naming a keystore directory and a fresh master key file."""
    key = tmp_path / "master.key"
    result = _run(["new-master-key", "--out", str(key)])
    assert result.exit_code == 0, result.output
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert MasterKey.from_file(key).key_id in result.stdout
    return {
        "TRUSTZONES_KEYSTORE": str(tmp_path / "keys"),
        "TRUSTZONES_MASTER_KEY_FILE": str(key),
    }


def _cipher(store: dict[str, str]) -> tuple[ZoneCipher, SqliteKeyTable]:
    ks = LocalKeystore(
        store["TRUSTZONES_KEYSTORE"],
        master_key=MasterKey.from_file(store["TRUSTZONES_MASTER_KEY_FILE"]),
    )
    table = SqliteKeyTable(Path(store["TRUSTZONES_KEYSTORE"]) / "payments.keys.sqlite")
    return ZoneCipher("payments", keystore=ks, table=table), table


def test_create_rotate_status_shred(store: dict[str, str]) -> None:
    result = _run(["create", "--zone", "payments"], env=store)
    assert result.exit_code == 0, result.output
    assert result.stdout == "zone payments: KEK version 1 created (local)\n"

    zc, table = _cipher(store)
    record = zc.seal(b"card", aad=AAD)
    token = zc.fields.seal(b"alice@example.com", aad=b"email", subject="alice")
    zc.close()

    result = _run(["rotate", "--zone", "payments"], env=store)
    assert result.exit_code == 0, result.output
    assert "KEK version 2 is now active" in result.stdout
    assert "3 keys rewrapped, 0 failed" in result.stdout  # DEK, root secret, alice's key

    result = _run(["status", "--json"], env=store)
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)
    assert doc["zone"] == "payments"
    assert [v["state"] for v in doc["kek"]["versions"]] == ["decrypt-only", "active"]
    assert doc["deks"]["count"] == 1
    assert doc["deks"]["encryptions"] == 1
    assert doc["needs_rewrap"] == 0

    text = _run(["status", "--zone", "payments"], env=store)
    assert text.exit_code == 0
    assert "v1 decrypt-only, v2 active" in text.stdout

    result = _run(["shred", "--zone", "payments", "--subject", "alice", "--yes"], env=store)
    assert result.exit_code == 0, result.output
    assert result.stdout == "zone payments: subject shredded (1 keys destroyed)\n"

    result = _run(["revoke", "--zone", "payments", "--below", "2", "--yes"], env=store)
    assert result.exit_code == 0, result.output

    reader, table2 = _cipher(store)
    assert reader.open(record, aad=AAD) == b"card"  # rewrapped before the revocation
    with pytest.raises(DecryptionFailed):
        reader.fields.open(token, aad=b"email")
    table.close()
    table2.close()


def test_shred_asks_first_and_aborts_without_yes(store: dict[str, str]) -> None:
    assert _run(["create", "--zone", "payments"], env=store).exit_code == 0
    zc, table = _cipher(store)
    token = zc.fields.seal(b"v", aad=b"f", subject="bob")
    result = _run(["shred", "--zone", "payments", "--subject", "bob"], env=store, stdin="n\n")
    assert result.exit_code == 1
    assert "Aborted" in result.output
    assert zc.fields.open(token, aad=b"f") == b"v"
    table.close()


def test_missing_master_key_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRUSTZONES_MASTER_KEY", raising=False)
    result = _run(["create", "--zone", "payments", "--keystore", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, KeystoreError)
    assert "pass --master-key-file or set TRUSTZONES_MASTER_KEY" in str(result.exception)


def test_insecure_master_key_file_is_refused(store: dict[str, str]) -> None:
    os.chmod(store["TRUSTZONES_MASTER_KEY_FILE"], 0o644)
    result = _run(["create", "--zone", "payments"], env=store)
    assert result.exit_code == 1
    assert isinstance(result.exception, InsecureKeyFile)


def test_rotate_of_unknown_zone_names_the_fix(store: dict[str, str]) -> None:
    result = _run(["rotate", "--zone", "ghost"], env=store)
    assert isinstance(result.exception, KeystoreError)
    assert "trustzones keys create --zone ghost" in str(result.exception)


@pytest.mark.vault
def test_vault_backend_from_the_cli(openbao: Bao, tmp_path: Path) -> None:
    zone = f"z{uuid.uuid4().hex[:10]}"
    env = {
        "TRUSTZONES_KEYSTORE": str(tmp_path / "tables"),
        "TRUSTZONES_VAULT_ADDR": openbao.addr,
        "TRUSTZONES_VAULT_TOKEN": openbao.token,
    }
    assert _run(["create", "--zone", zone], env=env).stdout.endswith("(vault-transit)\n")
    result = _run(["rotate", "--zone", zone], env=env)
    assert result.exit_code == 0, result.output
    result = _run(["status", "--zone", zone, "--json"], env=env)
    assert result.exit_code == 0, result.output
    (doc,) = json.loads(result.stdout)
    assert doc["backend"] == "vault-transit"
    assert doc["kek"]["latest"] == 2
