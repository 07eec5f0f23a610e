"""Zone runtime: deny by default, no read up, schema at ingress, lineage headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from trustzones.errors import AccessDenied, AuthenticationFailed, RecordRejected
from trustzones.zone import Workspace
from workspace_helpers import grant_jit

CLICK = {"event_id": "e1", "timestamp": "2026-11-28T10:00:00Z", "session_id": "s", "page": "/"}
PAYMENT = {
    "transaction_id": "t1",
    "timestamp": "2026-11-28T10:00:00Z",
    "amount": 12.5,
    "currency": "EUR",
    "card": {"number": "4111111111111111", "cvv": "123"},
    "customer": {"id": "c1", "email": "a@example.com"},
}


@pytest.fixture
def ws(workspace_dir: Path) -> Workspace:
    w = Workspace.open()
    yield w
    w.close()


def test_write_needs_a_grant(ws: Workspace) -> None:
    with pytest.raises(AccessDenied, match="no live grant for write on analytics/"):
        ws.produce("analytics.clickstream", [orjson.dumps(CLICK)], principal="marketing-analyst")
    assert ws.backend("analytics").end_offsets("analytics.clickstream") == {0: 0, 1: 0, 2: 0}


def test_unknown_principal_and_topic_are_denied(ws: Workspace) -> None:
    with pytest.raises(AuthenticationFailed, match="no credentials for 'mallory'"):
        ws.consumer("analytics.clickstream", principal="mallory")
    with pytest.raises(AccessDenied, match="no such topic"):
        ws.consumer("analytics.nope", principal="marketing-analyst")


def test_no_read_up_even_with_a_grant(workspace_dir: Path) -> None:
    # Bypass the loader's clearance check by building the authorizer's view by hand: even
    # a standing grant cannot lift a public principal into the restricted zone.
    from trustzones.config import Config
    from trustzones.zone import GrantAuthorizer

    c = Config.from_yaml(workspace_dir / "trustzones.yaml")
    grants = (
        *c.file.grants,
        c.file.grants[0].model_copy(
            update={
                "principal": "marketing-analyst",
                "topic": "payments.transactions",
                "access": ("read",),
            }
        ),
    )
    forged = c.__class__(
        file=c.file.model_copy(update={"grants": grants}), path=c.path, schemas=c.schemas
    )
    d = GrantAuthorizer(forged).decide(
        "marketing-analyst", "read", "payments.transactions", now=datetime.now(UTC)
    )
    assert not d.allowed and "no read up" in d.reason


def test_marketing_analyst_refused_payments(ws: Workspace) -> None:
    with pytest.raises(AccessDenied, match=r"no read up: clearance public is below zone payments"):
        ws.consumer("payments.transactions", principal="marketing-analyst")


def test_produce_and_consume_with_lineage(ws: Workspace) -> None:
    res = ws.produce(
        "payments.transactions", [orjson.dumps(PAYMENT)], principal="payments-service", keys=[b"c1"]
    )
    assert len(res.accepted) == 1 and not res.rejected
    with pytest.raises(AccessDenied, match="requires just-in-time access"):
        ws.consumer("payments.transactions", principal="security-officer")
    grant_jit(ws, "security-officer")
    recs = list(
        ws.consumer("payments.transactions", principal="security-officer", start="earliest")
    )
    assert len(recs) == 1
    assert orjson.loads(recs[0].value) == PAYMENT
    assert recs[0].header("tz.producer") == b"payments-service"
    assert (
        recs[0].header("tz.schema") == ws.validator("payments.transactions").schema_version.encode()
    )
    assert recs[0].header("tz.produced_at") is not None


def test_invalid_record_refused_with_path_and_nothing_written(ws: Workspace) -> None:
    bad = dict(PAYMENT, customer={"id": "c1", "age": "thirty"})
    res = ws.produce(
        "payments.transactions", [orjson.dumps(bad), b"{not json"], principal="payments-service"
    )
    assert res.accepted == []
    assert [(r.index, r.path) for r in res.rejected] == [(0, "customer.age"), (1, "")]
    assert "must be of type 'integer'" in res.rejected[0].reason
    assert "not valid JSON" in res.rejected[1].reason
    assert sum(ws.backend("payments").end_offsets("payments.transactions").values()) == 0


def test_rejection_never_echoes_the_value(ws: Workspace) -> None:
    bad = dict(PAYMENT, currency="4111111111111111")
    res = ws.produce("payments.transactions", [orjson.dumps(bad)], principal="payments-service")
    (rej,) = res.rejected
    assert rej.path == "currency"
    assert "4111" not in str(rej)


def test_expired_grant_denies(workspace_dir: Path) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    text = (
        (workspace_dir / "trustzones.yaml")
        .read_text()
        .replace(
            "{principal: marketing-analyst, zone: analytics, access: [read]}",
            "{principal: marketing-analyst, zone: analytics, access: [read], "
            f"expires: '{expires.isoformat()}'}}",
        )
    )
    (workspace_dir / "trustzones.yaml").write_text(text)
    with Workspace.open() as w:
        w.consumer("analytics.clickstream", principal="marketing-analyst")
    later = expires + timedelta(seconds=1)
    with (
        Workspace.open(clock=lambda: later) as w,
        pytest.raises(AccessDenied, match="no live grant for read"),
    ):
        w.consumer("analytics.clickstream", principal="marketing-analyst")


def test_rate_limit_refuses_the_batch(ws: Workspace) -> None:
    many = [orjson.dumps(dict(PAYMENT, transaction_id=str(i))) for i in range(10_001)]
    with pytest.raises(RecordRejected, match="rate limit of zone 'payments' exceeded"):
        ws.produce("payments.transactions", many, principal="payments-service")


def test_raw_zone_files_hold_no_card_number(ws: Workspace) -> None:
    """Encryption at rest: the payments zone's files never contain a produced card number."""
    from trustzones.flows import open_flow

    card = "5555 5555 5555 4444"
    doc = dict(PAYMENT, card={"number": card, "cvv": "987"}, note=f"card {card} on file")
    ws.produce("payments.transactions", [orjson.dumps(doc)], principal="payments-service")
    flow = open_flow(ws, "payments-to-analytics")
    flow.decide(orjson.dumps(doc))  # tokenises the number: the vault stores it too
    ws.close()
    raw = b"".join(p.read_bytes() for p in ws.config.data_dir("payments").rglob("*") if p.is_file())
    assert raw, "the payments zone wrote no files"
    for needle in (card, card.replace(" ", ""), "a@example.com"):
        assert needle.encode() not in raw, f"{needle!r} found in clear in the payments zone"
