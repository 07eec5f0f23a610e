"""Helpers of the access tests: an e-commerce directory (public analytics, confidential customers,
restricted payments), a fixed clock, an audit recorder, a client CA and OIDC signing keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trustzones.access import (
    ApprovalRule,
    AuditEvent,
    Directory,
    GrantInfo,
    PrincipalInfo,
    ZoneRule,
)

NOW = datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC)
LEVELS = ["public", "internal", "confidential", "restricted"]


def ecommerce_directory(*, extra_grants: tuple[GrantInfo, ...] = ()) -> Directory:
    zones = [
        ZoneRule(
            "analytics",
            "public",
            topics=frozenset({"clicks", "pageviews"}),
            auth_methods=frozenset({"api_key", "oidc", "password"}),
        ),
        ZoneRule(
            "customers",
            "confidential",
            topics=frozenset({"profiles"}),
            auth_methods=frozenset({"oidc", "password", "mtls"}),
            mfa_required=True,
            approvals=ApprovalRule(1, "manager"),
        ),
        ZoneRule(
            "payments",
            "restricted",
            topics=frozenset({"cards", "refunds"}),
            auth_methods=frozenset({"mtls", "oidc"}),
            mfa_required=True,
            jit_required=True,
            approvals=ApprovalRule(2, "executive"),
            principal_kinds=frozenset({"user", "service"}),
            break_glass_roles=frozenset({"oncall"}),
        ),
    ]
    all_methods = frozenset({"password", "api_key", "mtls", "oidc"})
    principals = [
        PrincipalInfo("bi-service", "service", "public", frozenset({"api_key"})),
        PrincipalInfo("marketer", "user", "public", all_methods),
        PrincipalInfo("analyst", "user", "confidential", all_methods),
        PrincipalInfo("manager", "user", "confidential", all_methods, roles=frozenset({"manager"})),
        PrincipalInfo("dana", "user", "restricted", all_methods, roles=frozenset({"oncall"})),
        PrincipalInfo("cfo", "user", "restricted", all_methods, roles=frozenset({"executive"})),
        PrincipalInfo("ceo", "user", "restricted", all_methods, roles=frozenset({"executive"})),
        PrincipalInfo("cto", "user", "restricted", all_methods, roles=frozenset({"executive"})),
        PrincipalInfo("payments-svc", "service", "restricted", frozenset({"mtls"})),
        PrincipalInfo(
            "auditor", "user", "restricted", all_methods, roles=frozenset({"security-admin"})
        ),
        PrincipalInfo("mfa-user", "user", "internal", all_methods, mfa_required=True),
    ]
    grants = [
        GrantInfo("g-bi-read", "bi-service", "analytics", None, frozenset({"read"})),
        GrantInfo("g-mgr-cust", "manager", "customers", None, frozenset({"read"})),
        GrantInfo("g-cfo-pay", "cfo", "payments", None, frozenset({"read"})),
        GrantInfo("g-ceo-pay", "ceo", "payments", None, frozenset({"read"})),
        GrantInfo("g-svc-cards", "payments-svc", "payments", "cards", frozenset({"read", "write"})),
        *extra_grants,
    ]
    return Directory(levels=LEVELS, zones=zones, principals=principals, grants=grants)


class AuditRecorder:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def __call__(self, event: AuditEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Pki:
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    def issue(
        self,
        subject: list[tuple[x509.ObjectIdentifier, str]],
        *,
        not_before: datetime = NOW - timedelta(days=1),
        not_after: datetime = NOW + timedelta(days=30),
        issuer_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid, v) for oid, v in subject]))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                False,
            )
            .sign(issuer_key or self.ca_key, hashes.SHA256())
        )
        return cert, key


def make_ca(name: str) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=10))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return Pki(ca, key)


# -- OIDC ---------------------------------------------------------------------------------------


@dataclass
class Idp:
    issuer: str
    audience: str
    key: ec.EllipticCurvePrivateKey
    kid: str
    jwks_path: Path

    def token(self, claims: dict[str, object] | None = None, **overrides: object) -> str:
        body: dict[str, object] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "analyst",
            "iat": int(NOW.timestamp()) - 60,
            "exp": int(NOW.timestamp()) + 3600,
        }
        body.update(claims or {})
        headers = {"kid": self.kid}
        algorithm = str(overrides.pop("algorithm", "ES256"))
        key = overrides.pop("key", self.key)
        headers.update({k: str(v) for k, v in overrides.items()})
        return jwt.encode(body, key, algorithm=algorithm, headers=headers)  # type: ignore[arg-type]
