"""The Authenticator: each method accepts good and refuses bad credentials; failures are
vague to the caller and detailed in the audit log; TOTP replay and MFA requirements."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import jwt
import pytest
from access_helpers import NOW, AuditRecorder, Idp, Pki
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustzones.access import (
    ApiKeyCredentials,
    Authenticator,
    BearerTokenCredentials,
    CertificateCredentials,
    CredentialStore,
    Directory,
    Identity,
    MtlsSettings,
    OidcSettings,
    PasswordCredentials,
    PrincipalMapper,
    totp_at_time,
)
from trustzones.errors import AuthenticationFailed, ConfigError

RULES = (
    "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,"
    "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L"
)
VAGUE = "^authentication failed: the credentials were not accepted$"


def service_dn(cn: str) -> list[tuple[object, str]]:
    return [
        (NameOID.COUNTRY_NAME, "DE"),
        (NameOID.STATE_OR_PROVINCE_NAME, "Unknown"),
        (NameOID.LOCALITY_NAME, "Unknown"),
        (NameOID.ORGANIZATION_NAME, "Unknown"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "ServiceUsers"),
        (NameOID.COMMON_NAME, cn),
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CredentialStore]:
    s = CredentialStore.create(tmp_path / "cred.db", key=bytes(32))
    s.set_password("analyst", "analyst-password", iterations=4096)
    s.set_password("mfa-user", "mfa-user-password", iterations=4096)
    yield s
    s.close()


@pytest.fixture
def authn(
    directory: Directory, store: CredentialStore, audit: AuditRecorder, pki: Pki, idp: Idp
) -> Authenticator:
    return Authenticator(
        directory,
        store,
        audit=audit,
        mtls=MtlsSettings((pki.ca,), PrincipalMapper.from_rules(RULES)),
        oidc=OidcSettings.from_jwks_file(idp.jwks_path, issuer=idp.issuer, audience=idp.audience),
    )


def _enrol(store: CredentialStore, principal: str, now: datetime) -> bytes:
    enrolment = store.begin_totp_enrolment(principal)
    secret = base64.b32decode(enrolment.secret_base32 + "=" * (-len(enrolment.secret_base32) % 8))
    assert store.confirm_totp_enrolment(principal, totp_at_time(secret, now), now=now)
    return secret


# -- passwords --------------------------------------------------------------------------------


def test_password_good(authn: Authenticator, audit: AuditRecorder) -> None:
    identity = authn.authenticate_at_time(PasswordCredentials("analyst", "analyst-password"), NOW)
    assert identity == Identity("analyst", "password", mfa=False)
    assert audit.events[-1].kind == "access.authenticate" and audit.events[-1].allowed


def test_wrong_password_is_refused_vaguely_and_audited(
    authn: Authenticator, audit: AuditRecorder
) -> None:
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(PasswordCredentials("analyst", "guess"), NOW)
    event = audit.events[-1]
    assert not event.allowed and event.principal == "analyst"
    assert "wrong password" in event.reason and "guess" not in repr(event)


def test_unknown_user_gets_the_same_message(authn: Authenticator) -> None:
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(PasswordCredentials("nobody", "analyst-password"), NOW)


def test_method_not_allowed_for_principal(
    authn: Authenticator, store: CredentialStore, audit: AuditRecorder
) -> None:
    store.set_password("bi-service", "svc-password", iterations=4096)  # bi-service: api_key only
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(PasswordCredentials("bi-service", "svc-password"), NOW)
    assert "may not log in with password" in audit.events[-1].reason


# -- API keys ---------------------------------------------------------------------------------


def test_api_key_good_and_bad(authn: Authenticator, store: CredentialStore) -> None:
    key = store.create_api_key("bi-service", now=NOW)
    identity = authn.authenticate_at_time(ApiKeyCredentials(key.secret), NOW)
    assert identity == Identity("bi-service", "api_key", mfa=False)
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(ApiKeyCredentials(key.secret + "x"), NOW)
    store.revoke_api_key(key.key_id, now=NOW)
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(ApiKeyCredentials(key.secret), NOW)


# -- mTLS ----------------------------------------------------------------------------------------


def test_certificate_good_with_key_and_with_tls_handshake(authn: Authenticator, pki: Pki) -> None:
    cert, key = pki.issue(service_dn("payments-svc"))
    assert cert.subject.rfc4514_string().startswith("CN=payments-svc,OU=ServiceUsers,O=Unknown")
    identity = authn.authenticate_at_time(CertificateCredentials(cert, private_key=key), NOW)
    assert identity == Identity("payments-svc", "mtls", mfa=False)
    identity = authn.authenticate_at_time(CertificateCredentials(cert, verified_by_tls=True), NOW)
    assert identity.principal == "payments-svc"


def test_certificate_matching_no_rule_is_refused(
    authn: Authenticator, pki: Pki, audit: AuditRecorder
) -> None:
    cert, key = pki.issue([(NameOID.COMMON_NAME, "payments-svc")])  # no OU, no rule matches
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(CertificateCredentials(cert, private_key=key), NOW)
    assert "no ssl.principal.mapping.rules entry matches" in audit.events[-1].reason


def test_certificate_mapping_to_unknown_principal_is_refused(
    authn: Authenticator, pki: Pki
) -> None:
    cert, key = pki.issue(service_dn("stranger"))
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(CertificateCredentials(cert, private_key=key), NOW)


def test_certificate_from_another_ca_is_refused(
    authn: Authenticator, other_pki: Pki, audit: AuditRecorder
) -> None:
    cert, key = other_pki.issue(service_dn("payments-svc"))
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(CertificateCredentials(cert, private_key=key), NOW)
    assert "chain refused" in audit.events[-1].reason


def test_expired_certificate_is_refused(authn: Authenticator, pki: Pki) -> None:
    cert, key = pki.issue(
        service_dn("payments-svc"),
        not_before=NOW - timedelta(days=10),
        not_after=NOW - timedelta(days=1),
    )
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(CertificateCredentials(cert, private_key=key), NOW)


def test_certificate_without_proof_of_possession_is_refused(authn: Authenticator, pki: Pki) -> None:
    cert, _ = pki.issue(service_dn("payments-svc"))
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(CertificateCredentials(cert), NOW)
    other_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(CertificateCredentials(cert, private_key=other_key), NOW)


# -- OIDC ----------------------------------------------------------------------------------------


def test_jwt_good(authn: Authenticator, idp: Idp) -> None:
    identity = authn.authenticate_at_time(BearerTokenCredentials(idp.token()), NOW)
    assert identity == Identity("analyst", "oidc", mfa=False)


def test_jwt_amr_mfa_counts_as_second_factor(authn: Authenticator, idp: Idp) -> None:
    token = idp.token({"amr": ["pwd", "mfa"]})
    assert authn.authenticate_at_time(BearerTokenCredentials(token), NOW).mfa


def test_expired_jwt_is_refused(authn: Authenticator, idp: Idp, audit: AuditRecorder) -> None:
    token = idp.token({"exp": int(NOW.timestamp()) - 31})  # beyond the 30 s leeway
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(token), NOW)
    assert "expired" in audit.events[-1].reason


def test_jwt_signed_by_another_key_is_refused(authn: Authenticator, idp: Idp) -> None:
    forged = idp.token(key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(forged), NOW)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example"}, "issuer"),
        ({"aud": "someone-else"}, "audience"),
        ({"nbf": int(NOW.timestamp()) + 600}, "not valid yet"),
        ({"iat": int(NOW.timestamp()) + 600}, "not valid yet"),
        ({"sub": "nobody"}, "no known principal"),
    ],
)
def test_jwt_with_wrong_claims_is_refused(
    authn: Authenticator, idp: Idp, audit: AuditRecorder, claims: dict[str, object], reason: str
) -> None:
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(idp.token(claims)), NOW)
    assert reason in audit.events[-1].reason.lower()


def test_jwt_without_exp_is_refused(authn: Authenticator, idp: Idp) -> None:
    body = {"iss": idp.issuer, "aud": idp.audience, "sub": "analyst", "iat": int(NOW.timestamp())}
    token = jwt.encode(body, idp.key, algorithm="ES256", headers={"kid": idp.kid})
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(token), NOW)


def test_alg_none_and_hmac_confusion_are_refused(authn: Authenticator, idp: Idp) -> None:
    body = {
        "iss": idp.issuer,
        "aud": idp.audience,
        "sub": "analyst",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 60,
    }
    unsigned = jwt.encode(body, None, algorithm="none", headers={"kid": idp.kid})
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(unsigned), NOW)
    # an HS256 token keyed with the public JWK text: the classic key-confusion attack
    jwks = json.loads(idp.jwks_path.read_text())
    forged = jwt.encode(
        body, json.dumps(jwks["keys"][0]).encode() * 2, algorithm="HS256", headers={"kid": idp.kid}
    )
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(forged), NOW)


def test_unknown_kid_is_refused(authn: Authenticator, idp: Idp) -> None:
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(idp.token(kid="k2")), NOW)


def test_claim_mapping(directory: Directory, store: CredentialStore, idp: Idp) -> None:
    oidc = OidcSettings.from_jwks_file(
        idp.jwks_path,
        issuer=idp.issuer,
        audience=idp.audience,
        principal_claim="email",
        principal_map={"ann@example.com": "analyst"},
    )
    authn = Authenticator(directory, store, audit=lambda e: None, oidc=oidc)
    token = idp.token({"email": "ann@example.com"})
    assert authn.authenticate_at_time(BearerTokenCredentials(token), NOW).principal == "analyst"
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(BearerTokenCredentials(idp.token({"email": "x@y.z"})), NOW)


def test_unsafe_algorithm_lists_and_secret_jwks_are_config_errors(idp: Idp, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no 'none'"):
        OidcSettings.from_jwks_file(
            idp.jwks_path, issuer="i", audience="a", algorithms=frozenset({"HS256"})
        )
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    with pytest.raises(ConfigError, match="public keys only"):
        OidcSettings.from_jwks_file(secret, issuer="i", audience="a")


# -- TOTP as second factor -------------------------------------------------------------------------


def test_totp_second_factor_and_replay(authn: Authenticator, store: CredentialStore) -> None:
    secret = _enrol(store, "analyst", NOW)
    t = NOW + timedelta(minutes=2)
    code = totp_at_time(secret, t)
    creds = PasswordCredentials("analyst", "analyst-password")
    assert authn.authenticate_at_time(creds, t, totp=code) == Identity("analyst", "password", True)
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(creds, t, totp=code)  # replayed


def test_wrong_password_does_not_spend_the_totp_code(
    authn: Authenticator, store: CredentialStore
) -> None:
    secret = _enrol(store, "analyst", NOW)
    t = NOW + timedelta(minutes=2)
    code = totp_at_time(secret, t)
    with pytest.raises(AuthenticationFailed):
        authn.authenticate_at_time(PasswordCredentials("analyst", "wrong"), t, totp=code)
    good = PasswordCredentials("analyst", "analyst-password")
    assert authn.authenticate_at_time(good, t, totp=code).mfa


def test_principal_requiring_mfa_is_refused_without_it(
    authn: Authenticator, store: CredentialStore, audit: AuditRecorder
) -> None:
    creds = PasswordCredentials("mfa-user", "mfa-user-password")
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(creds, NOW)
    assert "second factor" in audit.events[-1].reason
    secret = _enrol(store, "mfa-user", NOW)
    t = NOW + timedelta(minutes=1)
    assert authn.authenticate_at_time(creds, t, totp=totp_at_time(secret, t)).mfa


def test_service_accounts_cannot_present_totp(authn: Authenticator, store: CredentialStore) -> None:
    key = store.create_api_key("bi-service", now=NOW)
    with pytest.raises(AuthenticationFailed, match=VAGUE):
        authn.authenticate_at_time(ApiKeyCredentials(key.secret), NOW, totp="123456")
