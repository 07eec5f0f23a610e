"""The documented ciphertext formats, checked by a second, independent implementation.

The reader below is written from the format tables in ``_envelope.py`` and ``_fields.py``
using only ``cryptography``'s AESGCM/AESSIV, not trustzones' code.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from keys_helpers import AuditLog

from trustzones.keys import LocalKeystore, SqliteKeyTable, ZoneCipher


def _parts(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _unwrap(ks: LocalKeystore, table: SqliteKeyTable, zone: str, key_id: bytes) -> bytes:
    row = table.get(key_id)
    assert row is not None
    aad = _parts(b"trustzones.keys.wrap.v1", zone.encode(), row.kind.encode(), key_id, row.owner)
    return ks.unwrap(zone, row.wrapped, aad=aad)


def test_record_format_v1(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    local_keystore.create_kek("payments")
    zc = ZoneCipher("payments", keystore=local_keystore, table=table, audit=audit)
    aad = b"payments/cards/3/99"
    ct = zc.seal(b"hello record", aad=aad)

    version, key_id, nonce, body = ct[0], ct[1:17], ct[17:29], ct[29:]
    assert version == 1
    dek = _unwrap(local_keystore, table, "payments", key_id)
    assert AESGCM(dek).decrypt(nonce, body, aad) == b"hello record"
    # And the other way round: a record built by hand from the spec opens.
    forged_nonce = (7).to_bytes(12, "big")
    handmade = ct[:17] + forged_nonce + AESGCM(dek).encrypt(forged_nonce, b"by hand", aad)
    assert zc.open(handmade, aad=aad) == b"by hand"


def test_field_format_v2(
    local_keystore: LocalKeystore, table: SqliteKeyTable, audit: AuditLog
) -> None:
    local_keystore.create_kek("payments")
    zc = ZoneCipher("payments", keystore=local_keystore, table=table, audit=audit)
    token = zc.fields.seal(b"alice@example.com", aad=b"email", subject="alice")

    assert token[0] == 2
    key = _unwrap(local_keystore, table, "payments", token[1:17])
    assert len(key) == 64
    ads = [b"trustzones.field.v2" + token[:17] + struct.pack(">I", 8) + b"payments", b"email"]
    assert AESSIV(key).decrypt(token[17:], ads) == b"alice@example.com"
    assert AESSIV(key).encrypt(b"alice@example.com", ads) == token[17:]
