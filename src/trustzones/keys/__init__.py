"""Zone keys: envelope encryption at rest, keys that never leave their zone.

Each zone has a versioned key-encryption key (KEK) in a :class:`Keystore`
(:class:`LocalKeystore` by default, :class:`VaultTransitKeystore` for Vault/OpenBao). Records
are sealed with AES-256-GCM under data keys generated locally, wrapped by the KEK and stored in
the zone's :class:`KeyTable`; ciphertexts carry the data key's id. A :class:`KeyRing` decides
which zones' keys a process acting for one zone may use. Every decryption failure raises one
opaque :class:`~trustzones.errors.DecryptionFailed`; the reason goes to the audit callback
(event types ``keys.decryption_failed``, ``keys.access_denied``, ``keys.key_created``,
``keys.kek_created``, ``keys.kek_rotated``, ``keys.rewrapped``, ``keys.rewrap_failed``,
``keys.kek_versions_destroyed``, ``keys.subject_shredded``).

Threading: ciphers, key tables and keystores are thread-safe. Processes share nothing but
the keystore and the key table; a forked child starts new data keys.

Example::

    from trustzones.keys import KeyRing, LocalKeystore, MasterKey, SqliteKeyTable

    ks = LocalKeystore("keys/", master_key=MasterKey.generate())
    ks.create_kek("payments")
    ring = KeyRing(
        "payments",
        classifications=["public", "internal", "confidential", "restricted"],
        zones={"payments": "restricted", "analytics": "internal"},
        keystore=ks,
        tables=lambda zone: SqliteKeyTable(f"{zone}.keys"),
    )
    zc = ring.cipher("payments")
    ct = zc.seal(b"4111 1111 1111 1111", aad=b"payments/cards/0/42")
    assert zc.open(ct, aad=b"payments/cards/0/42") == b"4111 1111 1111 1111"
    token = zc.fields.seal(b"alice@example.com", aad=b"email", subject="alice")
    hmac_key = zc.secret("dlp/hmac")
"""

from ._admin import KeyAdmin, RewrapReport, ZoneKeyStatus
from ._context import AuditSink
from ._envelope import (
    JANITOR_INTERVAL_S,
    RECORD_FORMAT_VERSION,
    DekPolicy,
    WrapOnlyCipher,
    ZoneCipher,
)
from ._errors import InsecureKeyFile, KeystoreError, UnwrapFailed
from ._fields import FIELD_FORMAT_VERSION, FieldCipher
from ._keystore import KekStatus, KekVersion, Keystore, WrappedKey
from ._local import LocalKeystore, MasterKey
from ._ring import KeyRing
from ._table import KeyRecord, KeyTable, MemoryKeyTable, SqliteKeyTable
from ._vault import VaultTransitKeystore

__all__ = [
    "FIELD_FORMAT_VERSION",
    "JANITOR_INTERVAL_S",
    "RECORD_FORMAT_VERSION",
    "AuditSink",
    "DekPolicy",
    "FieldCipher",
    "InsecureKeyFile",
    "KekStatus",
    "KekVersion",
    "KeyAdmin",
    "KeyRecord",
    "KeyRing",
    "KeyTable",
    "Keystore",
    "KeystoreError",
    "LocalKeystore",
    "MasterKey",
    "MemoryKeyTable",
    "RewrapReport",
    "SqliteKeyTable",
    "UnwrapFailed",
    "VaultTransitKeystore",
    "WrapOnlyCipher",
    "WrappedKey",
    "ZoneCipher",
    "ZoneKeyStatus",
]
