"""Authentication: presented credentials (+ optional TOTP) in, an :class:`Identity` out.

Steps of :meth:`Authenticator.authenticate_at_time`:

1. verify the primary credential and find the principal it names:
   password → SCRAM credential of that principal; API key → the principal of a live key;
   client certificate → chain to a trusted CA at ``now``, proof that the presenter holds the
   key, then Kafka's ``ssl.principal.mapping.rules`` on the subject DN; bearer JWT → OIDC
   checks against the JWKS (algorithm allow-list, key id, signature, issuer, audience,
   expiry/not-before/issued-at at ``now``), then the claim → principal mapping;
2. the principal must be known and allowed that method;
3. only then the second factor, so a wrong password never spends a TOTP code: a code given
   must verify (once; a replay fails); a principal that requires MFA must give one. An OIDC
   token whose ``amr`` claim lists an accepted MFA method counts as MFA.

Every failure raises one vague :class:`~trustzones.errors.AuthenticationFailed`; the precise
reason goes to the audit sink only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import verification
from jwt.exceptions import PyJWTError

from trustzones.access._credentials import CredentialStore
from trustzones.access._model import (
    AuditEvent,
    AuditSink,
    AuthMethod,
    Directory,
    Identity,
    epoch_seconds,
)
from trustzones.access._principal_mapping import NoMatchingRule, PrincipalMapper
from trustzones.errors import AuthenticationFailed, ConfigError

__all__ = [
    "ApiKeyCredentials",
    "Authenticator",
    "BearerTokenCredentials",
    "CertificateCredentials",
    "Credentials",
    "MtlsSettings",
    "OidcSettings",
    "PasswordCredentials",
]

_FAILED = "authentication failed: the credentials were not accepted"
_SAFE_JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@dataclass(frozen=True, slots=True)
class PasswordCredentials:
    principal: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApiKeyCredentials:
    key: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CertificateCredentials:
    """A client certificate and how possession of its private key was shown.

    Either pass ``private_key`` (the CLI reads it from a key file) or set
    ``verified_by_tls`` when a TLS handshake that requested the client certificate has
    already proven possession (the gateway and console). Neither means no authentication.
    """

    certificate: x509.Certificate
    intermediates: tuple[x509.Certificate, ...] = ()
    private_key: CertificateIssuerPrivateKeyTypes | None = field(default=None, repr=False)
    verified_by_tls: bool = False


@dataclass(frozen=True, slots=True)
class BearerTokenCredentials:
    token: str = field(repr=False)


Credentials = (
    PasswordCredentials | ApiKeyCredentials | CertificateCredentials | BearerTokenCredentials
)


@dataclass(frozen=True, slots=True)
class MtlsSettings:
    """Trusted client CAs and the DN → principal rules (Kafka syntax)."""

    trust_anchors: tuple[x509.Certificate, ...]
    mapper: PrincipalMapper

    def __post_init__(self) -> None:
        if not self.trust_anchors:
            raise ConfigError("mTLS needs at least one trusted CA certificate")

    @classmethod
    def from_files(cls, ca_file: Path, *, rules: str | None = None) -> MtlsSettings:
        """Read PEM CA certificates; ``rules`` in ``ssl.principal.mapping.rules`` syntax."""
        try:
            anchors = tuple(x509.load_pem_x509_certificates(ca_file.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{ca_file}: cannot read PEM CA certificates: {exc}") from exc
        return cls(anchors, PrincipalMapper.from_rules(rules))


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """What an OIDC bearer token must satisfy, and how its claims name a principal.

    ``principal_claim`` names the claim holding the principal (``sub`` by default);
    ``principal_map`` optionally translates its value (a value missing from the map fails).
    ``mfa_amr`` lists ``amr`` values (RFC 8176) that count as a second factor.
    """

    issuer: str
    audience: str
    jwks: tuple[tuple[Mapping[str, Any], jwt.PyJWK], ...]
    algorithms: frozenset[str] = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
    principal_claim: str = "sub"
    principal_map: Mapping[str, str] | None = None
    mfa_amr: frozenset[str] = frozenset({"mfa"})
    leeway: timedelta = timedelta(seconds=30)

    def __post_init__(self) -> None:
        unsafe = set(self.algorithms) - _SAFE_JWT_ALGORITHMS
        if unsafe or not self.algorithms:
            raise ConfigError(
                f"OIDC algorithms must be a non-empty subset of {sorted(_SAFE_JWT_ALGORITHMS)}; "
                f"{sorted(unsafe)} are not allowed (no 'none', no shared-secret HS*)"
            )
        if not self.jwks:
            raise ConfigError("the JWKS holds no usable signing key")

    @classmethod
    def from_jwks_file(
        cls, path: Path, *, issuer: str, audience: str, **options: Any
    ) -> OidcSettings:
        """Load public keys from a JWKS file (``{"keys": [...]}``)."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            raw_keys = document["keys"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a JWKS file with a 'keys' list: {exc}") from exc
        keys: list[tuple[Mapping[str, Any], jwt.PyJWK]] = []
        for index, data in enumerate(raw_keys):
            if not isinstance(data, dict) or data.get("use", "sig") != "sig":
                continue
            if data.get("kty") == "oct" or "d" in data:
                raise ConfigError(
                    f"{path}: key {index} is a secret or private key; a JWKS file for "
                    "verification holds public keys only"
                )
            try:
                keys.append((data, jwt.PyJWK(data)))
            except PyJWTError as exc:
                raise ConfigError(f"{path}: key {index} is not a usable JWK: {exc}") from exc
        return cls(issuer=issuer, audience=audience, jwks=tuple(keys), **options)

    def _key_for(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        kid = header.get("kid")
        if kid is None:
            if len(self.jwks) != 1:
                raise ValueError("token has no kid and the JWKS holds several keys")
            data, key = self.jwks[0]
        else:
            found = [(d, k) for d, k in self.jwks if d.get("kid") == kid]
            if len(found) != 1:
                raise ValueError(f"no single key with kid {kid!r}")
            data, key = found[0]
        if "alg" in data and data["alg"] != header.get("alg"):
            raise ValueError("the token's alg differs from its key's alg")
        return key

    def validate_at_time(self, token: str, now: datetime) -> tuple[str, bool]:
        """Check the token; return (principal, mfa). Raises ValueError/PyJWTError on failure."""
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise ValueError(f"algorithm {alg!r} is not allowed")
        key = self._key_for(header)
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[alg],
            audience=self.audience,
            issuer=self.issuer,
            # time claims are checked below against the explicit ``now``
            options={
                "require": ["exp", "iat", "iss", "aud", self.principal_claim],
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
        now_s = epoch_seconds(now)
        leeway = self.leeway.total_seconds()
        exp, iat, nbf = (_number(claims, name) for name in ("exp", "iat", "nbf"))
        if now_s >= exp + leeway:
            raise ValueError("the token has expired")
        if nbf > now_s + leeway or iat > now_s + leeway:
            raise ValueError("the token is not valid yet")
        value = claims[self.principal_claim]
        if not isinstance(value, str) or not value:
            raise ValueError(f"claim {self.principal_claim} is not a non-empty string")
        if self.principal_map is not None:
            if value not in self.principal_map:
                raise ValueError(f"claim value {value!r} maps to no principal")
            value = self.principal_map[value]
        amr = claims.get("amr", [])
        mfa = isinstance(amr, list) and any(isinstance(a, str) and a in self.mfa_amr for a in amr)
        return value, mfa


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"claim {name} must be a number")
    return float(value)


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


class Authenticator:
    """Checks presented credentials against the credential store and the directory."""

    def __init__(
        self,
        directory: Directory,
        store: CredentialStore,
        *,
        audit: AuditSink,
        mtls: MtlsSettings | None = None,
        oidc: OidcSettings | None = None,
    ) -> None:
        self._directory = directory
        self._store = store
        self._audit = audit
        self._mtls = mtls
        self._oidc = oidc

    def authenticate(self, credentials: Credentials, *, totp: str | None = None) -> Identity:
        """:meth:`authenticate_at_time` with the wall clock."""
        return self.authenticate_at_time(credentials, datetime.now(UTC), totp=totp)

    def authenticate_at_time(
        self, credentials: Credentials, now: datetime, *, totp: str | None = None
    ) -> Identity:
        """An :class:`Identity`, or :class:`~trustzones.errors.AuthenticationFailed`."""
        claimed = credentials.principal if isinstance(credentials, PasswordCredentials) else ""
        try:
            principal, method, token_mfa = self._primary(credentials, now)
            identity = self._finish(principal, method, token_mfa, totp, now)
        except _Refused as refused:
            self._record(now, refused.principal or claimed, False, refused.reason, refused.method)
            raise AuthenticationFailed(_FAILED) from None
        self._record(now, identity.principal, True, "authenticated", identity.method, identity.mfa)
        return identity

    def _record(
        self,
        now: datetime,
        principal: str,
        allowed: bool,
        reason: str,
        method: str,
        mfa: bool = False,
    ) -> None:
        self._audit(
            AuditEvent(
                kind="access.authenticate",
                at=now,
                principal=principal,
                allowed=allowed,
                reason=reason,
                details={"method": method, "mfa": str(mfa).lower()},
            )
        )

    def _primary(self, credentials: Credentials, now: datetime) -> tuple[str, AuthMethod, bool]:
        if isinstance(credentials, PasswordCredentials):
            if not self._store.verify_password(credentials.principal, credentials.password):
                raise _Refused(
                    "wrong password or unknown principal", "password", credentials.principal
                )
            return credentials.principal, "password", False
        if isinstance(credentials, ApiKeyCredentials):
            found = self._store.verify_api_key_at_time(credentials.key, now)
            if found is None:
                raise _Refused("unknown, revoked, expired or wrong API key", "api_key")
            return found, "api_key", False
        if isinstance(credentials, CertificateCredentials):
            return self._certificate(credentials, now), "mtls", False
        if isinstance(credentials, BearerTokenCredentials):
            if self._oidc is None:
                raise _Refused("OIDC is not configured", "oidc")
            try:
                principal, mfa = self._oidc.validate_at_time(credentials.token, now)
            except (PyJWTError, ValueError, KeyError, TypeError) as exc:
                raise _Refused(f"bearer token refused: {exc}", "oidc") from None
            return principal, "oidc", mfa
        raise _Refused("unsupported credentials", "unknown")

    def _certificate(self, creds: CertificateCredentials, now: datetime) -> str:
        if self._mtls is None:
            raise _Refused("mTLS is not configured", "mtls")
        cert = creds.certificate
        if creds.private_key is not None:
            if _spki(creds.private_key.public_key()) != _spki(cert.public_key()):
                raise _Refused("the private key does not belong to the certificate", "mtls")
        elif not creds.verified_by_tls:
            raise _Refused("no proof of possession of the certificate's key", "mtls")
        ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
        )
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(self._mtls.trust_anchors)))
            .time(now)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, list(creds.intermediates))
        except verification.VerificationError as exc:
            raise _Refused(f"certificate chain refused: {exc}", "mtls") from None
        dn = cert.subject.rfc4514_string()
        try:
            return self._mtls.mapper.name_for(dn)
        except NoMatchingRule as exc:
            raise _Refused(f"certificate DN {dn!r}: {exc}", "mtls") from None

    def _finish(
        self,
        principal: str,
        method: AuthMethod,
        token_mfa: bool,
        totp: str | None,
        now: datetime,
    ) -> Identity:
        info = self._directory.principals.get(principal)
        if info is None:
            raise _Refused("the credential names no known principal", method, principal)
        if method not in info.auth_methods:
            raise _Refused(f"{principal} may not log in with {method}", method, principal)
        mfa = token_mfa
        if totp is not None:
            if info.kind != "user":
                raise _Refused("service accounts have no second factor", method, principal)
            if not self._store.verify_totp_at_time(principal, totp, now):
                raise _Refused("wrong, replayed or locked TOTP code", method, principal)
            mfa = True
        if info.mfa_required and not mfa:
            raise _Refused(f"{principal} must log in with a second factor", method, principal)
        return Identity(principal=principal, method=method, mfa=mfa)


class _Refused(Exception):
    def __init__(self, reason: str, method: str, principal: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.method = method
        self.principal = principal
