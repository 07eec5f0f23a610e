"""The HashiCorp Vault / OpenBao Transit keystore: one Transit key per zone.

Each zone's KEK is a Transit key ``<key_prefix><zone>`` of type ``aes256-gcm96`` with
``derived=true``: every wrap passes the caller's associated data as the derivation context,
so a wrapped key unwraps only with the same context (and ``rewrap`` keeps that binding,
which Transit's ``associated_data`` parameter would not). The key never leaves Vault; data
keys are generated locally and only they travel (one request per data key, never per record).

Isolation is enforced by Vault itself when each process gets a token with the policy from
:meth:`VaultTransitKeystore.policy`: ``"wrap"`` grants ``encrypt`` only, so a flow can wrap
keys for its destination zone and Vault answers ``403`` to any ``decrypt``.

Example::

    from trustzones.keys import VaultTransitKeystore

    ks = VaultTransitKeystore(url="http://127.0.0.1:8200", token="...")
    ks.create_kek("payments", exist_ok=True)
    w = ks.wrap("payments", b"k" * 32, aad=b"ctx")
    assert ks.unwrap("payments", w.blob, aad=b"ctx") == b"k" * 32
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import Any, Literal

try:
    import hvac
    import hvac.exceptions
except ModuleNotFoundError:  # the vault extra is not installed
    hvac = None

from trustzones.errors import KeyAccessDenied

from ._errors import KeystoreError, UnwrapFailed
from ._keystore import KekStatus, KekVersion, Keystore, WrappedKey, check_zone_name

__all__ = ["VaultTransitKeystore"]

_CIPHERTEXT_RE = re.compile(rb"^vault:v(\d+):")
# Vault accepts batches of a few hundred items and refuses ~1000 (measured on 1.x Transit).
_MAX_BATCH = 250


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class VaultTransitKeystore(Keystore):
    """Zone KEKs as Vault/OpenBao Transit keys. No network I/O until the first call.

    Pass an ``hvac.Client`` or ``url`` + ``token``. ``verify`` is a CA bundle path or a bool.
    """

    backend = "vault-transit"

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str | None = None,
        client: Any = None,
        mount: str = "transit",
        key_prefix: str = "trustzones-",
        timeout: float = 10.0,
        verify: bool | str = True,
        batch_size: int = _MAX_BATCH,
    ) -> None:
        if client is None:
            if not url or not token:
                raise KeystoreError(
                    "the Vault keystore needs an address and a token: pass --vault-addr and "
                    "--vault-token (or TRUSTZONES_VAULT_ADDR / TRUSTZONES_VAULT_TOKEN)"
                )
            if hvac is None:
                raise KeystoreError(
                    "the Vault/OpenBao keystore needs hvac: pip install 'trustzones[vault]'"
                )
            client = hvac.Client(url=url, token=token, timeout=timeout, verify=verify)
        if not 1 <= batch_size <= _MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{_MAX_BATCH}")
        self._client = client
        self._transit: Any = client.secrets.transit
        self._mount = mount
        self._prefix = key_prefix
        self._batch = batch_size

    def __repr__(self) -> str:
        return f"VaultTransitKeystore(url={self._client.url!r}, mount={self._mount!r})"

    @property
    def key_prefix(self) -> str:
        """Prefix of the Transit key names (``<prefix><zone>``)."""
        return self._prefix

    def key_name(self, zone: str) -> str:
        """The Transit key that holds ``zone``'s KEK."""
        return f"{self._prefix}{check_zone_name(zone)}"

    def policy(self, zone: str, *, access: Literal["wrap", "unwrap", "admin"]) -> str:
        """Vault policy (HCL) for a token that acts for ``zone`` at the given level.

        ``wrap``: encrypt and read metadata (a flow writing into ``zone``); ``unwrap``: also
        decrypt and rewrap (a process acting for ``zone``); ``admin``: also rotate, configure,
        trim and delete (``trustzones keys``).
        """
        name = self.key_name(zone)
        m = self._mount
        paths: dict[str, list[str]] = {
            f"{m}/encrypt/{name}": ["update"],
            f"{m}/keys/{name}": ["read"],
        }
        if access in ("unwrap", "admin"):
            paths[f"{m}/decrypt/{name}"] = ["update"]
            paths[f"{m}/rewrap/{name}"] = ["update"]
        if access == "admin":
            paths[f"{m}/keys/{name}"] = ["create", "read", "update", "delete"]
            paths[f"{m}/keys/{name}/*"] = ["update"]
            paths[f"{m}/keys"] = ["list"]
        return "".join(
            f'path "{path}" {{\n  capabilities = {json.dumps(caps)}\n}}\n'
            for path, caps in paths.items()
        )

    @contextlib.contextmanager
    def _errors(self, zone: str, doing: str, *, unwrapping: bool = False) -> Iterator[None]:
        """Translate hvac/requests exceptions (``raise ... from None``: no secrets in chains)."""
        try:
            yield
        except hvac.exceptions.Forbidden:
            raise KeyAccessDenied(
                f"Vault refused to {doing} for zone {zone!r} (permission denied): this token's "
                f"policy does not allow it on key {self.key_name(zone)!r}"
            ) from None
        except hvac.exceptions.Unauthorized:
            raise KeystoreError(
                f"Vault rejected the token while trying to {doing} for zone {zone!r}: the token "
                "is missing, expired or revoked; log in again"
            ) from None
        except hvac.exceptions.InvalidRequest as exc:
            if unwrapping:
                raise UnwrapFailed(f"Vault Transit: {exc.errors or exc}") from None
            raise KeystoreError(f"Vault refused to {doing} for zone {zone!r}: {exc}") from None
        except hvac.exceptions.InvalidPath:
            raise KeystoreError(
                f"zone {zone!r} has no KEK in Vault (no Transit key {self.key_name(zone)!r} "
                f"under mount {self._mount!r}): create it with "
                f"`trustzones keys create --zone {zone}`"
            ) from None
        except hvac.exceptions.VaultError as exc:
            raise KeystoreError(f"Vault failed to {doing} for zone {zone!r}: {exc}") from None
        except OSError as exc:  # requests' exceptions derive from IOError
            raise KeystoreError(
                f"could not reach Vault at {self._client.url} to {doing} for zone {zone!r}: "
                f"{type(exc).__name__}; check the address and that the server is up"
            ) from None

    def _read(self, zone: str) -> dict[str, Any] | None:
        with self._errors(zone, "read the key"):
            try:
                data: dict[str, Any] = self._transit.read_key(
                    self.key_name(zone), mount_point=self._mount
                )["data"]
            except hvac.exceptions.InvalidPath:
                return None
        return data

    def create_kek(self, zone: str, *, exist_ok: bool = False) -> KekStatus:
        if self._read(zone) is not None:
            if exist_ok:
                return self.status(zone)
            raise KeystoreError(
                f"zone {zone!r} already has a KEK in Vault ({self.key_name(zone)!r}): rotate it "
                f"with `trustzones keys rotate --zone {zone}`"
            )
        with self._errors(zone, "create the KEK"):
            self._transit.create_key(
                self.key_name(zone),
                key_type="aes256-gcm96",
                derived=True,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=self._mount,
            )
        return self.status(zone)

    def rotate_kek(self, zone: str) -> int:
        with self._errors(zone, "rotate the KEK"):
            self._transit.rotate_key(self.key_name(zone), mount_point=self._mount)
        return self.status(zone).latest

    def wrap(self, zone: str, key: bytes, *, aad: bytes) -> WrappedKey:
        if not 16 <= len(key) <= 64:
            raise ValueError("a wrapped key must be 16 to 64 bytes")
        if not aad:
            raise ValueError("Vault derived keys need non-empty associated data")
        with self._errors(zone, "wrap a key"):
            data = self._transit.encrypt_data(
                self.key_name(zone), plaintext=_b64(key), context=_b64(aad), mount_point=self._mount
            )["data"]
        return WrappedKey(int(data["key_version"]), data["ciphertext"].encode("ascii"))

    def unwrap(self, zone: str, blob: bytes, *, aad: bytes) -> bytes:
        if not _CIPHERTEXT_RE.match(blob):
            raise UnwrapFailed("not a Vault Transit ciphertext")
        with self._errors(zone, "unwrap a key", unwrapping=True):
            data = self._transit.decrypt_data(
                self.key_name(zone),
                ciphertext=blob.decode("ascii"),
                context=_b64(aad),
                mount_point=self._mount,
            )["data"]
        return base64.b64decode(data["plaintext"])

    def rewrap(self, zone: str, blob: bytes, *, aad: bytes) -> WrappedKey:
        result = self.rewrap_many(zone, [(blob, aad)])[0]
        if isinstance(result, UnwrapFailed):
            raise result
        return result

    def rewrap_many(
        self, zone: str, items: Sequence[tuple[bytes, bytes]]
    ) -> list[WrappedKey | UnwrapFailed]:
        """Transit ``rewrap`` in batches: the data keys never leave Vault."""
        out: list[WrappedKey | UnwrapFailed] = []
        for start in range(0, len(items), self._batch):
            chunk = items[start : start + self._batch]
            batch = [
                {"ciphertext": blob.decode("ascii", "replace"), "context": _b64(aad)}
                for blob, aad in chunk
            ]
            with self._errors(zone, "rewrap keys", unwrapping=True):
                results = self._transit.rewrap_data(
                    self.key_name(zone), ciphertext="", batch_input=batch, mount_point=self._mount
                )["data"]["batch_results"]
            for r in results:
                if r.get("error"):
                    out.append(UnwrapFailed(f"Vault Transit rewrap: {r['error']}"))
                else:
                    out.append(WrappedKey(int(r["key_version"]), r["ciphertext"].encode("ascii")))
        return out

    def status(self, zone: str) -> KekStatus:
        data = self._read(zone)
        if data is None:
            raise KeystoreError(
                f"zone {zone!r} has no KEK in Vault: create it with "
                f"`trustzones keys create --zone {zone}`"
            )
        latest = int(data["latest_version"])
        min_dec = max(int(data.get("min_decryption_version") or 1), 1)
        min_avail = max(int(data.get("min_available_version") or 0), 1)
        created = {int(k): float(v) for k, v in (data.get("keys") or {}).items()}
        versions = []
        for v in range(1, latest + 1):
            if v < min_dec or v < min_avail or v not in created:
                state: Literal["active", "decrypt-only", "destroyed"] = "destroyed"
            else:
                state = "active" if v == latest else "decrypt-only"
            versions.append(KekVersion(v, created.get(v), state))
        return KekStatus(zone=zone, backend=self.backend, latest=latest, versions=tuple(versions))

    def zones(self) -> list[str]:
        with self._errors("*", "list keys"):
            try:
                keys = self._transit.list_keys(mount_point=self._mount)["data"]["keys"]
            except hvac.exceptions.InvalidPath:
                return []  # no key at all yet
        return sorted(k.removeprefix(self._prefix) for k in keys if k.startswith(self._prefix))

    def destroy_versions(self, zone: str, *, below: int) -> None:
        latest = self.status(zone).latest
        if below > latest:
            raise KeystoreError(
                f"cannot destroy version {latest} of zone {zone!r}'s KEK: it is the newest; "
                "rotate first"
            )
        name = self.key_name(zone)
        with self._errors(zone, "destroy old KEK versions"):
            # 1. Revoke: Vault refuses to decrypt with any version below `below`.
            self._transit.update_key_configuration(
                name, min_decryption_version=below, mount_point=self._mount
            )
            # 2. Trim deletes those versions from storage, which (unlike step 1) no admin can
            #    undo. Vault requires min_encryption_version > min_decryption_version to trim,
            #    so when `below` is the newest version the old ones stay revoked, untrimmed,
            #    until the next destroy_versions after a rotation.
            if below < latest:
                self._transit.update_key_configuration(
                    name, min_encryption_version=latest, mount_point=self._mount
                )
                self._transit.trim_key(name, min_version=below, mount_point=self._mount)

    def destroy_kek(self, zone: str) -> None:
        with self._errors(zone, "destroy the KEK"):
            self._transit.update_key_configuration(
                self.key_name(zone), deletion_allowed=True, mount_point=self._mount
            )
            self._transit.delete_key(self.key_name(zone), mount_point=self._mount)

    def close(self) -> None:
        adapter = getattr(self._client, "adapter", None)
        if adapter is not None and hasattr(adapter, "close"):
            adapter.close()
