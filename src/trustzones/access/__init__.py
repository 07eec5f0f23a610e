"""Access control per zone: authentication, the policy decision point, just-in-time grants.

Example::

    from datetime import UTC, datetime, timedelta
    from trustzones.access import (
        Directory, GrantInfo, Identity, PolicyDecisionPoint, PrincipalInfo, Resource, ZoneRule,
    )

    directory = Directory(
        levels=["public", "internal", "confidential", "restricted"],
        zones=[ZoneRule("analytics", "public", topics=frozenset({"clicks"}))],
        principals=[PrincipalInfo("bi", "service", "public", frozenset({"api_key"}))],
        grants=[GrantInfo("g1", "bi", "analytics", None, frozenset({"read"}))],
    )
    events = []
    pdp = PolicyDecisionPoint(directory, audit=events.append)
    decision = pdp.decide(
        Identity("bi", "api_key", mfa=False), "read", Resource("analytics", "clicks"),
        datetime.now(UTC),
    )
    assert decision.allowed and decision.grant_id == "g1"

Threading and ordering: :class:`PolicyDecisionPoint`, :class:`GrantStore` and
:class:`CredentialStore` are safe to share between threads (each serialises on its own
lock) and their files may be opened by several processes. A change committed to the grant
store (a revocation, a new grant) is seen by the next decision of every decision point that
uses that file. Every decision, authentication and grant change is passed to the audit sink
before it takes effect; a failing sink turns a decision into a deny and rolls a grant
change back.
"""

from trustzones.access._authn import (
    ApiKeyCredentials,
    Authenticator,
    BearerTokenCredentials,
    CertificateCredentials,
    Credentials,
    MtlsSettings,
    OidcSettings,
    PasswordCredentials,
)
from trustzones.access._cedar import cedar_schema, compile_policies
from trustzones.access._credentials import (
    ApiKey,
    CredentialStore,
    TotpEnrolment,
    create_store_key_file,
    read_store_key_file,
)
from trustzones.access._directory_file import load_directory
from trustzones.access._errors import AccessRequestError, CredentialStoreError, PolicyLoadError
from trustzones.access._grants import (
    AccessRequest,
    GrantStore,
    GrantView,
    RequestStatus,
    parse_duration,
)
from trustzones.access._model import (
    Action,
    ApprovalRule,
    AuditEvent,
    AuditSink,
    AuthMethod,
    Decision,
    Directory,
    GrantInfo,
    GrantSource,
    Identity,
    PrincipalInfo,
    PrincipalKind,
    Resource,
    ZoneRule,
)
from trustzones.access._pdp import PolicyDecisionPoint
from trustzones.access._principal_mapping import NoMatchingRule, PrincipalMapper
from trustzones.access._scram import ScramCredential, ScramServerExchange, salted_password
from trustzones.access._totp import hotp, totp_at_time

__all__ = [
    "AccessRequest",
    "AccessRequestError",
    "Action",
    "ApiKey",
    "ApiKeyCredentials",
    "ApprovalRule",
    "AuditEvent",
    "AuditSink",
    "AuthMethod",
    "Authenticator",
    "BearerTokenCredentials",
    "CertificateCredentials",
    "CredentialStore",
    "CredentialStoreError",
    "Credentials",
    "Decision",
    "Directory",
    "GrantInfo",
    "GrantSource",
    "GrantStore",
    "GrantView",
    "Identity",
    "MtlsSettings",
    "NoMatchingRule",
    "OidcSettings",
    "PasswordCredentials",
    "PolicyDecisionPoint",
    "PolicyLoadError",
    "PrincipalInfo",
    "PrincipalKind",
    "PrincipalMapper",
    "RequestStatus",
    "Resource",
    "ScramCredential",
    "ScramServerExchange",
    "TotpEnrolment",
    "ZoneRule",
    "cedar_schema",
    "compile_policies",
    "create_store_key_file",
    "hotp",
    "load_directory",
    "parse_duration",
    "read_store_key_file",
    "salted_password",
    "totp_at_time",
]
