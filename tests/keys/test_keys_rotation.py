"""KEK rotation, rewrapping without decrypting data, revocation and status."""

from __future__ import annotations

import uuid

import pytest
from keys_helpers import AuditLog, Bao, FakeClock

from trustzones.errors import DecryptionFailed
from trustzones.keys import (
    DekPolicy,
    KeyAdmin,
    Keystore,
    LocalKeystore,
    SqliteKeyTable,
    UnwrapFailed,
    VaultTransitKeystore,
    WrappedKey,
    ZoneCipher,
)

AAD = b"payments/cards/0/7"


def _setup(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog, **kw: object
) -> tuple[KeyAdmin, ZoneCipher]:
    admin = KeyAdmin("payments", keystore=keystore, table=table, audit=audit)
    admin.create()
    return admin, ZoneCipher("payments", keystore=keystore, table=table, audit=audit, **kw)  # type: ignore[arg-type]


def test_rotation_keeps_old_data_readable_and_new_data_uses_new_version(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog, clock: FakeClock
) -> None:
    admin, zc = _setup(keystore, table, audit, clock=clock, policy=DekPolicy(refresh_s=5))
    old = zc.seal(b"old", aad=AAD)
    version, report = admin.rotate(rewrap=False)
    assert version == 2
    assert report is None
    assert audit.last("keys.kek_rotated")["kek_version"] == 2
    # A writer in another process notices the new version within refresh_s.
    clock.advance(6)
    zc.expire_keys()  # what the janitor thread does every JANITOR_INTERVAL_S
    new = zc.seal(b"new", aad=AAD)
    assert new[1:17] != old[1:17]
    new_row = table.get(new[1:17])
    assert new_row is not None
    assert new_row.kek_version == 2
    reader = ZoneCipher("payments", keystore=keystore, table=table, audit=audit)
    assert reader.open(old, aad=AAD) == b"old"
    assert reader.open(new, aad=AAD) == b"new"


def test_rewrap_then_revoke_keeps_everything_readable(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    admin, zc = _setup(keystore, table, audit)
    records = []
    for i in range(5):
        records.append(zc.seal(f"record {i}".encode(), aad=AAD))
        zc.rotate_dek()
    token = zc.fields.seal(b"alice@example.com", aad=b"email", subject="alice")
    secret = zc.secret("dlp/hmac")
    raw_before = table.path.read_bytes()

    _, report = admin.rotate()  # rewraps by default
    assert report is not None
    assert (report.rewrapped, report.failed, report.up_to_date) == (7, 0, 0)  # 5 DEKs+root+alice
    assert admin.status().needs_rewrap == 0
    assert admin.rewrap().rewrapped == 0  # idempotent
    admin.destroy_versions(below=2)

    reader = ZoneCipher("payments", keystore=keystore, table=table, audit=audit)
    assert [reader.open(r, aad=AAD) for r in records] == [f"record {i}".encode() for i in range(5)]
    assert reader.fields.open(token, aad=b"email") == b"alice@example.com"
    assert reader.secret("dlp/hmac") == secret
    # Records were not touched: they decrypt under the same DEK ids as before.
    assert all(r[1:17] in raw_before for r in records)


def test_revoking_without_rewrap_makes_old_data_unreadable(
    keystore: Keystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    admin, zc = _setup(keystore, table, audit)
    old = zc.seal(b"old", aad=AAD)
    admin.rotate(rewrap=False)
    assert admin.status().needs_rewrap == 1
    admin.destroy_versions(below=2)
    assert audit.last("keys.kek_versions_destroyed")["below"] == 2
    with pytest.raises(DecryptionFailed):
        ZoneCipher("payments", keystore=keystore, table=table, audit=audit).open(old, aad=AAD)


def test_rewrap_reports_and_audits_a_broken_row(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    admin, zc = _setup(local_keystore, table, audit)
    good = zc.seal(b"good", aad=AAD)
    zc.rotate_dek()
    bad = zc.seal(b"bad", aad=AAD)
    row = table.get(bad[1:17])
    assert row is not None
    broken = row.wrapped[:-1] + bytes([row.wrapped[-1] ^ 1])
    assert table.replace_wrapped(row.key_id, expected=row.wrapped, wrapped=broken, kek_version=1)
    _, report = admin.rotate()
    assert report is not None
    assert (report.rewrapped, report.failed) == (1, 1)
    failure = audit.last("keys.rewrap_failed")
    assert failure["key_id"] == row.key_id.hex()
    assert "does not verify" in failure["reason"]
    fresh = ZoneCipher("payments", keystore=local_keystore, table=table, audit=audit)
    assert fresh.open(good, aad=AAD) == b"good"


def test_status_shows_versions_dek_ages_and_counts(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog, clock: FakeClock
) -> None:
    admin = KeyAdmin("payments", keystore=local_keystore, table=table, audit=audit, clock=clock)
    admin.create()
    zc = ZoneCipher(
        "payments",
        keystore=local_keystore,
        table=table,
        audit=audit,
        clock=clock,
        policy=DekPolicy(max_encryptions=4),
    )
    for _ in range(10):
        zc.seal(b"r", aad=AAD)
    clock.advance(100)
    admin.rotate(rewrap=False)
    zc.expire_keys()
    zc.seal(b"r", aad=AAD)  # refresh_s has passed: the writer moves to KEK v2
    zc.close()
    zc.fields.seal(b"v", aad=b"f", subject="alice")
    clock.advance(20)
    status = admin.status()
    assert status.kek.latest == 2
    assert [v.state for v in status.kek.versions] == ["decrypt-only", "active"]
    assert status.deks == 4
    assert status.deks_by_kek_version == {1: 3, 2: 1}
    assert status.encryptions == 11
    assert status.oldest_dek_age_s == pytest.approx(120)
    assert status.newest_dek_age_s == pytest.approx(20)
    assert status.subject_keys == 1
    assert status.needs_rewrap == 3
    doc = status.to_dict()
    assert doc["deks"] == {
        "count": 4,
        "by_kek_version": {"1": 3, "2": 1},
        "oldest_age_s": pytest.approx(120),
        "newest_age_s": pytest.approx(20),
        "encryptions": 11,
    }


def test_rewrap_in_batches(keystore: Keystore, table: SqliteKeyTable, audit: AuditLog) -> None:
    admin, zc = _setup(keystore, table, audit, policy=DekPolicy(max_encryptions=1))
    records = [zc.seal(bytes([i]), aad=AAD) for i in range(7)]  # one DEK each
    keystore.rotate_kek("payments")
    report = admin.rewrap(batch_size=3)
    assert (report.rewrapped, report.failed, report.up_to_date) == (7, 0, 0)
    keystore.destroy_versions("payments", below=2)
    reader = ZoneCipher("payments", keystore=keystore, table=table, audit=audit)
    assert [reader.open(r, aad=AAD) for r in records] == [bytes([i]) for i in range(7)]


@pytest.mark.vault
def test_vault_rewrap_splits_transit_batches(openbao: Bao) -> None:
    with VaultTransitKeystore(
        url=openbao.addr, token=openbao.token, key_prefix=f"b{uuid.uuid4().hex[:8]}-", batch_size=2
    ) as ks:
        ks.create_kek("payments")
        wrapped = [ks.wrap("payments", bytes([i]) * 32, aad=bytes([i])) for i in range(5)]
        ks.rotate_kek("payments")
        items = [(w.blob, bytes([i])) for i, w in enumerate(wrapped)]
        items[3] = (items[3][0], b"wrong context")
        results = ks.rewrap_many("payments", items)
        assert [isinstance(r, UnwrapFailed) for r in results] == [False, False, False, True, False]
        assert {r.kek_version for r in results if isinstance(r, WrappedKey)} == {2}


def test_background_rewrap_while_writing(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    admin, zc = _setup(local_keystore, table, audit, policy=DekPolicy(max_encryptions=2))
    before = [zc.seal(bytes([i]), aad=AAD) for i in range(20)]
    admin.rotate(rewrap=False)
    worker = admin.start_rewrap(batch_size=4)
    during = [zc.seal(bytes([i]), aad=AAD) for i in range(20)]  # keeps working meanwhile
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert audit.last("keys.rewrapped")["failed"] == 0
    assert admin.status().needs_rewrap == 0
    local_keystore.destroy_versions("payments", below=2)
    reader = ZoneCipher("payments", keystore=local_keystore, table=table, audit=audit)
    assert [reader.open(c, aad=AAD) for c in before + during] == [bytes([i]) for i in range(20)] * 2
