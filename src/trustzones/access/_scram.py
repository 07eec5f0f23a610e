"""SCRAM credentials (RFC 5802, RFC 7677) in the form Apache Kafka stores them.

Kafka keeps, per user and mechanism, ``salt``, ``StoredKey``, ``ServerKey`` and the iteration
count (``ScramCredentialUtils``: ``salt=…,stored_key=…,server_key=…,iterations=…``, all
base64), never the password. We store exactly that, so a credential made here verifies the
same password as the broker would when both use the same salt and iteration count.

Derivation (RFC 5802 §3)::

    SaltedPassword = Hi(password, salt, i)        # = PBKDF2-HMAC-H with dkLen = hLen
    ClientKey      = HMAC(SaltedPassword, "Client Key")
    StoredKey      = H(ClientKey)
    ServerKey      = HMAC(SaltedPassword, "Server Key")

Like Kafka (``ScramFormatter.normalize``), the password is encoded as UTF-8 without SASLprep;
for ASCII passwords the two are identical.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from trustzones.errors import AuthenticationFailed

__all__ = [
    "KAFKA_MAX_ITERATIONS",
    "KAFKA_MIN_ITERATIONS",
    "ScramCredential",
    "ScramMechanism",
    "ScramServerExchange",
    "salted_password",
]

ScramMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]

#: Kafka's ``ScramMechanism`` accepts iteration counts in this range only.
KAFKA_MIN_ITERATIONS = 4096
KAFKA_MAX_ITERATIONS = 16384

_HASHES: dict[str, str] = {
    "SCRAM-SHA-1": "sha1",  # only for the RFC 5802 test vector; never stored
    "SCRAM-SHA-256": "sha256",
    "SCRAM-SHA-512": "sha512",
}


def _hash_name(mechanism: str) -> str:
    try:
        return _HASHES[mechanism]
    except KeyError:
        raise ValueError(f"unsupported SCRAM mechanism {mechanism!r}") from None


def salted_password(password: str, salt: bytes, iterations: int, mechanism: str) -> bytes:
    """``Hi(password, salt, i)``; what Kafka's AlterUserScramCredentials request carries.

    This value lets its holder authenticate: pass it straight to a provisioning call and
    never store it.
    """
    name = _hash_name(mechanism)
    return hashlib.pbkdf2_hmac(name, password.encode("utf-8"), salt, iterations)


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """What a server stores for one user and mechanism. Holds no password equivalent."""

    mechanism: str
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)
    iterations: int

    @classmethod
    def derive(
        cls,
        password: str,
        *,
        mechanism: ScramMechanism = "SCRAM-SHA-512",
        iterations: int = 8192,
        salt: bytes | None = None,
    ) -> ScramCredential:
        """Make a credential from a clear password (a fresh 32-byte salt unless given)."""
        if not KAFKA_MIN_ITERATIONS <= iterations <= KAFKA_MAX_ITERATIONS:
            raise ValueError(
                f"SCRAM iterations must be between {KAFKA_MIN_ITERATIONS} and "
                f"{KAFKA_MAX_ITERATIONS} (Kafka's limits), not {iterations}"
            )
        if not password:
            raise ValueError("the password must not be empty")
        return cls._derive(password, mechanism, iterations, salt or secrets.token_bytes(32))

    @classmethod
    def _derive(
        cls, password: str, mechanism: str, iterations: int, salt: bytes
    ) -> ScramCredential:
        name = _hash_name(mechanism)
        salted = salted_password(password, salt, iterations, mechanism)
        client_key = hmac.digest(salted, b"Client Key", name)
        return cls(
            mechanism=mechanism,
            salt=salt,
            stored_key=hashlib.new(name, client_key).digest(),
            server_key=hmac.digest(salted, b"Server Key", name),
            iterations=iterations,
        )

    def verify_password(self, password: str) -> bool:
        """Recompute StoredKey from ``password`` and compare in constant time."""
        other = self._derive(password, self.mechanism, self.iterations, self.salt)
        return hmac.compare_digest(other.stored_key, self.stored_key)

    def to_kafka_string(self) -> str:
        """Kafka's persisted form: ``salt=…,stored_key=…,server_key=…,iterations=…``."""
        b64 = base64.b64encode
        return (
            f"salt={b64(self.salt).decode()},stored_key={b64(self.stored_key).decode()},"
            f"server_key={b64(self.server_key).decode()},iterations={self.iterations}"
        )

    @classmethod
    def from_kafka_string(cls, text: str, *, mechanism: str) -> ScramCredential:
        """Parse :meth:`to_kafka_string` output (Kafka's ``credentialFromString``)."""
        parts: dict[str, str] = {}
        for token in text.split(","):
            key, sep, value = token.partition("=")
            if not sep or not key:
                raise ValueError("not a Kafka SCRAM credential string")
            parts[key] = value
        if set(parts) != {"salt", "stored_key", "server_key", "iterations"}:
            raise ValueError(
                "a Kafka SCRAM credential string has exactly salt, stored_key, server_key "
                "and iterations"
            )
        try:
            return cls(
                mechanism=mechanism,
                salt=base64.b64decode(parts["salt"], validate=True),
                stored_key=base64.b64decode(parts["stored_key"], validate=True),
                server_key=base64.b64decode(parts["server_key"], validate=True),
                iterations=int(parts["iterations"]),
            )
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a Kafka SCRAM credential string has a malformed field") from exc


_FAILED = "authentication failed: check the user name and password"


def _attributes(message: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise AuthenticationFailed(_FAILED)
        out.append((part[0], part[2:]))
    return out


def _unescape_saslname(name: str) -> str:
    # RFC 5802 §5.1: "," is sent as "=2C" and "=" as "=3D"; any other "=" is malformed.
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise AuthenticationFailed(_FAILED)
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramServerExchange:
    """The server side of one SCRAM authentication (RFC 5802 §5), without channel binding.

    1. :meth:`server_first` takes the client-first message and returns the server-first one;
    2. :meth:`server_final` takes the client-final message, checks the nonce, the GS2 header
       and the client proof, and returns the server-final message (``v=…``) on success.

    ``lookup`` returns the stored credential for a user name, or ``None``; an unknown user
    gets a fake salt and fails at step 2 like a wrong password, so the two look the same.
    """

    def __init__(
        self,
        mechanism: str,
        lookup: Callable[[str], ScramCredential | None],
        *,
        server_nonce: str | None = None,
    ) -> None:
        self._mechanism = mechanism
        self._hash = _hash_name(mechanism)
        self._lookup = lookup
        self._server_nonce = server_nonce or secrets.token_urlsafe(24)
        self._state: Literal["first", "final", "done"] = "first"
        self._credential: ScramCredential | None = None
        self._client_first_bare = ""
        self._server_first = ""
        self._gs2_header = ""
        self._nonce = ""
        self.username = ""

    def server_first(self, client_first: str) -> str:
        if self._state != "first":
            raise AuthenticationFailed(_FAILED)
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","; "p" (channel binding) is refused.
        flag, sep1, rest = client_first.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not (sep1 and sep2) or flag not in ("n", "y") or authzid:
            raise AuthenticationFailed(_FAILED)
        attrs = _attributes(bare)
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise AuthenticationFailed(_FAILED)
        if any(key == "m" for key, _ in attrs):
            raise AuthenticationFailed(_FAILED)  # mandatory extensions are not supported
        self.username = _unescape_saslname(attrs[0][1])
        credential = self._lookup(self.username)
        if credential is not None and credential.mechanism != self._mechanism:
            credential = None
        self._credential = credential
        salt = credential.salt if credential else hashlib.sha256(self.username.encode()).digest()
        iterations = credential.iterations if credential else KAFKA_MIN_ITERATIONS
        self._gs2_header = f"{flag},{authzid},"
        self._client_first_bare = bare
        self._nonce = attrs[1][1] + self._server_nonce
        self._server_first = f"r={self._nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        self._state = "final"
        return self._server_first

    def server_final(self, client_final: str) -> str:
        if self._state != "final":
            raise AuthenticationFailed(_FAILED)
        self._state = "done"
        without_proof, sep, proof_part = client_final.rpartition(",p=")
        if not sep:
            raise AuthenticationFailed(_FAILED)
        attrs = _attributes(without_proof)
        expected_cbind = base64.b64encode(self._gs2_header.encode()).decode()
        if (
            len(attrs) < 2
            or attrs[0] != ("c", expected_cbind)
            or attrs[1] != ("r", self._nonce)
            or self._credential is None
        ):
            raise AuthenticationFailed(_FAILED)
        try:
            proof = base64.b64decode(proof_part, validate=True)
        except binascii.Error:
            raise AuthenticationFailed(_FAILED) from None
        auth_message = (f"{self._client_first_bare},{self._server_first},{without_proof}").encode()
        stored_key = self._credential.stored_key
        client_signature = hmac.digest(stored_key, auth_message, self._hash)
        if len(proof) != len(client_signature):
            raise AuthenticationFailed(_FAILED)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self._hash, client_key).digest(), stored_key):
            raise AuthenticationFailed(_FAILED)
        server_signature = hmac.digest(self._credential.server_key, auth_message, self._hash)
        return f"v={base64.b64encode(server_signature).decode()}"
