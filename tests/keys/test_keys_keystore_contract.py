"""The keystore contract, run on the local keystore and on a real OpenBao server."""

from __future__ import annotations

import pytest

from trustzones.keys import Keystore, KeystoreError, UnwrapFailed, VaultTransitKeystore

DEK = bytes(range(32))


def test_create_and_status(keystore: Keystore) -> None:
    status = keystore.create_kek("payments")
    assert status.latest == 1
    assert [(v.version, v.state) for v in status.versions] == [(1, "active")]
    assert status.versions[0].created_at is not None
    assert keystore.create_kek("payments", exist_ok=True).latest == 1
    with pytest.raises(KeystoreError, match="already has a KEK"):
        keystore.create_kek("payments")
    keystore.create_kek("analytics")
    assert {"payments", "analytics"} <= set(keystore.zones())


def test_status_of_unknown_zone_says_how_to_create_it(keystore: Keystore) -> None:
    with pytest.raises(KeystoreError, match="trustzones keys create --zone nowhere"):
        keystore.status("nowhere")


def test_wrap_unwrap_round_trip_binds_aad_and_zone(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    keystore.create_kek("analytics")
    wrapped = keystore.wrap("payments", DEK, aad=b"zone=payments;dek=1")
    assert wrapped.kek_version == 1
    assert DEK not in wrapped.blob
    assert keystore.unwrap("payments", wrapped.blob, aad=b"zone=payments;dek=1") == DEK
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", wrapped.blob, aad=b"zone=payments;dek=2")
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("analytics", wrapped.blob, aad=b"zone=payments;dek=1")
    tampered = bytearray(wrapped.blob)
    tampered[-5] = (tampered[-5] + 1) % 128 or 65  # stays ASCII for Vault's base64 text
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", bytes(tampered), aad=b"zone=payments;dek=1")
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", b"garbage", aad=b"zone=payments;dek=1")


def test_rotation_wraps_with_new_version_and_old_still_unwraps(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    old = keystore.wrap("payments", DEK, aad=b"a")
    assert keystore.rotate_kek("payments") == 2
    new = keystore.wrap("payments", DEK, aad=b"b")
    assert new.kek_version == 2
    assert keystore.unwrap("payments", old.blob, aad=b"a") == DEK
    states = [(v.version, v.state) for v in keystore.status("payments").versions]
    assert states == [(1, "decrypt-only"), (2, "active")]


def test_rewrap_moves_to_newest_version_and_keeps_aad(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    old = keystore.wrap("payments", DEK, aad=b"a")
    keystore.rotate_kek("payments")
    keystore.rotate_kek("payments")
    rewrapped = keystore.rewrap("payments", old.blob, aad=b"a")
    assert rewrapped.kek_version == 3
    assert keystore.unwrap("payments", rewrapped.blob, aad=b"a") == DEK
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", rewrapped.blob, aad=b"b")
    results = keystore.rewrap_many("payments", [(old.blob, b"a"), (old.blob, b"wrong")])
    assert not isinstance(results[0], UnwrapFailed)
    assert results[0].kek_version == 3
    assert isinstance(results[1], UnwrapFailed)


def test_destroyed_versions_no_longer_unwrap(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    old = keystore.wrap("payments", DEK, aad=b"a")
    keystore.rotate_kek("payments")
    new = keystore.wrap("payments", DEK, aad=b"a")
    with pytest.raises(KeystoreError, match="it is the newest; rotate first"):
        keystore.destroy_versions("payments", below=3)
    keystore.destroy_versions("payments", below=2)
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", old.blob, aad=b"a")
    assert keystore.unwrap("payments", new.blob, aad=b"a") == DEK
    status = keystore.status("payments")
    assert [(v.version, v.state) for v in status.versions] == [(1, "destroyed"), (2, "active")]
    assert status.min_decryption_version == 2


def test_destroyed_kek_no_longer_unwraps(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    wrapped = keystore.wrap("payments", DEK, aad=b"a")
    keystore.destroy_kek("payments")
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", wrapped.blob, aad=b"a")
    assert "payments" not in keystore.zones()


def test_wrap_refuses_key_sizes_outside_16_to_64(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        keystore.wrap("payments", b"k" * 8, aad=b"a")


def test_vault_constructor_does_no_io_and_unreachable_server_is_named() -> None:
    ks = VaultTransitKeystore(url="http://127.0.0.1:9", token="t")  # port 9: discard, closed
    with pytest.raises(KeystoreError, match=r"could not reach Vault at http://127.0.0.1:9"):
        ks.status("payments")


def test_vault_keystore_needs_address_and_token() -> None:
    with pytest.raises(KeystoreError, match="--vault-addr and --vault-token"):
        VaultTransitKeystore(url="http://127.0.0.1:8200")


def test_destroying_versions_below_an_older_one_after_more_rotations(keystore: Keystore) -> None:
    keystore.create_kek("payments")
    v1 = keystore.wrap("payments", DEK, aad=b"a")
    keystore.rotate_kek("payments")
    v2 = keystore.wrap("payments", DEK, aad=b"a")
    keystore.rotate_kek("payments")
    keystore.destroy_versions("payments", below=2)  # Vault also trims here: 2 < latest 3
    with pytest.raises(UnwrapFailed):
        keystore.unwrap("payments", v1.blob, aad=b"a")
    assert keystore.unwrap("payments", v2.blob, aad=b"a") == DEK
    assert keystore.wrap("payments", DEK, aad=b"a").kek_version == 3
    states = [v.state for v in keystore.status("payments").versions]
    assert states == ["destroyed", "decrypt-only", "active"]
