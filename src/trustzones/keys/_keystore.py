"""The keystore seam: where zone key-encryption keys (KEKs) live and wrap data keys.

A :class:`Keystore` holds one versioned KEK per zone and does five things with it: create,
rotate, wrap a key, unwrap a key, report status (plus destroying old versions or the whole KEK,
which revocation and zone decommissioning need). KEK material never leaves the keystore: callers
hand in a data key (DEK) and get back an opaque wrapped blob, or the reverse.

Drivers: :class:`~trustzones.keys.LocalKeystore` (files + master key) and
:class:`~trustzones.keys.VaultTransitKeystore` (HashiCorp Vault / OpenBao Transit). An AWS,
GCP or Azure KMS or a PKCS#11 HSM driver implements the abstract methods below; everything
above the keystore (ciphers, rotation, shredding, isolation) works unchanged.

Contract every driver keeps (``tests/keys/test_keystore_contract.py`` checks it on each):

1. ``wrap`` uses the newest KEK version; ``unwrap`` accepts any version not destroyed.
2. ``aad`` is bound to the wrapped blob: unwrapping with other ``aad``, under another zone,
   with a destroyed version, or a modified blob raises :class:`UnwrapFailed` (never returns
   wrong bytes).
3. A caller that may wrap but not unwrap (a flow writing into a lower zone) is refused with
   :class:`~trustzones.errors.KeyAccessDenied`, not with ``UnwrapFailed``.
4. Unreachable or misconfigured backends raise :class:`KeystoreError` with what to fix.
5. Constructors do no network I/O.

Example::

    from trustzones.keys import LocalKeystore, MasterKey

    with LocalKeystore("keys/", master_key=MasterKey.generate()) as ks:
        ks.create_kek("payments")
        wrapped = ks.wrap("payments", b"k" * 32, aad=b"dek-1")
        assert ks.unwrap("payments", wrapped.blob, aad=b"dek-1") == b"k" * 32
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from ._errors import KeystoreError, UnwrapFailed

__all__ = ["KekState", "KekStatus", "KekVersion", "Keystore", "WrappedKey", "check_zone_name"]

KekState = Literal["active", "decrypt-only", "destroyed"]

_ZONE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_zone_name(zone: str) -> str:
    """Return ``zone`` if it is usable as a file and key name, else raise :class:`KeystoreError`."""
    if not _ZONE_RE.fullmatch(zone) or ".." in zone:
        raise KeystoreError(
            f"zone name {zone!r} cannot name a key: use 1-63 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return zone


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A key wrapped by a zone KEK: the opaque ``blob`` and the KEK ``kek_version`` used."""

    kek_version: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class KekVersion:
    """One version of a zone KEK. ``created_at`` is Unix time (``None`` if unknown)."""

    version: int
    created_at: float | None
    state: KekState


@dataclass(frozen=True, slots=True)
class KekStatus:
    """The versions of one zone's KEK. ``latest`` wraps new keys."""

    zone: str
    backend: str
    latest: int
    versions: tuple[KekVersion, ...]

    @property
    def min_decryption_version(self) -> int:
        """The oldest version that can still unwrap."""
        usable = [v.version for v in self.versions if v.state != "destroyed"]
        return min(usable) if usable else self.latest + 1


class Keystore(ABC):
    """One versioned KEK per zone. Use as a context manager; see the module docstring."""

    #: Short name shown by ``trustzones keys status``.
    backend: str = "abstract"

    @abstractmethod
    def create_kek(self, zone: str, *, exist_ok: bool = False) -> KekStatus:
        """Create version 1 of ``zone``'s KEK (or return its status if it exists and
        ``exist_ok``); raise :class:`KeystoreError` if it exists and not ``exist_ok``."""

    @abstractmethod
    def rotate_kek(self, zone: str) -> int:
        """Add a new KEK version, used by every later ``wrap``; return its number."""

    @abstractmethod
    def wrap(self, zone: str, key: bytes, *, aad: bytes) -> WrappedKey:
        """Wrap ``key`` (16-64 bytes) under the newest version, binding ``aad``."""

    @abstractmethod
    def unwrap(self, zone: str, blob: bytes, *, aad: bytes) -> bytes:
        """Return the key in ``blob``; raise :class:`UnwrapFailed` if it does not verify."""

    @abstractmethod
    def status(self, zone: str) -> KekStatus:
        """Versions of ``zone``'s KEK; raise :class:`KeystoreError` if it has none."""

    @abstractmethod
    def zones(self) -> list[str]:
        """Zones that have a KEK in this keystore, sorted."""

    @abstractmethod
    def destroy_versions(self, zone: str, *, below: int) -> None:
        """Destroy KEK versions older than ``below``: keys still wrapped by them become
        unreadable. Rewrap first (``KeyAdmin.rewrap``) to keep data."""

    @abstractmethod
    def destroy_kek(self, zone: str) -> None:
        """Destroy every version of ``zone``'s KEK: all of the zone's data becomes unreadable."""

    def rewrap(self, zone: str, blob: bytes, *, aad: bytes) -> WrappedKey:
        """Re-wrap ``blob`` under the newest version. Drivers that can do this without
        the key leaving the KMS (Vault ``rewrap``) override it."""
        return self.wrap(zone, self.unwrap(zone, blob, aad=aad), aad=aad)

    def rewrap_many(
        self, zone: str, items: Sequence[tuple[bytes, bytes]]
    ) -> list[WrappedKey | UnwrapFailed]:
        """Rewrap ``(blob, aad)`` pairs; a failed item yields its :class:`UnwrapFailed`."""
        out: list[WrappedKey | UnwrapFailed] = []
        for blob, aad in items:
            try:
                out.append(self.rewrap(zone, blob, aad=aad))
            except UnwrapFailed as exc:
                out.append(exc)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook, most drivers hold nothing
        """Release connections or handles."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
