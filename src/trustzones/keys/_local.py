"""The local keystore: one KEK file per zone, private halves wrapped under a master key.

Each KEK version is an X25519 key pair. Wrapping a data key is HPKE (RFC 9180, base mode,
DHKEM(X25519) + HKDF-SHA256 + AES-256-GCM) to the zone's newest public key, so it needs no
secret at all: a flow can wrap keys for its destination zone without being able to unwrap
them. Unwrapping needs the version's private key, which is stored AES-256-GCM-wrapped under
the zone's master key (from a file or an environment variable). Give a process only the
master keys of the zones it acts for, and it cannot unwrap any other zone's keys, whatever
files it can read.

A KEK file (``<dir>/<zone>.kek.json``, mode 0600) holds no plaintext secret::

    {"format": "trustzones.local-kek.v1", "zone": "payments", "master_key_id": "…",
     "versions": [{"version": 1, "created_at": 1.7e9, "public_key": "<b64>",
                   "private_key": "<b64 nonce||AES-GCM(private key)>" | null}]}

``private_key: null`` marks a destroyed version. Files and the directory are refused when
group or others may read them (files) or write them (directory), as ssh does.

Example::

    from trustzones.keys import LocalKeystore, MasterKey

    master = MasterKey.generate()
    with LocalKeystore("keys/", master_key=master) as ks:
        ks.create_kek("payments")
        blob = ks.wrap("payments", b"k" * 32, aad=b"ctx").blob
        assert ks.unwrap("payments", blob, aad=b"ctx") == b"k" * 32
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from trustzones.errors import KeyAccessDenied

from . import _primitives as prim
from ._errors import InsecureKeyFile, KeystoreError, UnwrapFailed
from ._keystore import KekStatus, KekVersion, Keystore, WrappedKey, check_zone_name

__all__ = ["DEFAULT_MASTER_KEY_ENV", "LocalKeystore", "MasterKey", "check_private_file"]

DEFAULT_MASTER_KEY_ENV = "TRUSTZONES_MASTER_KEY"
_FORMAT = "trustzones.local-kek.v1"
_BLOB_MAGIC = b"TZK1"
_MASTER_BYTES = 32


def check_private_file(path: Path) -> None:
    """Refuse a key file that group/others may access or that another user owns."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeystoreError(f"key file {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise InsecureKeyFile(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise InsecureKeyFile(
            f"key file {path} is accessible by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
        )
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise InsecureKeyFile(
            f"key file {path} is owned by uid {st.st_uid}, not by this user "
            f"(uid {os.geteuid()}); run `chown {os.geteuid()} {path}`"
        )


def _check_private_dir(path: Path) -> None:
    st = os.stat(path)
    if st.st_mode & 0o022:
        raise InsecureKeyFile(
            f"keystore directory {path} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 700 {path}`"
        )


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeystoreError(f"{what} is not valid base64") from None


class MasterKey:
    """A 256-bit master key that wraps the private halves of zone KEKs.

    ``key_id`` is a fingerprint (HKDF output, not the key) recorded in every KEK file, so a
    wrong master key is reported as such. The key itself never appears in ``repr``.
    """

    __slots__ = ("_wrapping_key", "key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != _MASTER_BYTES:
            raise KeystoreError(
                f"a master key must be {_MASTER_BYTES} bytes, got {len(key)}: "
                "create one with `trustzones keys new-master-key`"
            )
        self._wrapping_key = prim.hkdf_sha256(
            key, salt=_FORMAT.encode(), info=b"kek-wrap", length=32
        )
        self.key_id = prim.hkdf_sha256(key, salt=_FORMAT.encode(), info=b"key-id", length=8).hex()

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> MasterKey:
        """A new random master key that lives only in memory (tests, ephemeral zones).

        To keep one, use :meth:`create_file`.
        """
        return cls(prim.random_bytes(_MASTER_BYTES))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read a base64 master key from ``path`` (must be mode 0600 or stricter)."""
        p = Path(path)
        check_private_file(p)
        return cls(_b64decode(p.read_text(encoding="ascii"), f"master key file {p}"))

    @classmethod
    def from_env(cls, var: str = DEFAULT_MASTER_KEY_ENV) -> MasterKey:
        """Read a base64 master key from environment variable ``var``."""
        value = os.environ.get(var)
        if not value:
            raise KeystoreError(
                f"environment variable {var} is not set: set it to a base64 master key or "
                "pass a master key file"
            )
        return cls(_b64decode(value, f"environment variable {var}"))

    @staticmethod
    def create_file(path: str | os.PathLike[str]) -> MasterKey:
        """Generate a master key and write it to a new file ``path`` with mode 0600."""
        key = prim.random_bytes(_MASTER_BYTES)
        p = Path(path)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeystoreError(f"{p} already exists: refusing to overwrite a master key") from None
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(base64.b64encode(key).decode("ascii") + "\n")
            f.flush()
            os.fsync(f.fileno())
        return MasterKey(key)

    def _wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = prim.random_bytes(prim.NONCE_BYTES)
        return nonce + prim.gcm_encrypt(self._wrapping_key, nonce, plaintext, aad)

    def _unwrap(self, data: bytes, aad: bytes) -> bytes:
        n = prim.NONCE_BYTES
        return prim.gcm_decrypt(self._wrapping_key, data[:n], data[n:], aad)


@dataclass(slots=True)
class _Version:
    version: int
    created_at: float
    public_key: bytes
    private_key: bytes | None  # wrapped under the master key; None once destroyed


@dataclass(slots=True)
class _KekFile:
    zone: str
    master_key_id: str
    versions: list[_Version]

    @property
    def latest(self) -> _Version:
        return self.versions[-1]

    def get(self, version: int) -> _Version | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None


def _private_aad(zone: str, version: int, public_key: bytes) -> bytes:
    return prim.encode_parts(
        _FORMAT.encode(), zone.encode(), struct.pack(">I", version), public_key
    )


def _hpke_info(zone: str, version: int, aad: bytes) -> bytes:
    # RFC 9180 only promises support for short `info`; bind the caller's aad through a hash.
    digest = hashlib.sha256(prim.encode_parts(zone.encode(), struct.pack(">I", version), aad))
    return b"trustzones.local-kek.v1/wrap\x00" + digest.digest()


class LocalKeystore(Keystore):
    """KEK files under ``directory``; see the module docstring.

    ``master_key`` is one key for every zone, a mapping zone → key (a process gets only the
    keys of the zones it acts for), or ``None`` (wrap only). Thread-safe; several processes
    may share the directory (writes take an ``flock`` on ``<zone>.kek.lock``).
    """

    backend = "local"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        master_key: MasterKey | Mapping[str, MasterKey] | None = None,
    ) -> None:
        self._dir = Path(directory)
        self._master = master_key

    def __repr__(self) -> str:
        return f"LocalKeystore({str(self._dir)!r})"

    # -- files -------------------------------------------------------------------------

    def _path(self, zone: str) -> Path:
        return self._dir / f"{check_zone_name(zone)}.kek.json"

    def _master_for(self, zone: str) -> MasterKey | None:
        if self._master is None or isinstance(self._master, MasterKey):
            return self._master
        return self._master.get(zone)

    def _require_master(self, zone: str, doing: str) -> MasterKey:
        mk = self._master_for(zone)
        if mk is None:
            raise KeystoreError(
                f"cannot {doing} zone {zone!r}: this keystore holds no master key for it; "
                f"pass its master key file or set {DEFAULT_MASTER_KEY_ENV}"
            )
        return mk

    def _load(self, zone: str) -> _KekFile:
        path = self._path(zone)
        if not path.exists():
            raise KeystoreError(
                f"zone {zone!r} has no KEK in {self._dir}: create it with "
                f"`trustzones keys create --zone {zone}`"
            )
        _check_private_dir(self._dir)
        check_private_file(path)
        try:
            raw: Any = json.loads(path.read_bytes())
            if raw.get("format") != _FORMAT or raw.get("zone") != zone:
                raise ValueError("format or zone does not match")
            versions = [
                _Version(
                    version=int(v["version"]),
                    created_at=float(v["created_at"]),
                    public_key=base64.b64decode(v["public_key"], validate=True),
                    private_key=(
                        None
                        if v["private_key"] is None
                        else base64.b64decode(v["private_key"], validate=True)
                    ),
                )
                for v in raw["versions"]
            ]
            if not versions:
                raise ValueError("no versions")
            return _KekFile(zone=zone, master_key_id=str(raw["master_key_id"]), versions=versions)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeystoreError(
                f"KEK file {path} is damaged ({type(exc).__name__}): restore it from backup"
            ) from None

    def _store(self, kek: _KekFile) -> None:
        path = self._path(kek.zone)
        doc = {
            "format": _FORMAT,
            "zone": kek.zone,
            "master_key_id": kek.master_key_id,
            "versions": [
                {
                    "version": v.version,
                    "created_at": v.created_at,
                    "public_key": base64.b64encode(v.public_key).decode("ascii"),
                    "private_key": (
                        None
                        if v.private_key is None
                        else base64.b64encode(v.private_key).decode("ascii")
                    ),
                }
                for v in kek.versions
            ],
        }
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc, indent=1).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def _locked(self, zone: str) -> Iterator[None]:
        if not self._dir.exists():
            self._dir.mkdir(parents=True, mode=0o700)
        _check_private_dir(self._dir)
        lock = self._dir / f"{check_zone_name(zone)}.kek.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _new_version(self, zone: str, version: int, mk: MasterKey) -> _Version:
        private = X25519PrivateKey.generate()
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        private_raw = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        wrapped = mk._wrap(private_raw, _private_aad(zone, version, public))
        return _Version(version, time.time(), public, wrapped)

    def _private_key(self, kek: _KekFile, version: int) -> X25519PrivateKey:
        zone = kek.zone
        mk = self._master_for(zone)
        if mk is None:
            raise KeyAccessDenied(
                f"this process holds no master key for zone {zone!r}, so it may wrap keys for "
                f"{zone!r} but not unwrap them"
            )
        v = kek.get(version)
        if v is None:
            raise UnwrapFailed(f"KEK version {version} of zone {zone!r} does not exist")
        if v.private_key is None:
            raise UnwrapFailed(f"KEK version {version} of zone {zone!r} was destroyed")
        if kek.master_key_id != mk.key_id:
            raise KeystoreError(
                f"zone {zone!r}'s KEK was wrapped under master key {kek.master_key_id}, but this "
                f"process has master key {mk.key_id}: use the right master key"
            )
        try:
            raw = mk._unwrap(v.private_key, _private_aad(zone, version, v.public_key))
        except (InvalidTag, ValueError):
            raise KeystoreError(
                f"KEK file of zone {zone!r} does not verify under its master key (version "
                f"{version} was modified): restore it from backup"
            ) from None
        return X25519PrivateKey.from_private_bytes(raw)

    # -- Keystore ----------------------------------------------------------------------

    def create_kek(self, zone: str, *, exist_ok: bool = False) -> KekStatus:
        mk = self._require_master(zone, "create a KEK for")
        with self._locked(zone):
            if self._path(zone).exists():
                if exist_ok:
                    return self.status(zone)
                raise KeystoreError(
                    f"zone {zone!r} already has a KEK in {self._dir}: rotate it with "
                    f"`trustzones keys rotate --zone {zone}`"
                )
            self._store(_KekFile(zone, mk.key_id, [self._new_version(zone, 1, mk)]))
        return self.status(zone)

    def rotate_kek(self, zone: str) -> int:
        mk = self._require_master(zone, "rotate the KEK of")
        with self._locked(zone):
            kek = self._load(zone)
            if kek.master_key_id != mk.key_id:
                raise KeystoreError(
                    f"zone {zone!r}'s KEK was created under master key {kek.master_key_id}, "
                    f"not {mk.key_id}: use the right master key"
                )
            version = kek.latest.version + 1
            kek.versions.append(self._new_version(zone, version, mk))
            self._store(kek)
        return version

    def wrap(self, zone: str, key: bytes, *, aad: bytes) -> WrappedKey:
        if not 16 <= len(key) <= 64:
            raise ValueError("a wrapped key must be 16 to 64 bytes")
        latest = self._load(zone).latest
        public = X25519PublicKey.from_public_bytes(latest.public_key)
        sealed = prim.hpke_seal(public, key, info=_hpke_info(zone, latest.version, aad))
        return WrappedKey(latest.version, _BLOB_MAGIC + struct.pack(">I", latest.version) + sealed)

    def _unwrap_with(self, kek: _KekFile, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < 8 or blob[:4] != _BLOB_MAGIC:
            raise UnwrapFailed("not a key wrapped by the local keystore")
        (version,) = struct.unpack(">I", blob[4:8])
        private = self._private_key(kek, version)
        try:
            return prim.hpke_open(private, blob[8:], info=_hpke_info(kek.zone, version, aad))
        except (InvalidTag, ValueError):
            raise UnwrapFailed(
                f"wrapped key does not verify under KEK version {version} of zone {kek.zone!r} "
                "(modified, wrapped for another zone, or other associated data)"
            ) from None

    def unwrap(self, zone: str, blob: bytes, *, aad: bytes) -> bytes:
        if not self._path(zone).exists():
            # A destroyed KEK is a decryption failure like any other (the reason is audited).
            raise UnwrapFailed(
                f"zone {zone!r} has no KEK in {self._dir} (destroyed, or wrong keystore directory)"
            )
        return self._unwrap_with(self._load(zone), blob, aad)

    def rewrap_many(
        self, zone: str, items: Sequence[tuple[bytes, bytes]]
    ) -> list[WrappedKey | UnwrapFailed]:
        kek = self._load(zone)  # one read for the whole batch
        latest = kek.latest
        public = X25519PublicKey.from_public_bytes(latest.public_key)
        out: list[WrappedKey | UnwrapFailed] = []
        for blob, aad in items:
            try:
                key = self._unwrap_with(kek, blob, aad)
            except UnwrapFailed as exc:
                out.append(exc)
                continue
            sealed = prim.hpke_seal(public, key, info=_hpke_info(zone, latest.version, aad))
            out.append(
                WrappedKey(latest.version, _BLOB_MAGIC + struct.pack(">I", latest.version) + sealed)
            )
        return out

    def status(self, zone: str) -> KekStatus:
        kek = self._load(zone)
        latest = kek.latest.version
        return KekStatus(
            zone=zone,
            backend=self.backend,
            latest=latest,
            versions=tuple(
                KekVersion(
                    v.version,
                    v.created_at,
                    "destroyed"
                    if v.private_key is None
                    else ("active" if v.version == latest else "decrypt-only"),
                )
                for v in kek.versions
            ),
        )

    def zones(self) -> list[str]:
        if not self._dir.exists():
            return []
        return sorted(p.name.removesuffix(".kek.json") for p in self._dir.glob("*.kek.json"))

    def destroy_versions(self, zone: str, *, below: int) -> None:
        self._require_master(zone, "destroy KEK versions of")
        with self._locked(zone):
            kek = self._load(zone)
            if below > kek.latest.version:
                raise KeystoreError(
                    f"cannot destroy version {kek.latest.version} of zone {zone!r}'s KEK: it is "
                    "the newest; rotate first"
                )
            for v in kek.versions:
                if v.version < below:
                    v.private_key = None
            self._store(kek)

    def destroy_kek(self, zone: str) -> None:
        self._require_master(zone, "destroy the KEK of")
        with self._locked(zone):
            path = self._path(zone)
            if not path.exists():
                raise KeystoreError(f"zone {zone!r} has no KEK in {self._dir}")
            path.unlink()
