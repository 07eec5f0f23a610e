"""The flow runtime: sanitise, enforce, scan, quarantine, lineage, approvals, watermark."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from flow_helpers import all_records, approve, payment

from trustzones.errors import AccessDenied, ApprovalRequired, FlowError
from trustzones.flows import (
    FlowBlocked,
    identify_leak,
    open_approvals,
    open_flow,
    open_quarantine,
    require_approved,
)
from trustzones.zone import Workspace
from workspace_helpers import grant_jit

FLOW = "payments-to-analytics"


def produce(ws: Workspace, values: list[bytes]) -> None:
    res = ws.produce("payments.transactions", values, principal="payments-service")
    assert not res.rejected, res.rejected


def test_unapproved_flow_refuses_to_start_and_says_who_must_approve(ws: Workspace) -> None:
    runner = open_flow(ws, FLOW)
    with pytest.raises(
        ApprovalRequired,
        match=r"1 more approval\(s\) from principals with role "
        r"'security' holding zone 'payments' \(not 'flow-payments-to-analytics'\)",
    ):
        require_approved(ws, runner)


def test_self_approval_and_unqualified_approvers_are_refused(ws: Workspace) -> None:
    store = open_approvals(ws)
    req = store.request(
        "flow",
        FLOW,
        ws.config.flow_hash(FLOW),
        zone="payments",
        requester="security-officer",
        required=1,
        approver_role="security",
    )
    with pytest.raises(AccessDenied, match="self-approval is refused"):
        store.approve(req.id, approver="security-officer")
    with pytest.raises(AccessDenied, match="lacks the role 'security'"):
        store.approve(req.id, approver="marketing-analyst")
    assert store.get(req.id).status == "pending"


def test_approver_without_zone_rights_refused_even_with_role(workspace_dir: Path) -> None:
    p = workspace_dir / "trustzones.yaml"
    p.write_text(p.read_text().replace("roles: [engineer]", "roles: [engineer, security]"))
    with Workspace.open() as w:
        store = open_approvals(w)
        req = store.request(
            "flow", FLOW, "h", zone="payments", requester="x", required=1, approver_role="security"
        )
        with pytest.raises(AccessDenied, match="does not hold zone 'payments'"):
            store.approve(req.id, approver="payments-engineer")


def test_changed_definition_needs_a_new_approval(workspace_dir: Path) -> None:
    with Workspace.open() as w:
        approve(w)
    p = workspace_dir / "trustzones.yaml"
    p.write_text(
        p.read_text().replace(
            "customer.phone: {type: mask, keep_last: 2}",
            "customer.phone: {type: mask, keep_last: 3}",
        )
    )
    with Workspace.open() as w, pytest.raises(ApprovalRequired, match="new or changed"):
        require_approved(w, open_flow(w, FLOW))


def test_sanitises_and_adds_lineage(ws: Workspace) -> None:
    approve(ws)
    produce(ws, [payment(1)])
    stats = open_flow(ws, FLOW).run(once=True)
    assert (stats.read, stats.delivered, stats.quarantined) == (1, 1, 0)
    (out,) = all_records(ws, "analytics.transactions")
    doc = orjson.loads(out.value)
    assert "cvv" not in doc["card"] and "expiry" not in doc["card"]
    assert "name" not in doc["customer"]
    assert doc["card"]["number"].endswith("1111") and doc["card"]["number"] != "4111 1111 1111 1111"
    assert len(doc["customer"]["email"]) == 16 and "@" not in doc["customer"]["email"]
    assert doc["customer"]["age"] == "30-39"
    assert doc["customer"]["zip"] == "941**"
    headers = dict(out.headers)
    assert headers["tz.source.zone"] == b"payments"
    assert headers["tz.source.topic"] == b"payments.transactions"
    assert headers["tz.flow"] == FLOW.encode()
    assert headers["tz.policy"] == ws.config.policy_version.encode()
    assert {"tz.source.partition", "tz.source.offset"} <= set(headers)
    raw = b"".join(p.read_bytes() for p in ws.config.data_dir("analytics").iterdir() if p.is_file())
    assert b"Ada@Example.com" not in raw and b"4111 1111 1111 1111" not in raw


def test_card_hidden_in_free_text_is_quarantined_in_source_zone(ws: Workspace) -> None:
    approve(ws)
    produce(ws, [payment(1), payment(2, note="please keep card 4111-1111-1111-1111 on file")])
    stats = open_flow(ws, FLOW).run(once=True)
    assert (stats.delivered, stats.quarantined) == (1, 1)
    out = [
        orjson.loads(r.value)["transaction_id"] for r in all_records(ws, "analytics.transactions")
    ]
    assert out == ["tx-1"]
    grant_jit(ws, "security-officer")
    q = open_quarantine(ws, FLOW)
    (held,) = q.list(principal="security-officer")
    assert held.reason == "DLP found CREDIT_CARD in the output"
    assert held.findings == [{"type": "CREDIT_CARD", "path": "note"}]
    assert held.policy == ws.config.policy_version
    assert "4111" not in orjson.dumps(held.to_dict()).decode()
    # The quarantine lives in the source zone only.
    assert "tz.quarantine.payments-to-analytics" in ws.backend("payments").list_topics()
    assert "tz.quarantine.payments-to-analytics" not in ws.backend("analytics").list_topics()


def test_a_transform_that_fails_to_sanitise_is_caught_at_run_time(workspace_dir: Path) -> None:
    # A redact_text limited to e-mail addresses leaves the card number readable: config
    # accepts it (it is a transform), the run-time DLP scan of the output does not.
    p = workspace_dir / "trustzones.yaml"
    p.write_text(
        p.read_text().replace(
            "card.number: {type: tokenize, format: preserve, keep_last: 4, domain: card}",
            "card.number: {type: redact_text, types: [EMAIL_ADDRESS]}",
        )
    )
    with Workspace.open() as w:
        approve(w)
        produce(w, [payment(1)])
        stats = open_flow(w, FLOW).run(once=True)
        assert (stats.delivered, stats.quarantined) == (0, 1)
        assert all_records(w, "analytics.transactions") == []
        grant_jit(w, "security-officer")
        (held,) = open_quarantine(w, FLOW).list(principal="security-officer")
        assert held.findings == [{"type": "CREDIT_CARD", "path": "card.number"}]


def test_untransformed_field_above_destination_is_refused_at_run_time(ws: Workspace) -> None:
    runner = open_flow(ws, FLOW)
    # Simulate a flow definition that lost a transform after loading.
    from trustzones.dlp.transforms import TransformPlan

    kept = {k: v for k, v in runner.spec.transforms.items() if k != "customer.name"}
    runner._plan = TransformPlan.compile(kept)
    runner._transformed = tuple(kept)
    out = runner.decide(payment(1))
    assert out.kind == "quarantine"
    assert out.reason == (
        "field customer.name (restricted) would be written down untransformed into 'analytics'"
    )


def test_an_object_emptied_by_the_transforms_is_refused_like_any_leaf(ws: Workspace) -> None:
    """The destination schema is closed, so the runner lets it decide instead of walking
    every leaf; an object left empty (a leaf the schema allows but the classification check
    refuses) is still caught, with the walk's own reason."""
    runner = open_flow(ws, FLOW)
    assert runner._closed_ok  # the shortcut is in use for the example flow
    out = runner.decide(payment(1, card={"cvv": "123", "expiry": "12/29"}))
    assert (out.kind, out.reason) == (
        "quarantine",
        "field card (restricted) would be written down untransformed into 'analytics'",
    )
    assert runner.decide(payment(1, card={"brand": "visa"})).kind == "deliver"
    runner._closed_ok = False  # the walk alone decides the same
    out2 = runner.decide(payment(1, card={"cvv": "123", "expiry": "12/29"}))
    assert (out2.kind, out2.reason) == (out.kind, out.reason)


def test_unparseable_source_record_is_quarantined(ws: Workspace) -> None:
    out = open_flow(ws, FLOW).decide(b"{broken")
    assert (out.kind, out.reason) == ("quarantine", "source record is not valid JSON")


def test_redact_action_passes_redacted_record(workspace_dir: Path) -> None:
    p = workspace_dir / "trustzones.yaml"
    p.write_text(p.read_text().replace("      action: quarantine", "      action: redact"))
    with Workspace.open() as w:
        approve(w)
        produce(w, [payment(1, note="my SSN is 123-45-6789 thanks")])
        stats = open_flow(w, FLOW).run(once=True)
        assert (stats.delivered, stats.redacted, stats.quarantined) == (1, 1, 0)
        (r,) = all_records(w, "analytics.transactions")
        assert orjson.loads(r.value)["note"] == "my SSN is [US_SSN] thanks"


def test_block_action_stops_the_flow_and_holds_the_record(workspace_dir: Path) -> None:
    p = workspace_dir / "trustzones.yaml"
    p.write_text(p.read_text().replace("      action: quarantine", "      action: block"))
    with Workspace.open() as w:
        approve(w)
        produce(w, [payment(1, note="card 4111111111111111")])
        with pytest.raises(FlowBlocked, match="blocked: DLP found sensitive data"):
            open_flow(w, FLOW).run(once=True)
        grant_jit(w, "security-officer")
        assert len(open_quarantine(w, FLOW).list(principal="security-officer")) == 1
        assert all_records(w, "analytics.transactions") == []


def test_quarantine_show_needs_source_rights_and_release_needs_approval(ws: Workspace) -> None:
    approve(ws)
    produce(ws, [payment(1, note="call me, card 4111111111111111")])
    open_flow(ws, FLOW).run(once=True)
    grant_jit(ws, "security-officer")
    q = open_quarantine(ws, FLOW)
    with pytest.raises(AccessDenied, match="zone 'payments'"):
        q.show(0, principal="marketing-analyst")
    held, value = q.show(0, principal="security-officer")
    assert held.status == "held"
    assert orjson.loads(value)["transaction_id"] == "tx-1"
    with pytest.raises(ApprovalRequired, match=r"releasing record 0 .* needs approval"):
        q.release(0, principal="security-officer", reason="false positive")
    store = open_approvals(ws)
    (req,) = [r for r in store.list() if r.kind == "release"]
    with pytest.raises(AccessDenied, match="self-approval"):
        store.approve(req.id, approver="security-officer")
    store.close()


def test_release_after_approval_delivers_exactly_once(workspace_dir: Path) -> None:
    p = workspace_dir / "trustzones.yaml"
    p.write_text(
        p.read_text()
        .replace(
            "  - {name: security-officer,",
            "  - {name: security-lead, kind: user, clearance: restricted, auth_methods: [password],"
            " roles: [security]}\n  - {name: security-officer,",
        )
        .replace(
            "grants:\n", "grants:\n  - {principal: security-lead, zone: payments, access: [read]}\n"
        )
    )
    with Workspace.open() as w:
        approve(w)
        produce(w, [payment(1, note="4111111111111111")])
        open_flow(w, FLOW).run(once=True)
        grant_jit(w, "security-officer")
        q = open_quarantine(w, FLOW)
        with pytest.raises(ApprovalRequired):
            q.release(0, principal="security-officer")
        store = open_approvals(w)
        (req,) = [r for r in store.list() if r.kind == "release"]
        store.approve(req.id, approver="security-lead")
        held = q.release(0, principal="security-officer")
        assert held.status == "released"
        with pytest.raises(FlowError, match="already released"):
            q.release(0, principal="security-officer")
        (r,) = all_records(w, "analytics.transactions")
        assert dict(r.headers)["tz.released_by"] == b"security-officer"
        assert dict(r.headers)["tz.approval"] == req.id.encode()
        assert q.list(principal="security-officer") == []


def test_discard_needs_a_reason(ws: Workspace) -> None:
    approve(ws)
    produce(ws, [payment(1, note="4111111111111111")])
    open_flow(ws, FLOW).run(once=True)
    grant_jit(ws, "security-officer")
    q = open_quarantine(ws, FLOW)
    with pytest.raises(FlowError, match="needs a reason"):
        q.discard(0, principal="security-officer", reason=" ")
    assert q.discard(0, principal="security-officer", reason="real card").status == "discarded"
    assert [h.status for h in q.list(principal="security-officer", include_decided=True)] == [
        "discarded"
    ]


def test_watermark_identifies_source_from_100_records(ws: Workspace) -> None:
    approve(ws)
    produce(
        ws,
        [
            payment(i, customer={"id": f"c-{i}", "email": f"user{i}@example.com"})
            for i in range(150)
        ],
    )
    open_flow(ws, FLOW).run(once=True)
    leaked = [orjson.loads(r.value) for r in all_records(ws, "analytics.transactions")][:100]
    (best,) = identify_leak(ws, leaked)
    assert best.label == "payments-to-analytics → analytics.transactions"
    assert best.identified and best.matched == 100
    # Hashes made without the watermark key are not attributed.
    import hashlib

    fake = [
        {"customer": {"email": hashlib.sha256(str(i).encode()).hexdigest()[:16]}}
        for i in range(100)
    ]
    (other,) = identify_leak(ws, fake)
    assert not other.identified and other.matched <= 2


def test_flow_needs_its_source_read_right(workspace_dir: Path) -> None:
    p = workspace_dir / "trustzones.yaml"
    p.write_text(
        p.read_text().replace(
            "{name: flow-payments-to-analytics, kind: service, clearance: restricted,",
            "{name: flow-payments-to-analytics, kind: service, clearance: restricted,",
        )
    )
    with Workspace.open() as w:
        runner = open_flow(w, FLOW)
        runner.spec = runner.spec.model_copy(update={"principal": "marketing-analyst"})
        with pytest.raises(AccessDenied, match=r"may not read 'payments\.transactions'"):
            runner.prepare()


def test_a_deny_ends_the_request_and_a_new_one_can_be_opened(ws: Workspace) -> None:
    store = open_approvals(ws)
    h = ws.config.flow_hash(FLOW)
    req = store.request(
        "flow",
        FLOW,
        h,
        zone="payments",
        requester="payments-engineer",
        required=1,
        approver_role="security",
    )
    assert store.deny(req.id, approver="security-officer").status == "denied"
    with pytest.raises(FlowError, match="already denied"):
        store.approve(req.id, approver="security-officer")
    assert not store.is_approved("flow", FLOW, h)
    again = store.request(
        "flow",
        FLOW,
        h,
        zone="payments",
        requester="payments-engineer",
        required=1,
        approver_role="security",
    )
    assert again.id != req.id and again.status == "pending"
    assert store.approve(again.id, approver="security-officer").status == "approved"
    assert store.is_approved("flow", FLOW, h)


def test_output_that_breaks_the_destination_schema_is_quarantined(workspace_dir: Path) -> None:
    # Without a width, `generalize: age` keeps ages up to 89 as integers; the destination
    # schema wants a string band, so the record must not pass.
    p = workspace_dir / "trustzones.yaml"
    p.write_text(
        p.read_text().replace(
            "customer.age: {type: generalize, method: age, width: 10}",
            "customer.age: {type: generalize, method: age}",
        )
    )
    with Workspace.open() as w:
        out = open_flow(w, FLOW).decide(payment(1))
    assert out.kind == "quarantine"
    assert out.reason == (
        "output breaks the destination schema at customer.age: does not "
        "match the schema of 'analytics.transactions': must be of type "
        "'string'"
    )
