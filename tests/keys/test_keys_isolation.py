"""Isolation: a process acting for one zone never unwraps another zone's keys.

Checked for every ordered pair of zones, through the KeyRing (policy, audited), through the
keystore with per-zone master keys (cryptography), and through OpenBao token policies
(the server itself).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import hvac
import pytest
from keys_helpers import AuditLog

from trustzones.errors import ConfigError, DecryptionFailed, KeyAccessDenied
from trustzones.keys import (
    KeyRing,
    LocalKeystore,
    MasterKey,
    SqliteKeyTable,
    VaultTransitKeystore,
    WrapOnlyCipher,
    ZoneCipher,
)

CLASSIFICATIONS = ["public", "internal", "confidential", "restricted"]
ZONES = {
    "web": "public",
    "crm": "internal",
    "hr": "confidential",
    "payments": "restricted",
    "health": "restricted",
}
PAIRS = [pytest.param(a, b, id=f"{a}->{b}") for a, b in itertools.permutations(ZONES, 2)]
RANK = {z: CLASSIFICATIONS.index(c) for z, c in ZONES.items()}
AAD = b"topic/0/1"


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, dict[str, MasterKey]]:
    """Every zone with its own master key and KEK, and one sealed record per zone."""
    keydir = tmp_path / "keys"
    keys = {zone: MasterKey.generate() for zone in ZONES}
    admin = LocalKeystore(keydir, master_key=keys)
    for zone in ZONES:
        admin.create_kek(zone)
    return keydir, keys


def _ring(
    world: tuple[Path, dict[str, MasterKey]], acting: str, audit: AuditLog, *, all_keys: bool
) -> KeyRing:
    keydir, keys = world
    master = keys if all_keys else {acting: keys[acting]}
    return KeyRing(
        acting,
        classifications=CLASSIFICATIONS,
        zones=ZONES,
        keystore=LocalKeystore(keydir, master_key=master),
        tables=lambda zone: SqliteKeyTable(keydir / f"{zone}.keys.sqlite"),
        audit=audit,
    )


def _sealed(world: tuple[Path, dict[str, MasterKey]], zone: str, audit: AuditLog) -> bytes:
    with _ring(world, zone, audit, all_keys=False) as ring:
        return ring.cipher(zone).seal(b"secret of " + zone.encode(), aad=AAD)


@pytest.mark.parametrize(("acting", "other"), PAIRS)
def test_ring_refuses_other_zones_keys_and_audits(
    world: tuple[Path, dict[str, MasterKey]], audit: AuditLog, acting: str, other: str
) -> None:
    record = _sealed(world, other, audit)
    # Even a ring whose keystore holds every master key must refuse (policy layer).
    with _ring(world, acting, audit, all_keys=True) as ring:
        for attempt in (
            lambda: ring.cipher(other),
            lambda: ring.admin(other),
            lambda: ring.secret(other, "dlp/hmac"),
            lambda: ring.shred(other, "alice"),
            lambda: ring.keystore.unwrap(other, b"x", aad=b"y"),
            lambda: ring.keystore.rotate_kek(other),
            lambda: ring.keystore.destroy_kek(other),
        ):
            before = len(audit.of("keys.access_denied"))
            with pytest.raises(KeyAccessDenied, match=f"for zone '{other}'"):
                attempt()
            event = audit.last("keys.access_denied")
            assert len(audit.of("keys.access_denied")) == before + 1
            assert (event["zone"], event["acting_zone"]) == (other, acting)
        # A cipher built by hand on the ring's keystore is refused at unwrap time too.
        table = SqliteKeyTable(world[0] / f"{other}.keys.sqlite")
        sneaky = ZoneCipher(other, keystore=ring.keystore, table=table, audit=audit)
        with pytest.raises(KeyAccessDenied):
            sneaky.open(record, aad=AAD)
        table.close()


@pytest.mark.parametrize(("acting", "other"), PAIRS)
def test_wrap_only_into_zones_not_above_the_acting_zone(
    world: tuple[Path, dict[str, MasterKey]], audit: AuditLog, acting: str, other: str
) -> None:
    with _ring(world, acting, audit, all_keys=False) as ring:
        if RANK[other] > RANK[acting]:
            with pytest.raises(KeyAccessDenied, match="is above zone"):
                ring.wrap_only(other)
            assert audit.last("keys.access_denied")["operation"] == "open a wrap-only cipher"
            return
        writer = ring.wrap_only(other)
        assert isinstance(writer, WrapOnlyCipher)
        assert not hasattr(writer, "open")
        sealed = writer.seal(b"flowed down", aad=AAD)
    # The destination zone reads what the flow wrote.
    with _ring(world, other, audit, all_keys=False) as dest:
        assert dest.cipher(other).open(sealed, aad=AAD) == b"flowed down"


@pytest.mark.parametrize(("acting", "other"), PAIRS)
def test_keystore_with_only_own_master_key_cannot_unwrap_other_zones(
    world: tuple[Path, dict[str, MasterKey]], audit: AuditLog, acting: str, other: str
) -> None:
    """Bypassing the ring entirely: the key material is simply not there."""
    record = _sealed(world, other, audit)
    keydir, keys = world
    ks = LocalKeystore(keydir, master_key={acting: keys[acting]})
    with SqliteKeyTable(keydir / f"{other}.keys.sqlite") as table:
        cipher = ZoneCipher(other, keystore=ks, table=table, audit=audit)
        with pytest.raises(KeyAccessDenied, match="holds no master key"):
            cipher.open(record, aad=AAD)
    assert audit.last("keys.access_denied")["operation"] == "unwrap"


def test_own_zone_is_fully_usable(
    world: tuple[Path, dict[str, MasterKey]], audit: AuditLog
) -> None:
    with _ring(world, "payments", audit, all_keys=False) as ring:
        zc = ring.cipher("payments")
        assert zc.open(zc.seal(b"v", aad=AAD), aad=AAD) == b"v"
        assert ring.secret("payments", "dlp/hmac") == zc.secret("dlp/hmac")
        assert ring.admin("payments").status().kek.latest == 1
        token = zc.fields.seal(b"alice@example.com", aad=b"email", subject="alice")
        assert ring.shred("payments", "alice") == 1
        with pytest.raises(DecryptionFailed):
            zc.fields.open(token, aad=b"email")
        assert ring.keystore.zones() == sorted(ZONES)  # every zone is at or below restricted
    assert audit.of("keys.access_denied") == []


def test_unknown_zone_is_refused(world: tuple[Path, dict[str, MasterKey]], audit: AuditLog) -> None:
    with (
        _ring(world, "payments", audit, all_keys=True) as ring,
        pytest.raises(KeyAccessDenied, match="zone 'nowhere' is not declared"),
    ):
        ring.wrap_only("nowhere")


def test_ring_configuration_errors_are_reported_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing(
            "ghost",
            classifications=["public", "public"],
            zones={"web": "secret"},
            keystore=LocalKeystore(tmp_path),
            tables=lambda zone: SqliteKeyTable(tmp_path / zone),
        )
    assert len(info.value.issues) == 3


def test_rotation_through_the_ring_switches_its_writers_at_once(
    world: tuple[Path, dict[str, MasterKey]], audit: AuditLog
) -> None:
    with _ring(world, "payments", audit, all_keys=False) as ring:
        zc = ring.cipher("payments")
        first = zc.seal(b"v1", aad=AAD)
        version, _ = ring.admin("payments").rotate()
        second = zc.seal(b"v2", aad=AAD)
        assert second[1:17] != first[1:17]
        table = SqliteKeyTable(world[0] / "payments.keys.sqlite")
        row = table.get(second[1:17])
        table.close()
        assert row is not None
        assert row.kek_version == version == 2


@pytest.mark.vault
def test_openbao_token_policy_enforces_wrap_only(vault_keystore: VaultTransitKeystore) -> None:
    """The server refuses decrypt to a token that may only wrap for the zone."""
    ks = vault_keystore
    ks.create_kek("payments")
    ks.create_kek("analytics")
    root = ks._client
    flow_policy = ks.policy("payments", access="unwrap") + ks.policy("analytics", access="wrap")
    root.sys.create_or_update_policy(name=f"{ks.key_name('payments')}-flow", policy=flow_policy)
    token = root.auth.token.create(policies=[f"{ks.key_name('payments')}-flow"], ttl="10m")
    flow_client = hvac.Client(url=root.url, token=token["auth"]["client_token"])
    flow = VaultTransitKeystore(client=flow_client, key_prefix=ks.key_prefix)

    own = flow.wrap("payments", b"k" * 32, aad=b"a")
    assert flow.unwrap("payments", own.blob, aad=b"a") == b"k" * 32
    dest = flow.wrap("analytics", b"d" * 32, aad=b"a")  # allowed: encrypt only
    with pytest.raises(KeyAccessDenied, match="permission denied"):
        flow.unwrap("analytics", dest.blob, aad=b"a")
    with pytest.raises(KeyAccessDenied):
        flow.rotate_kek("payments")  # unwrap level does not include administration
    assert ks.unwrap("analytics", dest.blob, aad=b"a") == b"d" * 32
    flow.close()
