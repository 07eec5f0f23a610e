"""The credential store: file protection, passwords, API keys, TOTP enrolment and replay."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from trustzones.access import (
    CredentialStore,
    CredentialStoreError,
    create_store_key_file,
    read_store_key_file,
    totp_at_time,
)

KEY = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    s = CredentialStore.create(tmp_path / "credentials.db", key=KEY)
    yield s  # type: ignore[misc]
    s.close()


def _secret(enrolment_b32: str) -> bytes:
    return base64.b32decode(enrolment_b32 + "=" * (-len(enrolment_b32) % 8))


def test_store_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    CredentialStore.create(path, key=KEY).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_store_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    CredentialStore.create(path, key=KEY).close()
    os.chmod(path, 0o644)
    with pytest.raises(CredentialStoreError, match=r"mode 0644.*chmod 600"):
        CredentialStore.open(path, key=KEY)


def test_wrong_store_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    CredentialStore.create(path, key=KEY).close()
    with pytest.raises(CredentialStoreError, match="key does not open"):
        CredentialStore.open(path, key=bytes(32))
    CredentialStore.open(path, key=KEY).close()


def test_key_file_round_trip_and_protection(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    key = create_store_key_file(path)
    assert read_store_key_file(path) == key
    os.chmod(path, 0o640)
    with pytest.raises(CredentialStoreError, match="chmod 600"):
        read_store_key_file(path)


def test_password_good_and_bad(store: CredentialStore) -> None:
    store.set_password("alice", "correct horse", iterations=4096)
    assert store.verify_password("alice", "correct horse")
    assert not store.verify_password("alice", "correct horse ")
    assert not store.verify_password("bob", "correct horse")


def test_clear_password_is_never_stored(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with CredentialStore.create(path, key=KEY) as s:
        s.set_password("alice", "Sup3rSecretPassw0rd", iterations=4096)
        credential = s.scram_credential("alice")
    raw = path.read_bytes()
    assert b"Sup3rSecretPassw0rd" not in raw
    assert credential is not None and credential.stored_key in raw


def test_api_key_good_bad_revoked_expired(store: CredentialStore, now: datetime) -> None:
    key = store.create_api_key("bi-service", now=now, expires_at=now + timedelta(days=1))
    assert key.secret.startswith(f"tzk_{key.key_id}_")
    assert store.verify_api_key_at_time(key.secret, now) == "bi-service"
    tampered = key.secret[:-1] + ("A" if key.secret[-1] != "A" else "B")
    assert store.verify_api_key_at_time(tampered, now) is None
    assert store.verify_api_key_at_time("tzk_nothing", now) is None
    assert store.verify_api_key_at_time("", now) is None
    assert store.verify_api_key_at_time(key.secret, now + timedelta(days=1)) is None  # expired
    assert store.revoke_api_key(key.key_id, now=now)
    assert store.verify_api_key_at_time(key.secret, now) is None


def test_api_key_secret_is_stored_only_as_a_digest(tmp_path: Path, now: datetime) -> None:
    path = tmp_path / "c.db"
    with CredentialStore.create(path, key=KEY) as s:
        key = s.create_api_key("bi-service", now=now)
    secret_part = key.secret.split("_", 2)[2]
    assert secret_part.encode() not in path.read_bytes()


def test_totp_enrol_confirm_verify_and_replay(store: CredentialStore, now: datetime) -> None:
    enrolment = store.begin_totp_enrolment("alice")
    secret = _secret(enrolment.secret_base32)
    assert enrolment.uri.startswith("otpauth://totp/trustzones%3Aalice?secret=")
    assert not store.has_totp("alice")
    assert not store.verify_totp_at_time("alice", totp_at_time(secret, now), now)  # unconfirmed
    assert store.confirm_totp_enrolment("alice", totp_at_time(secret, now), now=now)
    assert store.has_totp("alice")
    later = now + timedelta(seconds=30)
    code = totp_at_time(secret, later)
    assert store.verify_totp_at_time("alice", code, later)
    assert not store.verify_totp_at_time("alice", code, later), "a replayed code must fail"
    # a code from an earlier step than the last accepted one is refused too
    assert not store.verify_totp_at_time("alice", totp_at_time(secret, now), later)


def test_totp_window_is_one_step(store: CredentialStore, now: datetime) -> None:
    secret = _secret(store.begin_totp_enrolment("alice").secret_base32)
    assert store.confirm_totp_enrolment("alice", totp_at_time(secret, now), now=now)
    t = now + timedelta(minutes=5)
    assert store.verify_totp_at_time("alice", totp_at_time(secret, t - timedelta(seconds=30)), t)
    t2 = t + timedelta(minutes=5)
    assert not store.verify_totp_at_time(
        "alice", totp_at_time(secret, t2 - timedelta(seconds=90)), t2
    )
    assert store.verify_totp_at_time("alice", totp_at_time(secret, t2 + timedelta(seconds=30)), t2)


def test_totp_locks_after_five_wrong_codes(store: CredentialStore, now: datetime) -> None:
    secret = _secret(store.begin_totp_enrolment("alice").secret_base32)
    assert store.confirm_totp_enrolment("alice", totp_at_time(secret, now), now=now)
    t = now + timedelta(minutes=1)
    good = totp_at_time(secret, t)
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(5):
        assert not store.verify_totp_at_time("alice", wrong, t)
    assert store.totp_locked_until("alice") == t + timedelta(minutes=5)
    assert not store.verify_totp_at_time("alice", good, t), "locked: even a good code fails"
    t3 = t + timedelta(minutes=6)
    assert store.verify_totp_at_time("alice", totp_at_time(secret, t3), t3)


def test_confirmed_enrolment_is_not_silently_replaced(
    store: CredentialStore, now: datetime
) -> None:
    secret = _secret(store.begin_totp_enrolment("alice").secret_base32)
    store.confirm_totp_enrolment("alice", totp_at_time(secret, now), now=now)
    with pytest.raises(CredentialStoreError, match="already has TOTP"):
        store.begin_totp_enrolment("alice")
    store.remove_totp("alice")
    assert not store.has_totp("alice")


def test_totp_secret_is_encrypted_and_bound_to_its_principal(tmp_path: Path, now: datetime) -> None:
    path = tmp_path / "c.db"
    with CredentialStore.create(path, key=KEY) as s:
        enrolment = s.begin_totp_enrolment("alice")
        s.begin_totp_enrolment("mallory")
    secret = _secret(enrolment.secret_base32)
    raw = path.read_bytes()
    assert secret not in raw and enrolment.secret_base32.encode() not in raw
    # copy alice's sealed secret onto mallory's row: it must not decrypt under mallory's name
    conn = sqlite3.connect(path)
    nonce, ct = conn.execute(
        "SELECT nonce, ciphertext FROM totp WHERE principal='alice'"
    ).fetchone()
    conn.execute("UPDATE totp SET nonce=?, ciphertext=? WHERE principal='mallory'", (nonce, ct))
    conn.commit()
    conn.close()
    with (
        CredentialStore.open(path, key=KEY) as s,
        pytest.raises(CredentialStoreError, match="does not decrypt"),
    ):
        s.confirm_totp_enrolment("mallory", totp_at_time(secret, now), now=now)
