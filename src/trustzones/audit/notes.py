"""Signed notes (C2SP ``signed-note``) and transparency log checkpoints (C2SP ``tlog-checkpoint``).

A checkpoint is the text ``origin\\nsize\\nbase64(root)\\n``; a signed note appends a blank line
and one signature line per key: ``— <key name> base64(key ID || Ed25519 signature)``. The key
ID is the first four bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``. Keys are written
the way Go's ``golang.org/x/mod/sumdb/note`` writes them, so its tools read ours:

* signer key (secret): ``PRIVATE+KEY+<name>+<8 hex key ID>+base64(0x01 || 32-byte seed)``
* verifier key (public): ``<name>+<8 hex key ID>+base64(0x01 || 32-byte public key)``

Example::

    from trustzones.audit.notes import Checkpoint, NoteSigner

    signer = NoteSigner.generate("audit.example/restricted")
    note = signer.sign(Checkpoint("audit.example/restricted", 0, bytes(32)).text())
    verifier = signer.verifier()
    checkpoint = Checkpoint.open(note, verifier)   # raises ProofInvalid unless signed
    assert checkpoint.size == 0

The signer key file must be readable by its owner only (mode 0600); keep it outside the
audited zones so that whoever can write the audit database cannot also sign for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from trustzones.audit._errors import AuditKeyInvalid, ProofInvalid

__all__ = [
    "Checkpoint",
    "NoteSigner",
    "NoteVerifier",
    "write_key_files",
]

_ED25519 = 0x01
_EM_DASH = "\u2014"
_MAX_NOTE_BYTES = 1 << 16
_MAX_SIGNATURES = 100


def _key_id(name: str, public: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([_ED25519]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name) or not name.isprintable():
        raise AuditKeyInvalid(
            f"key name {name!r} is not valid: it must be non-empty and contain no spaces, "
            "'+' or control characters (use a schema-less URL such as 'audit.example/log')."
        )


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class NoteVerifier:
    """An Ed25519 note verifier: key name, key ID and public key."""

    __slots__ = ("_public", "_raw", "key_id", "name")

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        if len(public_key) != 32:
            raise AuditKeyInvalid("an Ed25519 public key is 32 bytes")
        self.name = name
        self._raw = public_key
        self._public = Ed25519PublicKey.from_public_bytes(public_key)
        self.key_id = _key_id(name, public_key)

    @classmethod
    def from_key_string(cls, key: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        parts = key.strip().split("+")
        if len(parts) < 3:
            raise AuditKeyInvalid(
                "a verifier key has the form <name>+<8 hex digits>+<base64 key>; "
                "this one does not (is it the public key file written by `audit keygen`?)"
            )
        name, id_hex, material = parts[0], parts[1], "+".join(parts[2:])
        try:
            raw = _b64decode(material)
            key_id = int(id_hex, 16) if len(id_hex) == 8 else -1
        except (binascii.Error, ValueError) as exc:
            raise AuditKeyInvalid("the verifier key's base64 or key ID is malformed") from exc
        if len(raw) != 33 or raw[0] != _ED25519:
            raise AuditKeyInvalid("the verifier key is not an Ed25519 (type 0x01) note key")
        verifier = cls(name, raw[1:])
        if verifier.key_id != key_id:
            raise AuditKeyInvalid(
                f"the verifier key for {name!r} has key ID {id_hex}, but its name and public "
                f"key give {verifier.key_id:08x}: the key string was altered"
            )
        return verifier

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NoteVerifier:
        """Read a verifier key string from a file (the public key, safe to share)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise AuditKeyInvalid(
                f"cannot read the public key file {path}: {exc.strerror}"
            ) from exc
        return cls.from_key_string(text)

    @property
    def key_string(self) -> str:
        """The verifier key in note format, for third parties."""
        material = base64.b64encode(bytes([_ED25519]) + self._raw).decode()
        return f"{self.name}+{self.key_id:08x}+{material}"

    def open(self, note: str) -> str:
        """Verify a signed note; return its text (ending in a newline) or raise ``ProofInvalid``.

        Signature lines of other keys are ignored (C2SP signed-note); a line of this key that
        fails to verify rejects the whole note, and so does a note this key did not sign.
        """
        text, signatures = _split_note(note)
        good = False
        for name, blob in signatures:
            if name != self.name or len(blob) < 4:
                continue
            if int.from_bytes(blob[:4], "big") != self.key_id:
                continue
            try:
                self._public.verify(blob[4:], text.encode())
            except InvalidSignature as exc:
                raise ProofInvalid(
                    f"the note's signature by {self.name!r} does not verify: the note was "
                    "changed after it was signed, or signed by another key"
                ) from exc
            good = True
        if not good:
            raise ProofInvalid(
                f"the note carries no signature by the key {self.name}+{self.key_id:08x}"
            )
        return text


class NoteSigner:
    """An Ed25519 note signer. Its key string is secret: never log or print it."""

    __slots__ = ("_private", "_verifier", "name")

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            raise AuditKeyInvalid("an Ed25519 private key seed is 32 bytes")
        self.name = name
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._verifier = NoteVerifier(name, public)

    def __repr__(self) -> str:
        return f"NoteSigner({self.name!r}, key_id={self.key_id:08x})"

    @property
    def key_id(self) -> int:
        return self._verifier.key_id

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A new random key for the log ``name`` (use the log's origin as the name)."""
        return cls(name, os.urandom(32))

    @classmethod
    def from_key_string(cls, key: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``."""
        parts = key.strip().split("+")
        if len(parts) < 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise AuditKeyInvalid(
                "a signer key has the form PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>; "
                "this one does not (is it the key file written by `audit keygen`?)"
            )
        name, id_hex, material = parts[2], parts[3], "+".join(parts[4:])
        try:
            raw = _b64decode(material)
            key_id = int(id_hex, 16) if len(id_hex) == 8 else -1
        except (binascii.Error, ValueError) as exc:
            raise AuditKeyInvalid("the signer key's base64 or key ID is malformed") from exc
        if len(raw) != 33 or raw[0] != _ED25519:
            raise AuditKeyInvalid("the signer key is not an Ed25519 (type 0x01) note key")
        signer = cls(name, raw[1:])
        if signer.key_id != key_id:
            raise AuditKeyInvalid(
                f"the signer key for {name!r} names key ID {id_hex}, which does not match its "
                "key: the key file was altered"
            )
        return signer

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> NoteSigner:
        """Read the signer key file; refuse it when group or others may read it."""
        p = Path(path)
        try:
            mode = p.stat().st_mode
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise AuditKeyInvalid(f"cannot read the signing key file {p}: {exc.strerror}") from exc
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditKeyInvalid(
                f"the signing key file {p} is accessible to group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {p}`"
            )
        return cls.from_key_string(text)

    def private_key_string(self) -> str:
        """The secret key in note format. Write it only to a 0600 file."""
        seed = self._private.private_bytes_raw()
        material = base64.b64encode(bytes([_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{material}"

    def verifier(self) -> NoteVerifier:
        return self._verifier

    def sign(self, text: str) -> str:
        """Sign ``text`` (which must end in a newline) and return the signed note."""
        _check_text(text)
        signature = self._private.sign(text.encode())
        blob = base64.b64encode(self.key_id.to_bytes(4, "big") + signature).decode()
        return f"{text}\n{_EM_DASH} {self.name} {blob}\n"


def write_key_files(
    signer: NoteSigner, key_path: str | os.PathLike[str], public_key_path: str | os.PathLike[str]
) -> None:
    """Write a new signer key (mode 0600, never overwriting) and its verifier key file."""
    key_path = Path(key_path)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise AuditKeyInvalid(
            f"{key_path} already exists; refusing to overwrite a signing key (move it away "
            "first if you really mean to replace it)"
        ) from exc
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(signer.private_key_string() + "\n")
    Path(public_key_path).write_text(signer.verifier().key_string + "\n", encoding="utf-8")


# A character below U+0020 other than the newline (a scan in C: every append signs a head and
# checks the last one, and a generator over the characters cost ~40,000 instructions each time).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise ValueError("note text must end with a newline")
    if _CONTROL.search(text):
        raise ValueError("note text must not contain control characters other than newline")


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    if len(note.encode("utf-8", "surrogatepass")) > _MAX_NOTE_BYTES:
        raise ProofInvalid("the signed note is too large")
    if _CONTROL.search(note) or not note.endswith("\n"):
        raise ProofInvalid("the signed note is malformed: control characters or no final newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise ProofInvalid("the signed note is malformed: no blank line before the signatures")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    lines = sig_block[:-1].split("\n") if sig_block else []
    if not lines or len(lines) > _MAX_SIGNATURES:
        raise ProofInvalid("the signed note has no signature lines (or far too many)")
    signatures = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or not parts[1]:
            raise ProofInvalid("the signed note has a malformed signature line")
        try:
            blob = _b64decode(parts[2])
        except (binascii.Error, ValueError) as exc:
            raise ProofInvalid("the signed note has a signature that is not base64") from exc
        signatures.append((parts[1], blob))
    return text, signatures


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: ``origin`` (the log's name), ``size`` (leaves) and ``root_hash``."""

    origin: str
    size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise ValueError("a checkpoint origin is a non-empty single line")
        if self.size < 0:
            raise ValueError("a checkpoint's tree size is >= 0")
        if len(self.root_hash) != 32:
            raise ValueError("a checkpoint's root hash is 32 bytes")

    def text(self) -> str:
        """The checkpoint's note text (C2SP tlog-checkpoint), ready to sign."""
        root = base64.b64encode(self.root_hash).decode()
        return f"{self.origin}\n{self.size}\n{root}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text (extension lines are allowed and ignored)."""
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise ProofInvalid(
                "the checkpoint is malformed: it needs origin, size and root hash lines"
            )
        origin, size_text, root_text = lines[0], lines[1], lines[2]
        if (
            not size_text.isdigit()
            or not size_text.isascii()
            or (size_text != "0" and size_text.startswith("0"))
        ):
            raise ProofInvalid(f"the checkpoint's tree size {size_text!r} is not a decimal number")
        try:
            root = _b64decode(root_text)
        except (binascii.Error, ValueError) as exc:
            raise ProofInvalid("the checkpoint's root hash is not base64") from exc
        if len(root) != 32:
            raise ProofInvalid("the checkpoint's root hash is not 32 bytes")
        return cls(origin, int(size_text), root)

    @classmethod
    def open(cls, note: str, verifier: NoteVerifier) -> Checkpoint:
        """Verify a signed checkpoint note and parse it; raise ``ProofInvalid`` if bad."""
        return cls.parse(verifier.open(note))
