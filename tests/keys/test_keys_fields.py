"""Deterministic field encryption, derived secrets and crypto-shredding."""

from __future__ import annotations

import pytest
from keys_helpers import AuditLog, FakeClock

from trustzones.errors import DecryptionFailed
from trustzones.keys import (
    FIELD_FORMAT_VERSION,
    DekPolicy,
    KeyAdmin,
    Keystore,
    LocalKeystore,
    SqliteKeyTable,
    ZoneCipher,
)


def _cipher(keystore: Keystore, table: SqliteKeyTable, audit: AuditLog, **kw: object) -> ZoneCipher:
    keystore.create_kek("payments", exist_ok=True)
    return ZoneCipher("payments", keystore=keystore, table=table, audit=audit, **kw)  # type: ignore[arg-type]


def test_equal_values_give_equal_tokens(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    f = _cipher(keystore, table, audit).fields
    t1 = f.seal(b"alice@example.com", aad=b"customer.email")
    assert t1[0] == FIELD_FORMAT_VERSION
    assert f.seal(b"alice@example.com", aad=b"customer.email") == t1
    assert f.seal(b"bob@example.com", aad=b"customer.email") != t1
    assert f.seal(b"alice@example.com", aad=b"customer.backup_email") != t1
    assert f.open(t1, aad=b"customer.email") == b"alice@example.com"
    # Another process (fresh cipher, same zone) produces the same token: joins work.
    assert (
        _cipher(keystore, table, audit).fields.seal(b"alice@example.com", aad=b"customer.email")
        == t1
    )


def test_subject_tokens_are_deterministic_per_subject(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    f = _cipher(local_keystore, table, audit).fields
    a1 = f.seal(b"4111111111111111", aad=b"pan", subject="alice")
    assert f.seal(b"4111111111111111", aad=b"pan", subject="alice") == a1
    assert f.seal(b"4111111111111111", aad=b"pan", subject="bob") != a1
    assert f.seal(b"4111111111111111", aad=b"pan") != a1
    assert f.open(a1, aad=b"pan") == b"4111111111111111"


@pytest.mark.parametrize("position", [0, 1, 16, 17, 32, 33, -1])
def test_tampered_or_misplaced_field_fails_closed(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog, position: int
) -> None:
    f = _cipher(local_keystore, table, audit).fields
    token = f.seal(b"secret value", aad=b"f", subject="alice")
    bad = bytearray(token)
    bad[position] ^= 0x80
    with pytest.raises(DecryptionFailed, match=r"^decryption failed"):
        f.open(bytes(bad), aad=b"f")
    with pytest.raises(DecryptionFailed):
        f.open(token, aad=b"other field")
    assert len(audit.of("keys.decryption_failed")) == 2


def test_shred_makes_every_token_of_the_subject_unreadable(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    zc = _cipher(keystore, table, audit)
    alice = [zc.fields.seal(v, aad=b"f", subject="alice") for v in (b"a1", b"a2", b"a3")]
    bob = zc.fields.seal(b"b1", aad=b"f", subject="bob")
    other_reader = _cipher(keystore, table, audit)
    assert other_reader.fields.open(alice[0], aad=b"f") == b"a1"  # it has the key cached

    assert zc.fields.shred("alice") == 1
    event = audit.last("keys.subject_shredded")
    assert event["keys_destroyed"] == 1
    assert "alice" not in str(event)  # only the HMAC reference is audited
    for token in alice:
        with pytest.raises(DecryptionFailed):
            zc.fields.open(token, aad=b"f")
        with pytest.raises(DecryptionFailed):
            _cipher(keystore, table, audit).fields.open(token, aad=b"f")
    assert "shredded" in audit.last("keys.decryption_failed")["reason"]
    assert zc.fields.open(bob, aad=b"f") == b"b1"
    assert zc.fields.shred("alice") == 0
    # New data for the same subject gets a new key; the old tokens stay dead.
    fresh = zc.fields.seal(b"a1", aad=b"f", subject="alice")
    assert fresh != alice[0]
    assert zc.fields.open(fresh, aad=b"f") == b"a1"
    with pytest.raises(DecryptionFailed):
        zc.fields.open(alice[0], aad=b"f")


def test_shred_reaches_other_processes_within_the_subject_ttl(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog, clock: FakeClock
) -> None:
    policy = DekPolicy(subject_key_ttl_s=30)
    writer = _cipher(local_keystore, table, audit, policy=policy, clock=clock)
    token = writer.fields.seal(b"v", aad=b"f", subject="alice")
    reader = _cipher(local_keystore, table, audit, policy=policy, clock=clock)
    assert reader.fields.open(token, aad=b"f") == b"v"
    KeyAdmin("payments", keystore=local_keystore, table=table, audit=audit).shred("alice")
    clock.advance(31)
    with pytest.raises(DecryptionFailed):
        reader.fields.open(token, aad=b"f")


def test_shredded_key_is_gone_from_the_sqlite_file(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    zc = _cipher(local_keystore, table, audit)
    zc.fields.seal(b"v", aad=b"f", subject="alice@example.com")
    (row,) = [r for r in table.records() if r.kind == "subject"]
    raw = table.path.read_bytes()
    assert row.wrapped in raw
    assert b"alice@example.com" not in raw  # subjects are stored as HMAC references
    zc.fields.shred("alice@example.com")
    after = table.path.read_bytes()
    assert row.wrapped not in after  # secure_delete overwrote the row
    assert row.key_id not in after
    wal = table.path.with_name(table.path.name + "-wal")
    assert not wal.exists() or row.wrapped not in wal.read_bytes()


def test_secrets_are_stable_and_separated(
    keystore: Keystore, tmp_path: object, audit: AuditLog, table: SqliteKeyTable
) -> None:
    zc = _cipher(keystore, table, audit)
    s = zc.secret("dlp/hmac")
    assert len(s) == 32
    assert zc.secret("dlp/hmac") == s
    assert _cipher(keystore, table, audit).secret("dlp/hmac") == s  # another process
    assert zc.secret("dlp/ff1") != s
    assert len(zc.secret("dlp/ff1", length=16)) == 16
    with pytest.raises(ValueError, match="purpose must name"):
        zc.secret("")


def test_secrets_differ_between_zones(
    local_keystore: LocalKeystore, tmp_path: pytest.TempPathFactory, audit: AuditLog
) -> None:
    secrets = []
    for zone in ("payments", "analytics"):
        local_keystore.create_kek(zone)
        with SqliteKeyTable(f"{tmp_path}/{zone}.sqlite") as t:
            secrets.append(ZoneCipher(zone, keystore=local_keystore, table=t).secret("dlp/hmac"))
    assert secrets[0] != secrets[1]


def test_secrets_and_fields_survive_kek_rotation(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    zc = _cipher(keystore, table, audit)
    before = zc.secret("dlp/hmac")
    token = zc.fields.seal(b"v", aad=b"f", subject="alice")
    admin = KeyAdmin("payments", keystore=keystore, table=table, audit=audit)
    _, report = admin.rotate()
    assert report is not None
    assert report.failed == 0
    assert report.rewrapped == 2  # the root secret and alice's key
    keystore.destroy_versions("payments", below=2)
    fresh = _cipher(keystore, table, audit)
    assert fresh.secret("dlp/hmac") == before
    assert fresh.fields.open(token, aad=b"f") == b"v"
    assert fresh.fields.seal(b"v", aad=b"f", subject="alice") == token
