"""Errors of the ``keys`` part.

They extend the tree in :mod:`trustzones.errors`::

    TrustzonesError
    ├── KeystoreError          a keystore is misconfigured or unreachable (says what to fix)
    │   └── InsecureKeyFile    a key file is readable by group/others or owned by someone else
    ├── KeyAccessDenied        (trustzones.errors) a key of a zone the caller may not use
    └── DecryptionFailed       (trustzones.errors) one opaque error for every decryption failure
        └── UnwrapFailed       raised by keystore drivers; ``reason`` is for the audit log only

Only :class:`UnwrapFailed` carries a detailed reason, and its message is as opaque as
:class:`~trustzones.errors.DecryptionFailed`'s: the ciphers catch it, send the reason to the
audit callback and raise a plain ``DecryptionFailed``.
"""

from __future__ import annotations

from trustzones.errors import DecryptionFailed, TrustzonesError

__all__ = ["OPAQUE_MESSAGE", "InsecureKeyFile", "KeystoreError", "UnwrapFailed"]

OPAQUE_MESSAGE = (
    "decryption failed: the data, its context or its key is not valid here "
    "(the reason is in the audit log)"
)


class KeystoreError(TrustzonesError):
    """A keystore is misconfigured, unreachable or was asked for something it does not hold."""


class InsecureKeyFile(KeystoreError):
    """A key file (master key or zone KEK) has permissions that let others read it."""


class UnwrapFailed(DecryptionFailed):
    """A keystore could not unwrap a key. ``reason`` is for the audit log, never for the caller."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(OPAQUE_MESSAGE)
