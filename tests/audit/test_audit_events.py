"""Audit events: CloudEvents shape, canonical JSON (RFC 8785) and the no-sensitive-values guard."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.audit import AuditEvent, AuditEventRejected, canonical_json, content_hash
from trustzones.audit import events as ev
from trustzones.audit.events import event_from_json, new_event

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_access_decision_shape() -> None:
    e = ev.access_decision(
        principal="alice@example.com",
        action="read",
        resource="topic/payments",
        zone="restricted",
        decision="deny",
        reason="clearance confidential is below restricted",
        policy_version="7",
        grant_id="g-42",
        at=T,
    )
    doc = json.loads(canonical_json(e))
    assert doc == {
        "specversion": "1.0",
        "id": e.id,
        "source": "/trustzones/access",
        "type": "io.trustzones.access.decision",
        "subject": "zone/restricted/topic/payments",
        "time": "2026-03-01T12:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "principal": "alice@example.com",
            "action": "read",
            "resource": "topic/payments",
            "zone": "restricted",
            "decision": "deny",
            "reason": "clearance confidential is below restricted",
            "policy_version": "7",
            "grant_id": "g-42",
        },
    }
    assert uuid.UUID(e.id).version == 7
    assert e.at == T


def test_every_constructor_builds_a_valid_event() -> None:
    built = [
        ev.session(principal="a", zone="z", resource="topic/t", action="open", decision="allow",
                   session_id="s-1", auth_method="scram-sha-512", at=T),
        ev.record_access(direction="produce", principal="a", zone="z", topic="t", partition=0,
                         offset=7, content=b"payload", at=T),
        ev.aggregate(principal="a", zone="z", topic="t", action="consume", allowed=10, denied=2,
                     window_start=T, window_end=T + timedelta(minutes=1), at=T),
        ev.flow_transfer(flow="pci-to-internal", principal="svc-flow", source_zone="restricted",
                         source_topic="payments", source_partition=1, source_offset=9,
                         destination_zone="internal", destination_topic="payments-masked",
                         outcome="allow", content=b"x", destination_offset=3, at=T),
        ev.quarantine(principal="svc-flow", zone="restricted", topic="payments",
                      quarantine_topic="payments.quarantine", partition=0, offset=5,
                      reason="dlp: card number in free text", content=b"x", flow="f", at=T),
        ev.quarantine_release(principal="bob", zone="restricted",
                              quarantine_topic="payments.quarantine", partition=0, offset=5,
                              approval_id="ap-1", destination_topic="payments-masked", at=T),
        ev.approval(approver="carol", request_id="req-9", action="quarantine.release",
                    resource="topic/payments.quarantine", zone="restricted", decision="allow",
                    requester="bob", at=T),
        ev.grant_change(actor="carol", grant_id="g-1", grantee="bob", change="create",
                        resource="topic/payments", zone="restricted",
                        expires_at=T + timedelta(hours=1), at=T),
        ev.config_change(actor="carol", config_hash=content_hash(b"yaml"), policy_version="8",
                         previous_config_hash=content_hash(b"old"), at=T),
        ev.key_operation(principal="svc-zone", zone="restricted", key_id="kek-restricted-3",
                         operation="rotate", decision="allow", at=T),
    ]  # fmt: skip
    types = {e.type for e in built}
    assert len(types) == len(built)
    for e in built:
        assert e.type.startswith("io.trustzones.")
        assert event_from_json(canonical_json(e)) == e
    produce = built[1]
    assert produce.data.extra == {
        "topic": "t",
        "partition": 0,
        "offset": 7,
        "content_hash": content_hash(b"payload"),
    }
    assert b"payload" not in canonical_json(produce)


def test_content_hash() -> None:
    assert content_hash(b"abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_times_are_normalised_to_fixed_width_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    e = new_event(
        "io.trustzones.test.x", source="/t", principal="a", action="b", resource="c",
        zone="d", decision="allow", at=datetime(2026, 3, 1, 14, 0, tzinfo=plus2),
    )  # fmt: skip
    assert e.time == "2026-03-01T12:00:00.000000Z"
    parsed = AuditEvent.model_validate_json(
        canonical_json(e).replace(b"12:00:00.000000Z", b"14:00:00+02:00")
    )
    assert parsed.time == e.time
    now = new_event(
        "io.trustzones.test.x", source="/t", principal="a", action="b", resource="c",
        zone="d", decision="allow",
    )  # fmt: skip
    assert abs(now.at - datetime.now(UTC)) < timedelta(seconds=5)
    with pytest.raises(AuditEventRejected, match=r"timezone-aware"):
        new_event("io.trustzones.test.x", source="/t", principal="a", action="b", resource="c",
                  zone="d", decision="allow", at=datetime(2026, 3, 1))  # fmt: skip


# -- canonical JSON is RFC 8785 ------------------------------------------------------------------

_refs = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Zs", "Co", "Cn")),
    min_size=1,
    max_size=40,
)
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn")),
    max_size=80,
)
_scalars = st.one_of(
    st.integers(-(2**53) + 1, 2**53 - 1), st.booleans(), _refs,
    st.binary(max_size=8).map(content_hash),
)  # fmt: skip
_extras = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(
        lambda k: k not in ev.AuditData.model_fields and not k.endswith("_hash")
    ),
    st.one_of(_scalars, st.lists(_scalars, max_size=5)),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(principal=_refs, reason=_text, extra=_extras, when=st.datetimes(timezones=st.just(UTC)))
def test_canonical_json_is_rfc8785(
    principal: str, reason: str, extra: dict[str, Any], when: datetime
) -> None:
    try:
        e = new_event(
            "io.trustzones.test.event", source="/trustzones/test", principal=principal,
            action="read", resource="topic/t", zone="z", decision="allow", reason=reason,
            at=when, extra=extra,
        )  # fmt: skip
    except AuditEventRejected:
        return  # the guard refused a value that looks sensitive; nothing to compare
    body = canonical_json(e)
    assert body == rfc8785.dumps(json.loads(body))
    assert event_from_json(body) == e


def test_keys_sort_as_rfc8785_and_unicode_stays_raw() -> None:
    e = new_event(
        "io.trustzones.test.event", source="/t", principal="josé", action="read",
        resource="topic/t", zone="z", decision="allow", reason='quote " and \\ and € and 😀',
        at=T, extra={"b": 1, "a_b": True, "a": ["x", 2]},
    )  # fmt: skip
    body = canonical_json(e)
    assert body == rfc8785.dumps(json.loads(body))
    assert "josé".encode() in body and "😀".encode() in body


# -- the guard ------------------------------------------------------------------------------------

SENSITIVE = [
    ("4111111111111111", "4111111111111111"),
    ("4111 1111 1111 1111", "4111-1111-1111-1111"),
    ("card 4111-1111-1111-1111 declined", "card:4111-1111-1111-1111"),
    ("3782 822463 10005", "3782-822463-10005"),
    ("ssn 078-05-1120", "ssn/078-05-1120"),
    (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
        "bearer:eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2ln",
    ),
    ("-----BEGIN PRIVATE KEY-----", "-----BEGIN-----"),
    ("AKIAIOSFODNN7EXAMPLE", "aws/AKIAIOSFODNN7EXAMPLE"),
    ("password=hunter2", "db?password=hunter2"),
    ("api_key=abc", "api_key=abc"),
    (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
]


@pytest.mark.parametrize(("text", "reference"), SENSITIVE)
def test_sensitive_values_are_refused_without_echoing_them(text: str, reference: str) -> None:
    with pytest.raises(AuditEventRejected, match=r"data.reason looks like it holds") as info:
        ev.access_decision(principal="a", action="read", resource="topic/t", zone="z",
                           decision="deny", reason=text, at=T)  # fmt: skip
    assert text not in str(info.value)
    with pytest.raises(AuditEventRejected, match=r"data.customer looks like it holds") as info:
        new_event("io.trustzones.test.x", source="/t", principal="a", action="b",
                  resource="c", zone="d", decision="allow", at=T,
                  extra={"customer": reference})  # fmt: skip
    assert reference not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111112",  # fails Luhn
        "1700000000000",  # a millisecond timestamp
        "6e093e68-11b4-45e5-8868-7c36f9511a82",
        "0123456789abcdef0123456789abcdef",  # a uuid in hex
        "000-12-3456",  # not a valid SSN area
        "password: wrong",
    ],
)
def test_ordinary_values_pass_the_guard(value: str) -> None:
    ev.access_decision(principal="a", action="read", resource="topic/t", zone="z",
                       decision="deny", reason=value, at=T)  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"principal": "alice smith"}, "data.principal must be a reference"),
        ({"principal": ""}, "data.principal must be 1 to 256"),
        ({"resource": "topic/t\n"}, "data.resource must be a reference"),
        ({"reason": "line\nbreak"}, "data.reason must not contain control"),
        ({"reason": "x" * 513}, "at most 512"),
        ({"decision": "maybe"}, "data.decision"),
        ({"extra": {"amount": 1.5}}, "data.amount must be a reference, digest, integer"),
        ({"extra": {"payload": b"raw"}}, "data.payload must be a reference"),
        ({"extra": {"nested": {"a": 1}}}, "data.nested must be a reference"),
        ({"extra": {"body_hash": "abc"}}, "data.body_hash must be a digest"),
        ({"extra": {"x": "sha256:zz"}}, "data.x must be a digest"),
        ({"extra": {"Bad-Name": 1}}, "lowercase identifiers"),
        ({"extra": {"n": 2**53}}, "below 2\\*\\*53"),
        ({"extra": {"principal": "b"}}, "repeat standard fields"),
        ({"extra": {f"f{i}": i for i in range(33)}}, "at most 32 extra"),
        ({"extra": {"many": list(range(65))}}, "at most 64 items"),
        ({"source": "trustzones"}, "source must be a path-like"),
        ({"event_id": "has space"}, "id must be"),
        ({"type": "com.example.x"}, "type must look like"),
    ],
)
def test_contract_violations_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "type": "io.trustzones.test.x", "source": "/t", "principal": "a", "action": "b",
        "resource": "c", "zone": "d", "decision": "allow", "at": T,
    }  # fmt: skip
    args.update(kwargs)
    with pytest.raises(AuditEventRejected, match=message):
        new_event(args.pop("type"), **args)


def test_direct_parsing_applies_the_same_contract() -> None:
    good = canonical_json(
        ev.access_decision(
            principal="a",
            action="read",
            resource="topic/t",
            zone="z",
            decision="allow",
            reason="ok",
            at=T,
        )
    )
    with pytest.raises(AuditEventRejected, match=r"data.reason looks like"):
        event_from_json(good.replace(b'"ok"', b'"4111111111111111"'))
    with pytest.raises(AuditEventRejected, match=r"Extra inputs are not permitted"):
        event_from_json(good.replace(b'"id"', b'"extra":1,"id"'))
    with pytest.raises(AuditEventRejected, match=r"data.zone"):
        event_from_json(good.replace(b'"zone":"z"', b'"zone":5'))


def test_events_are_immutable_and_ids_unique() -> None:
    e = ev.access_decision(principal="a", action="read", resource="topic/t", zone="z",
                           decision="allow", reason="ok", at=T)  # fmt: skip
    with pytest.raises(ValueError, match=r"frozen"):
        e.type = "io.trustzones.other"  # type: ignore[misc]
    ids = {
        ev.access_decision(principal="a", action="read", resource="topic/t", zone="z",
                           decision="allow", reason="ok").id
        for _ in range(2000)
    }  # fmt: skip
    assert len(ids) == 2000


def test_batches_of_record_events_match_single_ones() -> None:
    records = [(0, 7, b"a"), (2, 8, None), (1, 2**53 - 1, b"")]
    batch = ev.record_accesses(
        records, direction="produce", principal="svc-1", zone="restricted", topic="payments",
        grant_id="g-1",
    )  # fmt: skip
    assert len({e.id for e in batch}) == 3
    for e, (partition, offset, content) in zip(batch, records, strict=True):
        single = ev.record_access(
            direction="produce", principal="svc-1", zone="restricted", topic="payments",
            partition=partition, offset=offset, content=content, grant_id="g-1",
        )  # fmt: skip
        same_stamp = single.model_copy(update={"id": e.id, "time": e.time})
        assert canonical_json(e) == canonical_json(same_stamp)
        assert event_from_json(canonical_json(e)) == e  # a valid event, checked in full
    with pytest.raises(AuditEventRejected, match=r"data\.principal"):
        ev.record_accesses([], direction="produce", principal="a b", zone="z", topic="t")
    for bad in ((-1, 0, None), (0, True, None), (0, 2**53, None)):
        with pytest.raises(AuditEventRejected, match="integer from 0"):
            ev.record_accesses([bad], direction="produce", principal="a", zone="z", topic="t")  # type: ignore[list-item]
