"""Just-in-time requests and approvals, expiry, revocation, break-glass, access review."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from access_helpers import NOW, AuditRecorder, ecommerce_directory

from trustzones.access import (
    AccessRequestError,
    AuditEvent,
    Directory,
    GrantInfo,
    GrantStore,
    Identity,
    PolicyDecisionPoint,
    Resource,
    parse_duration,
)
from trustzones.errors import AccessDenied

CARDS = Resource("payments", "cards")
READ = frozenset({"read"})


@pytest.fixture
def store(tmp_path: Path, directory: Directory, audit: AuditRecorder) -> Iterator[GrantStore]:
    s = GrantStore(tmp_path / "grants.db", directory, audit=audit)
    yield s
    s.close()


def _payments_request(store: GrantStore, hours: int = 2) -> str:
    req = store.request(
        "dana", CARDS, access=READ, duration=timedelta(hours=hours), reason="INC-42 chargeback",
        now=NOW,
    )  # fmt: skip
    assert req.status == "pending" and req.required_approvals == 2
    return req.id


def test_full_jit_flow_with_two_executive_approvals(
    store: GrantStore, directory: Directory, audit: AuditRecorder
) -> None:
    request_id = _payments_request(store)
    t1 = NOW + timedelta(minutes=5)
    assert store.approve(request_id, approver="cfo", now=t1).status == "pending"
    t2 = NOW + timedelta(minutes=10)
    granted = store.approve(request_id, approver="ceo", now=t2)
    assert granted.status == "granted" and granted.grant_id
    assert [a for a, _ in granted.approvals] == ["cfo", "ceo"]
    view = next(v for v in store.grants(now=t2) if v.id == granted.grant_id)
    assert view.source == "jit" and view.approved_by == ("cfo", "ceo")
    assert view.expires_at == t2 + timedelta(hours=2)  # time starts when the grant is issued
    pdp = PolicyDecisionPoint(directory, audit=audit, store=store)
    dana = Identity("dana", "oidc", mfa=True)
    assert pdp.decide(dana, "read", CARDS, t2).grant_id == granted.grant_id
    # it expires by itself
    assert pdp.decide(dana, "read", CARDS, t2 + timedelta(hours=2) - timedelta(seconds=1)).allowed
    assert not pdp.decide(dana, "read", CARDS, t2 + timedelta(hours=2)).allowed
    assert {"access.request", "access.approve", "access.grant"} <= set(audit.kinds())


def test_self_approval_is_refused(store: GrantStore) -> None:
    request_id = store.request(
        "cfo", CARDS, access=READ, duration=timedelta(hours=1), reason="month end", now=NOW
    ).id
    with pytest.raises(AccessDenied, match="cannot approve their own request"):
        store.approve(request_id, approver="cfo", now=NOW)


def test_approver_needs_the_zones_role(store: GrantStore) -> None:
    request_id = _payments_request(store)
    with pytest.raises(AccessDenied, match="role 'executive'"):
        store.approve(request_id, approver="auditor", now=NOW)


def test_approver_must_hold_the_zone(store: GrantStore) -> None:
    request_id = _payments_request(store)
    with pytest.raises(AccessDenied, match="must hold the zone"):
        store.approve(request_id, approver="cto", now=NOW)  # executive, but no grant there


def test_an_approver_counts_once(store: GrantStore) -> None:
    request_id = _payments_request(store)
    store.approve(request_id, approver="cfo", now=NOW)
    with pytest.raises(AccessRequestError, match="already approved"):
        store.approve(request_id, approver="cfo", now=NOW)


def test_approver_whose_grant_was_revoked_no_longer_holds_the_zone(store: GrantStore) -> None:
    request_id = _payments_request(store)
    store.revoke("g-cfo-pay", actor="auditor", reason="role change", now=NOW)
    with pytest.raises(AccessDenied, match="must hold the zone"):
        store.approve(request_id, approver="cfo", now=NOW)


def test_reading_up_cannot_even_be_requested(store: GrantStore) -> None:
    with pytest.raises(AccessDenied, match="no read up"):
        store.request(
            "marketer", CARDS, access=READ, duration=timedelta(hours=1), reason="curious", now=NOW
        )


def test_writing_up_can_be_requested_and_granted(
    store: GrantStore, directory: Directory, audit: AuditRecorder
) -> None:
    profiles = Resource("customers", "profiles")
    req = store.request(
        "marketer", profiles, access=frozenset({"write"}), duration=timedelta(hours=1),
        reason="import consent flags", now=NOW,
    )  # fmt: skip
    granted = store.approve(req.id, approver="manager", now=NOW)
    assert granted.status == "granted"
    pdp = PolicyDecisionPoint(directory, audit=audit, store=store)
    marketer = Identity("marketer", "oidc", mfa=True)
    assert pdp.decide(marketer, "write", profiles, NOW).allowed
    assert not pdp.decide(marketer, "read", profiles, NOW).allowed


def test_zone_without_approvals_grants_at_once(store: GrantStore) -> None:
    req = store.request(
        "marketer", Resource("analytics", "clicks"), access=READ, duration=timedelta(minutes=90),
        reason="campaign report", now=NOW,
    )  # fmt: skip
    assert req.status == "granted" and req.required_approvals == 0 and req.grant_id


@pytest.mark.parametrize(
    ("duration", "message"),
    [
        (timedelta(0), "at least 1 minute"),
        (timedelta(seconds=90), "whole minutes"),
        (timedelta(hours=9), "at most 8:00:00"),
    ],
)
def test_bad_durations_are_refused(store: GrantStore, duration: timedelta, message: str) -> None:
    with pytest.raises(AccessRequestError, match=message):
        store.request("dana", CARDS, access=READ, duration=duration, reason="r", now=NOW)


def test_reason_is_required(store: GrantStore) -> None:
    with pytest.raises(AccessRequestError, match="needs a reason"):
        store.request("dana", CARDS, access=READ, duration=timedelta(hours=1), reason=" ", now=NOW)


@pytest.mark.parametrize(
    ("text", "minutes"), [("2h", 120), ("90m", 90), ("1h30m", 90), ("1d", 1440)]
)
def test_parse_duration(text: str, minutes: int) -> None:
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "2", "2x", "h", "1.5h", "-1h"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(AccessRequestError, match="invalid duration"):
        parse_duration(text)


def test_deny_and_withdraw(store: GrantStore) -> None:
    first = _payments_request(store)
    denied = store.deny(first, actor="ceo", reason="use the report instead", now=NOW)
    assert denied.status == "denied" and denied.decided_by == "ceo"
    with pytest.raises(AccessRequestError, match="is denied, not pending"):
        store.approve(first, approver="cfo", now=NOW)
    second = _payments_request(store)
    assert store.deny(second, actor="dana", now=NOW).status == "withdrawn"
    third = _payments_request(store)
    with pytest.raises(AccessDenied):
        store.deny(third, actor="marketer", now=NOW)


def test_stale_pending_request_expires(store: GrantStore) -> None:
    request_id = _payments_request(store)
    with pytest.raises(AccessRequestError, match="is expired"):
        store.approve(request_id, approver="cfo", now=NOW + timedelta(hours=25))


def test_unknown_request_id(store: GrantStore) -> None:
    with pytest.raises(AccessRequestError, match="no request 'req-nope'"):
        store.approve("req-nope", approver="cfo", now=NOW)


def test_revocation_rules(store: GrantStore, audit: AuditRecorder) -> None:
    with pytest.raises(AccessDenied, match="cannot revoke"):
        store.revoke("g-bi-read", actor="marketer", reason="dislike", now=NOW)
    with pytest.raises(AccessRequestError, match="needs a reason"):
        store.revoke("g-bi-read", actor="auditor", reason="", now=NOW)
    store.revoke("g-bi-read", actor="auditor", reason="unused", now=NOW)
    with pytest.raises(AccessRequestError, match="already revoked"):
        store.revoke("g-bi-read", actor="auditor", reason="again", now=NOW)
    with pytest.raises(AccessRequestError, match="no grant"):
        store.revoke("g-missing", actor="auditor", reason="x", now=NOW)
    event = audit.events[-1]
    assert event.kind == "access.revoke" and event.details["grantee"] == "bi-service"
    view = next(v for v in store.grants(now=NOW, include_inactive=True) if v.id == "g-bi-read")
    assert view.status == "revoked" and view.revoked_by == "auditor"


def test_break_glass_is_immediate_short_and_flagged(
    store: GrantStore, directory: Directory, audit: AuditRecorder
) -> None:
    grant = store.break_glass(
        "dana", Resource("payments"), access=READ, reason="fraud spike, SEV1", now=NOW
    )
    assert grant.source == "break_glass" and grant.expires_at == NOW + timedelta(minutes=30)
    event = audit.events[-1]
    assert event.kind == "access.break_glass" and event.flagged
    pdp = PolicyDecisionPoint(directory, audit=audit, store=store)
    decision = pdp.decide(Identity("dana", "mtls", mfa=True), "read", CARDS, NOW)
    assert decision.allowed and decision.break_glass and audit.events[-1].flagged
    late = NOW + timedelta(minutes=30)
    assert not pdp.decide(Identity("dana", "mtls", mfa=True), "read", CARDS, late).allowed
    pdp.flush_usage()
    row = next(v for v in store.review("payments", actor="auditor", now=NOW) if v.id == grant.id)
    assert row.break_glass and row.reason == "fraud spike, SEV1" and row.last_used == NOW


@pytest.mark.parametrize(
    ("principal", "resource", "reason", "error", "message"),
    [
        ("dana", Resource("payments"), "", AccessRequestError, "needs a reason"),
        ("cfo", Resource("payments"), "urgent", AccessDenied, "only to roles: oncall"),
        ("payments-svc", Resource("payments"), "urgent", AccessDenied, "named users"),
        ("marketer", Resource("customers"), "urgent", AccessDenied, "no read up"),
    ],
)
def test_break_glass_refusals(
    store: GrantStore,
    principal: str,
    resource: Resource,
    reason: str,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        store.break_glass(principal, resource, access=READ, reason=reason, now=NOW)


def test_access_review_lists_approvers_usage_and_staleness(
    store: GrantStore, directory: Directory, audit: AuditRecorder
) -> None:
    request_id = _payments_request(store)
    store.approve(request_id, approver="cfo", now=NOW)
    grant_id = store.approve(request_id, approver="ceo", now=NOW).grant_id
    svc = Identity("payments-svc", "mtls", mfa=False)
    with PolicyDecisionPoint(directory, audit=audit, store=store) as pdp:
        pdp.decide(svc, "write", CARDS, NOW - timedelta(days=40))
    with PolicyDecisionPoint(directory, audit=audit, store=store) as pdp:
        pdp.decide(Identity("dana", "oidc", mfa=True), "read", CARDS, NOW + timedelta(minutes=1))
    rows = {v.id: v for v in store.review("payments", actor="cfo", now=NOW + timedelta(hours=1))}
    assert set(rows) == {"g-cfo-pay", "g-ceo-pay", "g-svc-cards", grant_id}
    assert rows[grant_id].approved_by == ("cfo", "ceo") and not rows[grant_id].stale
    assert rows[grant_id].last_used == NOW + timedelta(minutes=1)
    assert rows["g-svc-cards"].approved_by == ("config",)
    assert rows["g-svc-cards"].stale  # last used 40 days ago, zone threshold 30 days
    assert rows["g-cfo-pay"].stale and rows["g-cfo-pay"].last_used is None  # never used
    later = {v.id: v for v in store.review("payments", actor="cfo", now=NOW + timedelta(hours=3))}
    assert later[grant_id].status == "expired" and not later[grant_id].stale


def test_review_is_for_admins_and_approvers(store: GrantStore) -> None:
    with pytest.raises(AccessDenied, match="cannot review zone payments"):
        store.review("payments", actor="dana", now=NOW)
    assert store.review("payments", actor="auditor", now=NOW)


def test_requests_and_grants_survive_reopening(
    tmp_path: Path, directory: Directory, audit: AuditRecorder
) -> None:
    path = tmp_path / "durable.db"
    with GrantStore(path, directory, audit=audit) as s:
        request_id = _payments_request(s)
        s.approve(request_id, approver="cfo", now=NOW)
    with GrantStore(path, directory, audit=audit) as s:
        req = s.get_request(request_id, now=NOW)
        assert req.status == "pending" and [a for a, _ in req.approvals] == ["cfo"]
        assert s.approve(request_id, approver="ceo", now=NOW).status == "granted"
    with GrantStore(path, directory, audit=audit) as s:
        issued, _ = s.active_grants(now=NOW)
        assert [g.principal for g in issued] == ["dana"]


def test_a_change_that_cannot_be_audited_is_rolled_back(
    tmp_path: Path, directory: Directory
) -> None:
    def broken(event: AuditEvent) -> None:
        raise OSError("audit zone unreachable")

    with GrantStore(tmp_path / "g.db", directory, audit=broken) as s:
        with pytest.raises(OSError, match="unreachable"):
            s.break_glass("dana", Resource("payments"), access=READ, reason="SEV1", now=NOW)
        assert s.active_grants(now=NOW) == ([], frozenset())


def test_standing_grant_in_directory_must_name_known_things() -> None:
    from trustzones.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown principal ghost"):
        ecommerce_directory(extra_grants=(GrantInfo("g-x", "ghost", "analytics", None, READ),))
