"""The local keystore: master keys, file permissions, per-zone master keys, file format."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from trustzones.errors import KeyAccessDenied
from trustzones.keys import (
    InsecureKeyFile,
    KeystoreError,
    LocalKeystore,
    MasterKey,
    UnwrapFailed,
)


def test_master_key_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    created = MasterKey.create_file(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert MasterKey.from_file(path).key_id == created.key_id
    with pytest.raises(KeystoreError, match="refusing to overwrite"):
        MasterKey.create_file(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_master_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    MasterKey.create_file(path)
    os.chmod(path, mode)
    with pytest.raises(InsecureKeyFile, match=f"chmod 600 {path}"):
        MasterKey.from_file(path)


def test_master_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("TRUSTZONES_MASTER_KEY", base64.b64encode(raw).decode())
    assert MasterKey.from_env().key_id == MasterKey(raw).key_id
    monkeypatch.setenv("TRUSTZONES_MASTER_KEY", "not base64!")
    with pytest.raises(KeystoreError, match="TRUSTZONES_MASTER_KEY is not valid base64"):
        MasterKey.from_env()
    monkeypatch.setenv("TRUSTZONES_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(KeystoreError, match="must be 32 bytes, got 5"):
        MasterKey.from_env()
    monkeypatch.delenv("TRUSTZONES_MASTER_KEY")
    with pytest.raises(KeystoreError, match="TRUSTZONES_MASTER_KEY is not set"):
        MasterKey.from_env()


def test_master_key_never_shows_in_repr() -> None:
    raw = os.urandom(32)
    text = repr(MasterKey(raw))
    assert raw.hex() not in text
    assert base64.b64encode(raw).decode() not in text


def test_kek_file_is_private_and_holds_no_plaintext_key(
    local_keystore: LocalKeystore, keydir: Path
) -> None:
    local_keystore.create_kek("payments")
    path = keydir / "payments.kek.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["format"] == "trustzones.local-kek.v1"
    (version,) = doc["versions"]
    # 12-byte nonce + 32-byte X25519 private key + 16-byte tag: wrapped, not raw.
    assert len(base64.b64decode(version["private_key"])) == 12 + 32 + 16


def test_kek_file_readable_by_group_is_refused(local_keystore: LocalKeystore, keydir: Path) -> None:
    local_keystore.create_kek("payments")
    os.chmod(keydir / "payments.kek.json", 0o640)
    with pytest.raises(InsecureKeyFile, match="accessible by group or others"):
        local_keystore.wrap("payments", b"k" * 32, aad=b"x")


def test_group_writable_directory_is_refused(local_keystore: LocalKeystore, keydir: Path) -> None:
    local_keystore.create_kek("payments")
    os.chmod(keydir, 0o770)  # noqa: S103 - the insecure mode under test
    with pytest.raises(InsecureKeyFile, match="chmod 700"):
        local_keystore.status("payments")


def test_wrong_master_key_is_named_as_such(keydir: Path, master_key: MasterKey) -> None:
    LocalKeystore(keydir, master_key=master_key).create_kek("payments")
    blob = LocalKeystore(keydir).wrap("payments", b"k" * 32, aad=b"x").blob
    other = LocalKeystore(keydir, master_key=MasterKey.generate())
    with pytest.raises(KeystoreError, match="use the right master key"):
        other.unwrap("payments", blob, aad=b"x")


def test_modified_kek_file_is_detected(local_keystore: LocalKeystore, keydir: Path) -> None:
    local_keystore.create_kek("payments")
    blob = local_keystore.wrap("payments", b"k" * 32, aad=b"x").blob
    path = keydir / "payments.kek.json"
    doc = json.loads(path.read_text())
    wrapped = bytearray(base64.b64decode(doc["versions"][0]["private_key"]))
    wrapped[20] ^= 1
    doc["versions"][0]["private_key"] = base64.b64encode(bytes(wrapped)).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="was modified"):
        local_keystore.unwrap("payments", blob, aad=b"x")


def test_keystore_without_master_key_wraps_but_cannot_unwrap(
    local_keystore: LocalKeystore, keydir: Path
) -> None:
    local_keystore.create_kek("analytics")
    wrap_only = LocalKeystore(keydir)  # a flow writing into "analytics" holds no secret of it
    blob = wrap_only.wrap("analytics", b"k" * 32, aad=b"x").blob
    with pytest.raises(KeyAccessDenied, match="may wrap keys for 'analytics' but not unwrap"):
        wrap_only.unwrap("analytics", blob, aad=b"x")
    with pytest.raises(KeystoreError, match="holds no master key"):
        wrap_only.rotate_kek("analytics")
    assert local_keystore.unwrap("analytics", blob, aad=b"x") == b"k" * 32


def test_per_zone_master_keys_confine_unwrapping(keydir: Path) -> None:
    keys = {"payments": MasterKey.generate(), "analytics": MasterKey.generate()}
    admin = LocalKeystore(keydir, master_key=keys)
    for zone in keys:
        admin.create_kek(zone)
    blob = admin.wrap("payments", b"k" * 32, aad=b"x").blob
    analytics_only = LocalKeystore(keydir, master_key={"analytics": keys["analytics"]})
    with pytest.raises(KeyAccessDenied):
        analytics_only.unwrap("payments", blob, aad=b"x")
    # Even the analytics master key cannot open the payments KEK file.
    payments_file_with_wrong_key = LocalKeystore(keydir, master_key=keys["analytics"])
    with pytest.raises(KeystoreError, match="use the right master key"):
        payments_file_with_wrong_key.unwrap("payments", blob, aad=b"x")


def test_garbage_blob_is_an_unwrap_failure(local_keystore: LocalKeystore) -> None:
    local_keystore.create_kek("payments")
    with pytest.raises(UnwrapFailed) as info:
        local_keystore.unwrap("payments", b"vault:v1:abc", aad=b"x")
    assert "not a key wrapped by the local keystore" in info.value.reason
    assert "local keystore" not in str(info.value)  # the message stays opaque


@pytest.mark.parametrize("zone", ["", "../etc", "a/b", ".hidden", "x" * 64])
def test_zone_names_that_cannot_name_a_file_are_refused(
    local_keystore: LocalKeystore, zone: str
) -> None:
    with pytest.raises(KeystoreError, match="cannot name a key"):
        local_keystore.create_kek(zone)
