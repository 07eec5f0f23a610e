"""The policy decision point: deny by default, no read up, zone controls, expiry and
revocation at once, custom Cedar policies validated at load, fail-closed on errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import cedarpy
import pytest
from access_helpers import NOW, AuditRecorder, ecommerce_directory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustzones.access import (
    AuditEvent,
    Directory,
    GrantInfo,
    GrantStore,
    Identity,
    PolicyDecisionPoint,
    PolicyLoadError,
    Resource,
)
from trustzones.access._cedar import build_entities, load_policies

CARDS = Resource("payments", "cards")
OIDC_MFA = "oidc", True


def idn(principal: str, method: str = "oidc", mfa: bool = True) -> Identity:
    return Identity(principal, method, mfa)  # type: ignore[arg-type]


def pdp_for(directory: Directory, audit: AuditRecorder, **kwargs: object) -> PolicyDecisionPoint:
    return PolicyDecisionPoint(directory, audit=audit, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def pdp(directory: Directory, audit: AuditRecorder) -> PolicyDecisionPoint:
    return pdp_for(directory, audit)


def test_deny_by_default_without_a_grant(pdp: PolicyDecisionPoint) -> None:
    decision = pdp.decide(idn("marketer"), "read", Resource("analytics", "clicks"), NOW)
    assert not decision.allowed
    assert "no live grant" in decision.reason and "deny by default" in decision.reason
    assert decision.grant_id is None and decision.policy_version == pdp.policy_version


@pytest.mark.parametrize(
    ("identity", "resource", "reason"),
    [
        (idn("nobody"), Resource("analytics", "clicks"), "unknown principal"),
        (idn("bi-service", "api_key", False), Resource("nowhere"), "unknown zone"),
        (idn("bi-service", "api_key", False), Resource("analytics", "nope"), "no topic"),
    ],
)
def test_unknown_things_are_denied(
    pdp: PolicyDecisionPoint, identity: Identity, resource: Resource, reason: str
) -> None:
    decision = pdp.decide(identity, "read", resource, NOW)
    assert not decision.allowed and reason in decision.reason


def test_service_account_reads_public_zone_with_its_grant(pdp: PolicyDecisionPoint) -> None:
    bi = idn("bi-service", "api_key", False)
    decision = pdp.decide(bi, "read", Resource("analytics", "clicks"), NOW)
    assert decision.allowed and decision.grant_id == "g-bi-read"
    assert pdp.decide(bi, "read", Resource("analytics"), NOW).allowed  # whole-zone grant
    assert not pdp.decide(bi, "write", Resource("analytics", "clicks"), NOW).allowed  # read-only


def test_no_read_up_even_with_a_grant(audit: AuditRecorder) -> None:
    directory = ecommerce_directory(
        extra_grants=(
            GrantInfo("g-up", "marketer", "payments", "cards", frozenset({"read"}), source="jit",
                      approvals=5, expires_at=NOW + timedelta(hours=1)),
        )
    )  # fmt: skip
    decision = pdp_for(directory, audit).decide(idn("marketer"), "read", CARDS, NOW)
    assert not decision.allowed
    assert decision.reason.startswith("no read up: clearance public is below zone payments")


def test_write_up_is_allowed_with_a_grant_and_reading_back_is_not(audit: AuditRecorder) -> None:
    directory = ecommerce_directory(
        extra_grants=(
            GrantInfo("g-w", "marketer", "customers", "profiles", frozenset({"read", "write"})),
        )
    )
    pdp = pdp_for(directory, audit)
    profiles = Resource("customers", "profiles")
    assert pdp.decide(idn("marketer"), "write", profiles, NOW).allowed
    assert not pdp.decide(idn("marketer"), "read", profiles, NOW).allowed


def test_zone_refuses_a_method_it_does_not_list(pdp: PolicyDecisionPoint) -> None:
    decision = pdp.decide(idn("manager", "api_key", True), "read", Resource("customers"), NOW)
    assert not decision.allowed
    assert decision.reason == (
        "zone customers does not accept api_key sessions (it accepts mtls, oidc, password)"
    )


def test_zone_requiring_mfa_refuses_a_session_without_it(pdp: PolicyDecisionPoint) -> None:
    profiles = Resource("customers", "profiles")
    decision = pdp.decide(idn("manager", "oidc", False), "read", profiles, NOW)
    assert not decision.allowed and "requires MFA" in decision.reason
    assert pdp.decide(idn("manager", "oidc", True), "read", profiles, NOW).allowed


def test_jit_zone_refuses_standing_grants_of_users_but_not_of_services(
    pdp: PolicyDecisionPoint,
) -> None:
    decision = pdp.decide(idn("cfo"), "read", CARDS, NOW)
    assert not decision.allowed and "just-in-time" in decision.reason
    svc = idn("payments-svc", "mtls", False)
    assert pdp.decide(svc, "write", CARDS, NOW).allowed
    assert not pdp.decide(svc, "write", Resource("payments", "refunds"), NOW).allowed


@pytest.mark.parametrize(("approvals", "allowed"), [(2, True), (3, True), (1, False), (0, False)])
def test_jit_grant_needs_the_zones_approval_count(
    audit: AuditRecorder, approvals: int, allowed: bool
) -> None:
    grant = GrantInfo("g-jit", "dana", "payments", "cards", frozenset({"read"}), source="jit",
                      approvals=approvals, expires_at=NOW + timedelta(hours=2))  # fmt: skip
    decision = pdp_for(ecommerce_directory(extra_grants=(grant,)), audit).decide(
        idn("dana"), "read", CARDS, NOW
    )
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "zone payments requires 2 approvals for the grant"


def test_break_glass_grant_is_used_last_and_flagged(audit: AuditRecorder) -> None:
    bg = GrantInfo("g-bg", "dana", "payments", None, frozenset({"read"}), source="break_glass",
                   expires_at=NOW + timedelta(minutes=30))  # fmt: skip
    jit = GrantInfo("g-jit", "dana", "payments", "cards", frozenset({"read"}), source="jit",
                    approvals=2, expires_at=NOW + timedelta(hours=2))  # fmt: skip
    pdp = pdp_for(ecommerce_directory(extra_grants=(bg, jit)), audit)
    decision = pdp.decide(idn("dana"), "read", CARDS, NOW)
    assert decision.allowed and decision.grant_id == "g-jit" and not decision.break_glass
    decision = pdp.decide(idn("dana"), "read", Resource("payments", "refunds"), NOW)
    assert decision.allowed and decision.grant_id == "g-bg" and decision.break_glass
    assert audit.events[-1].flagged and audit.events[-1].details["grant_id"] == "g-bg"


def test_expiry_is_effective_at_the_second_even_when_cached(audit: AuditRecorder) -> None:
    expires = NOW + timedelta(minutes=10)
    grant = GrantInfo("g-exp", "bi-service", "analytics", "clicks", frozenset({"read"}),
                      expires_at=expires)  # fmt: skip
    base = ecommerce_directory()
    only = Directory(  # without g-bi-read, which would also allow
        levels=base.levels, zones=base.zones.values(), principals=base.principals.values(),
        grants=[grant],
    )  # fmt: skip
    pdp = pdp_for(only, audit, cache_ttl=timedelta(seconds=59))
    bi = idn("bi-service", "api_key", False)
    clicks = Resource("analytics", "clicks")
    assert pdp.decide(bi, "read", clicks, expires - timedelta(seconds=2)).allowed
    assert pdp.decide(bi, "read", clicks, expires - timedelta(seconds=1)).allowed  # cached
    assert audit.events[-1].details.get("cached") == "true"
    late = pdp.decide(bi, "read", clicks, expires)
    assert not late.allowed and "no live grant" in late.reason


@pytest.fixture
def store(tmp_path: Path, directory: Directory, audit: AuditRecorder) -> Iterator[GrantStore]:
    s = GrantStore(tmp_path / "grants.db", directory, audit=audit)
    yield s
    s.close()


def test_revocation_is_effective_at_once_despite_the_cache(
    directory: Directory, audit: AuditRecorder, store: GrantStore
) -> None:
    pdp = pdp_for(directory, audit, store=store, cache_ttl=timedelta(seconds=59))
    bi = idn("bi-service", "api_key", False)
    clicks = Resource("analytics", "clicks")
    assert pdp.decide(bi, "read", clicks, NOW).allowed
    assert pdp.decide(bi, "read", clicks, NOW + timedelta(seconds=1)).allowed  # cached
    store.revoke("g-bi-read", actor="auditor", reason="left the team", now=NOW)
    decision = pdp.decide(bi, "read", clicks, NOW + timedelta(seconds=2))
    assert not decision.allowed and "no live grant" in decision.reason


def test_revocation_by_another_process_is_effective_at_once(
    tmp_path: Path, directory: Directory, audit: AuditRecorder, store: GrantStore
) -> None:
    pdp = pdp_for(directory, audit, store=store, cache_ttl=timedelta(seconds=59))
    bi = idn("bi-service", "api_key", False)
    clicks = Resource("analytics", "clicks")
    assert pdp.decide(bi, "read", clicks, NOW).allowed
    with GrantStore(store.path, directory, audit=audit) as other:  # another connection
        other.revoke("g-bi-read", actor="auditor", reason="incident", now=NOW)
    assert not pdp.decide(bi, "read", clicks, NOW + timedelta(seconds=1)).allowed


def test_cache_ttl_must_stay_below_the_grant_granularity(
    directory: Directory, audit: AuditRecorder
) -> None:
    with pytest.raises(ValueError, match="shorter than the grant granularity"):
        pdp_for(directory, audit, cache_ttl=timedelta(minutes=1))


def test_every_decision_reaches_the_audit_sink(
    pdp: PolicyDecisionPoint, audit: AuditRecorder
) -> None:
    bi = idn("bi-service", "api_key", False)
    for _ in range(3):
        pdp.decide(bi, "read", Resource("analytics", "clicks"), NOW)
    pdp.decide(bi, "write", Resource("analytics", "clicks"), NOW)
    decisions = [e for e in audit.events if e.kind == "access.decision"]
    assert [e.allowed for e in decisions] == [True, True, True, False]
    assert decisions[1].details.get("cached") == "true"
    assert decisions[0].details["policy_version"] == pdp.policy_version


def test_a_failing_audit_sink_turns_allow_into_deny(directory: Directory) -> None:
    def broken(event: AuditEvent) -> None:
        raise OSError("audit zone unreachable")

    pdp = PolicyDecisionPoint(directory, audit=broken)
    decision = pdp.decide(idn("bi-service", "api_key", False), "read", Resource("analytics"), NOW)
    assert not decision.allowed and "audit log is unavailable" in decision.reason


def test_usage_is_recorded_for_the_review(
    directory: Directory, audit: AuditRecorder, store: GrantStore
) -> None:
    with pdp_for(directory, audit, store=store) as pdp:
        pdp.decide(idn("bi-service", "api_key", False), "read", Resource("analytics"), NOW)
    view = next(v for v in store.grants(now=NOW) if v.id == "g-bi-read")
    assert view.last_used == NOW


def test_policy_version_follows_the_zone_rules(audit: AuditRecorder) -> None:
    a = pdp_for(ecommerce_directory(), audit).policy_version
    b = pdp_for(ecommerce_directory(), audit).policy_version
    zones = list(ecommerce_directory().zones.values())
    from dataclasses import replace

    zones[0] = replace(zones[0], mfa_required=True)
    base = ecommerce_directory()
    changed = Directory(
        levels=base.levels, zones=zones, principals=base.principals.values(), grants=base.grants
    )
    assert a == b != pdp_for(changed, audit).policy_version


# -- custom policies -------------------------------------------------------------------------


def test_custom_forbid_applies_and_is_named(tmp_path: Path, directory: Directory) -> None:
    (tmp_path / "ops.cedar").write_text(
        '@id("services-read-only")\n'
        'forbid (principal, action == Trustzones::Action::"write", resource)\n'
        'when { principal.kind == "service" };\n'
    )
    pdp = PolicyDecisionPoint(directory, audit=lambda e: None, policy_dir=tmp_path)
    decision = pdp.decide(idn("payments-svc", "mtls", False), "write", CARDS, NOW)
    assert not decision.allowed
    assert decision.reason == "forbidden by policy custom:ops.cedar#services-read-only"
    assert pdp.decide(idn("payments-svc", "mtls", False), "read", CARDS, NOW).allowed


def test_custom_permit_cannot_bypass_the_invariants(tmp_path: Path, directory: Directory) -> None:
    (tmp_path / "open.cedar").write_text("permit (principal, action, resource);\n")
    pdp = PolicyDecisionPoint(directory, audit=lambda e: None, policy_dir=tmp_path)
    assert not pdp.decide(idn("marketer"), "read", Resource("analytics"), NOW).allowed  # no grant
    assert not pdp.decide(idn("cfo"), "read", CARDS, NOW).allowed  # JIT zone, standing grant


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("permit (principal, action, resource) when { principal.nosuch == 1 };", "nosuch"),
        ("permit (principal, action, resource", "parse error|unexpected"),
        ('permit (principal, action == Trustzones::Action::"delete", resource);', "delete"),
    ],
)
def test_invalid_custom_policy_is_a_load_error_naming_the_file(
    tmp_path: Path, directory: Directory, text: str, message: str
) -> None:
    (tmp_path / "fine.cedar").write_text("forbid (principal, action, resource) when { false };\n")
    (tmp_path / "broken.cedar").write_text(text)
    with pytest.raises(PolicyLoadError, match=rf"broken\.cedar.*({message})"):
        PolicyDecisionPoint(directory, audit=lambda e: None, policy_dir=tmp_path)


def test_policy_templates_are_refused(tmp_path: Path, directory: Directory) -> None:
    (tmp_path / "tpl.cedar").write_text("permit (principal == ?principal, action, resource);\n")
    with pytest.raises(PolicyLoadError, match=r"tpl\.cedar"):
        PolicyDecisionPoint(directory, audit=lambda e: None, policy_dir=tmp_path)


OVERFLOW_FORBID = (
    '@id("overflows")\n'
    "forbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };\n"
)


def test_an_erroring_forbid_denies_where_plain_cedar_would_allow(
    tmp_path: Path, directory: Directory
) -> None:
    (tmp_path / "overflow.cedar").write_text(OVERFLOW_FORBID)
    # Cedar skips a policy whose evaluation errors: for a forbid that means allow
    compiled = load_policies(tmp_path)
    raw = cedarpy.is_authorized(
        {
            "principal": {"type": "Trustzones::Principal", "id": "bi-service"},
            "action": {"type": "Trustzones::Action", "id": "read"},
            "resource": {"type": "Trustzones::Zone", "id": "analytics"},
            "context": {
                "now": int(NOW.timestamp()),
                "auth_method": "api_key",
                "mfa": False,
                "grant": {"__entity": {"type": "Trustzones::Grant", "id": "g-bi-read"}},
            },
        },
        compiled.policy_set,
        build_entities(directory, directory.grants),
    )
    assert raw.allowed and raw.diagnostics.errors
    pdp = PolicyDecisionPoint(directory, audit=lambda e: None, policy_dir=tmp_path)
    decision = pdp.decide(idn("bi-service", "api_key", False), "read", Resource("analytics"), NOW)
    assert not decision.allowed and "failed to evaluate" in decision.reason


# -- the property the issue asks for -------------------------------------------------------------

ZONES_TOPICS = [
    ("analytics", None), ("analytics", "clicks"), ("customers", None), ("customers", "profiles"),
    ("payments", None), ("payments", "cards"), ("payments", "refunds"),
]  # fmt: skip


@pytest.fixture(scope="module")
def open_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("open-policies")
    (path / "allow-all.cedar").write_text("permit (principal, action, resource);\n")
    return path


grant_specs = st.lists(
    st.tuples(
        st.sampled_from(ZONES_TOPICS),
        st.sampled_from([frozenset({"read"}), frozenset({"write"}), frozenset({"read", "write"})]),
        st.sampled_from(["config", "jit", "break_glass"]),
        st.integers(min_value=0, max_value=10),
        st.one_of(st.none(), st.integers(min_value=-7200, max_value=7200)),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=grant_specs,
    principal=st.sampled_from(["marketer", "bi-service"]),
    method=st.sampled_from(["password", "api_key", "mtls", "oidc"]),
    mfa=st.booleans(),
    target=st.sampled_from(
        [Resource("payments"), Resource("payments", "cards"), Resource("payments", "refunds")]
    ),
    offset=st.integers(min_value=-3600, max_value=3600),
)
def test_a_public_principal_never_reads_a_restricted_topic_whatever_its_grants(
    open_policy_dir: Path,
    specs: list[tuple[tuple[str, str | None], frozenset[str], str, int, int | None]],
    principal: str,
    method: str,
    mfa: bool,
    target: Resource,
    offset: int,
) -> None:
    grants = tuple(
        GrantInfo(
            f"h{i}",
            principal,
            zone,
            topic,
            access,  # type: ignore[arg-type]
            expires_at=None if expiry is None else NOW + timedelta(seconds=expiry),
            source=source,  # type: ignore[arg-type]
            approvals=approvals,
        )
        for i, ((zone, topic), access, source, approvals, expiry) in enumerate(specs)
    )
    directory = ecommerce_directory(extra_grants=grants)
    # even with a custom policy that permits everything
    pdp = PolicyDecisionPoint(directory, audit=lambda e: None, policy_dir=open_policy_dir)
    when: datetime = NOW + timedelta(seconds=offset)
    decision = pdp.decide(Identity(principal, method, mfa), "read", target, when)  # type: ignore[arg-type]
    assert not decision.allowed


def test_the_property_is_not_vacuous(open_policy_dir: Path) -> None:
    # the same kind of grant does let a restricted-clearance user read (so the property
    # above fails if no-read-up stops holding)
    grant = GrantInfo("h0", "dana", "payments", None, frozenset({"read"}), source="jit",
                      approvals=2, expires_at=NOW + timedelta(hours=1))  # fmt: skip
    pdp = PolicyDecisionPoint(
        ecommerce_directory(extra_grants=(grant,)), audit=lambda e: None, policy_dir=open_policy_dir
    )
    assert pdp.decide(idn("dana"), "read", CARDS, NOW).allowed
