"""The event fast paths give exactly what the reference (pydantic) path gives, or defer to it.

``new_event`` first tries ``_fast_event`` (cached checks, models built directly) and falls back
to ``_validated_event`` (pydantic with the contract validators). Per-record constructors stamp
copies of a checked template. These tests drive both paths with the same arbitrary inputs: the
fast path may decline anything, but what it accepts the reference path must accept as an equal
event with identical canonical bytes; and canonical JSON through orjson must equal RFC 8785
(the ``rfc8785`` package) on every value an event can hold.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import rfc8785
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trustzones.audit import AuditEventRejected, canonical_json, content_hash
from trustzones.audit import events as ev

T = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)

_any_text = st.text(max_size=30)
_refish = st.one_of(
    st.sampled_from(["alice", "svc-1", "topic/payments", "zone/a/b", "a b", "", "x" * 300]),
    st.text(min_size=1, max_size=20),
    st.sampled_from(
        ["4111111111111111", "078-05-1120", "password=hunter2", "AKIAIOSFODNN7EXAMPLE"]
    ),
)
_value = st.one_of(
    st.integers(-(2**54), 2**54),
    st.booleans(),
    _refish,
    st.binary(max_size=4).map(content_hash),
    st.sampled_from(["sha256:" + "0" * 64, "sha256:" + "A" * 64, "sha256:xyz"]),
    st.floats(allow_nan=False),
    st.none(),
)
_extra = st.dictionaries(
    st.one_of(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
        st.sampled_from(["Bad", "x-y", "", "a" * 70, "offset", "content_hash", "d_hash"]),
    ),
    st.one_of(_value, st.lists(_value, max_size=4), st.tuples(_value, _value)),
    max_size=6,
)


def _reference(kw: dict[str, Any]) -> ev.AuditEvent | AuditEventRejected:
    try:
        return ev._validated_event(**kw)
    except AuditEventRejected as exc:
        return exc


@settings(max_examples=400, deadline=None)
@given(
    type_=st.sampled_from(
        ["io.trustzones.test.event", "io.Trustzones.x", "io.trustzones.flow.transfer"]
    ),
    source=st.sampled_from(["/trustzones/test", "trustzones", "/a b"]),
    principal=_refish,
    action=_refish,
    resource=_refish,
    zone=_refish,
    decision=st.sampled_from(["allow", "deny", "quarantine", "maybe"]),
    reason=st.one_of(st.none(), _any_text, st.just("card 4111-1111-1111-1111")),
    policy_version=st.one_of(st.none(), _refish),
    grant_id=st.one_of(st.none(), _refish),
    at=st.one_of(
        st.none(),
        st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])),
        st.datetimes(),  # naive: refused
    ),
    event_id=st.one_of(st.just("0190a0b0-0000-7000-8000-000000000000"), st.just("bad id"), _refish),
    extra=st.one_of(st.none(), _extra),
)
def test_fast_path_accepts_only_what_the_reference_path_accepts(
    type_: str, source: str, principal: str, action: str, resource: str, zone: str,
    decision: str, reason: str | None, policy_version: str | None, grant_id: str | None,
    at: datetime | None, event_id: str, extra: dict[str, Any] | None,
) -> None:  # fmt: skip
    subject = f"zone/{zone}/{resource}"
    now_ns = 1_790_000_000_123_456_789
    fast = ev._fast_event(
        type_, source, subject, event_id, at, now_ns, principal, action, resource, zone,
        decision, reason, policy_version, grant_id, extra,
    )  # fmt: skip
    when = at if at is not None else ev._format_ns(now_ns)
    ref = _reference(
        {
            "type": type_, "source": source, "subject": subject, "event_id": event_id,
            "when": when, "principal": principal, "action": action, "resource": resource,
            "zone": zone, "decision": decision, "reason": reason,
            "policy_version": policy_version, "grant_id": grant_id, "extra": extra,
        }
    )  # fmt: skip
    if fast is None:
        return  # declined: new_event takes the reference path
    assert not isinstance(ref, AuditEventRejected), f"fast path accepted what was refused: {ref}"
    assert fast == ref
    assert canonical_json(fast) == canonical_json(ref)
    assert fast.model_dump() == ref.model_dump()
    assert ev.event_from_json(canonical_json(fast)) == fast
    # What the audit log stores of an event (its own one-pass reading of the models).
    for e in (fast, ref, ref.model_copy(update={"subject": None})):
        d = e.data
        row = (e.id, e.time, d.principal, d.zone, d.action, d.decision, canonical_json(e))
        assert ev._canonical_row(e) == row
        assert tuple(ev.CanonicalEvent.of(e)) == row
        assert row[6] == rfc8785.dumps(json.loads(row[6]))


def test_fast_path_takes_the_common_events() -> None:
    """The point of the fast path: ordinary events do not go through pydantic."""
    kw: dict[str, Any] = {
        "principal": "svc-1", "action": "read", "resource": "topic/t", "zone": "z",
        "decision": "allow", "reason": "grant g-1 is live", "policy_version": "7",
        "grant_id": "g-1",
        "extra": {"offset": 5, "partition": 0, "content_hash": content_hash(b"x"),
                  "tags": ("a", 1)},
    }  # fmt: skip
    fast = ev._fast_event("io.trustzones.test.x", "/t", "zone/z/topic/t", "id-1", T, 0, **kw)
    assert fast is not None
    assert fast.data.extra["tags"] == ["a", 1]  # tuples become lists, as in the reference path


def test_new_event_refusals_keep_the_reference_messages() -> None:
    with pytest.raises(AuditEventRejected, match=r"data\.principal must be a reference"):
        ev.new_event("io.trustzones.t.x", source="/t", principal="a b", action="read",
                     resource="r", zone="z", decision="allow")  # fmt: skip
    with pytest.raises(AuditEventRejected, match=r"data\.offset must be an integer of magnitude"):
        ev.new_event("io.trustzones.t.x", source="/t", principal="a", action="read",
                     resource="r", zone="z", decision="allow", extra={"offset": 2**53})  # fmt: skip


_flow_args = st.fixed_dictionaries(
    {
        "flow": st.sampled_from(["f1", "pay-clean", "bad flow"]),
        "principal": st.sampled_from(["svc-flow", "4111111111111111"]),
        "source_zone": st.just("restricted"),
        "source_topic": st.sampled_from(["payments", "p"]),
        "source_partition": st.one_of(st.integers(-1, 2**53), st.booleans()),
        "source_offset": st.integers(-1, 2**53),
        "destination_zone": st.just("internal"),
        "destination_topic": st.just("payments-clean"),
        "outcome": st.sampled_from(["allow", "quarantine", "deny"]),
        "content": st.one_of(st.none(), st.binary(max_size=16)),
        "destination_offset": st.one_of(st.none(), st.integers(-1, 2**53)),
        "reason": st.one_of(st.none(), st.sampled_from(["dlp: card number", "x\ny"])),
        "at": st.one_of(st.none(), st.just(T)),
    }
)


@settings(max_examples=300, deadline=None)
@given(args=_flow_args)
def test_stamped_flow_transfers_equal_events_built_from_scratch(args: dict[str, Any]) -> None:
    try:
        stamped = ev.flow_transfer(**args)
    except AuditEventRejected as exc:
        message = str(exc)
        with pytest.raises(AuditEventRejected) as ref_exc:
            ev._flow_transfer(**args)
        assert str(ref_exc.value) == message  # the same refusal, word for word
        return
    ref = ev._flow_transfer(**args)
    # Same content; id and (when not given) time are stamped per event.
    assert stamped.data == ref.data
    assert stamped.model_dump(exclude={"id", "time"}) == ref.model_dump(exclude={"id", "time"})
    if args["at"] is not None:
        assert stamped.time == ref.time
    again = ev.event_from_json(canonical_json(stamped))  # checked in full by pydantic
    assert again == stamped


def test_stamped_events_do_not_share_state_with_their_template() -> None:
    a = ev.flow_transfer(flow="f1", principal="svc", source_zone="r", source_topic="p",
                         source_partition=0, source_offset=1, destination_zone="i",
                         destination_topic="q", outcome="allow", content=b"a")  # fmt: skip
    b = ev.flow_transfer(flow="f1", principal="svc", source_zone="r", source_topic="p",
                         source_partition=0, source_offset=2, destination_zone="i",
                         destination_topic="q", outcome="allow", content=b"b")  # fmt: skip
    assert a.data.extra["source_offset"] == 1 and b.data.extra["source_offset"] == 2
    assert a.id != b.id
    assert a.data.__pydantic_extra__ is not b.data.__pydantic_extra__


# -- canonical JSON: orjson with sorted keys == RFC 8785 on the event value domain ----------------

_domain_scalars = st.one_of(
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.booleans(),
    st.none(),
    st.text(),  # any Unicode, including control characters, quotes, U+2028 and astral planes
)
_domain = st.recursive(
    _domain_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True), inner, max_size=5),
    ),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(value=_domain)
def test_orjson_sorted_is_rfc8785_on_ascii_keys_and_safe_integers(value: Any) -> None:
    import orjson

    try:
        fast = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        assume(False)  # lone surrogates: orjson refuses, so nothing is written
        return
    assert fast == rfc8785.dumps(value)


def test_outside_that_domain_they_differ_and_events_refuse_it() -> None:
    """Why the contract refuses floats, big integers and non-identifier keys: there the two
    encodings part ways (so orjson would not be RFC 8785)."""
    import orjson

    astral = {"\U0001f600": 1, "\uff61": 2}  # UTF-16 order differs from code point order
    assert orjson.dumps(astral, option=orjson.OPT_SORT_KEYS) != rfc8785.dumps(astral)
    assert orjson.dumps(100.0) != rfc8785.dumps(100.0)  # "100.0" against ECMAScript "100"
    for extra in ({"x": 1.5}, {"x": 2**53}, {"\U0001f600": 1}):
        with pytest.raises(AuditEventRejected):
            ev.new_event("io.trustzones.t.x", source="/t", principal="a", action="read",
                         resource="r", zone="z", decision="allow", extra=extra)  # fmt: skip


def test_canonical_json_of_events_is_rfc8785() -> None:
    e = ev.flow_transfer(flow="f1", principal="svc", source_zone="r", source_topic="p",
                         source_partition=0, source_offset=1, destination_zone="i",
                         destination_topic="q", outcome="quarantine", reason='a "quoted" reason',
                         content=b"a")  # fmt: skip
    body = canonical_json(e)
    assert body == rfc8785.dumps(json.loads(body))


# -- the batch constructor: canonical bytes, identical to the one-by-one path -----------------

_shared = st.fixed_dictionaries(
    {
        "flow": st.sampled_from(["f1", "pay-clean", "bad flow"]),
        "principal": st.sampled_from(["svc-flow", "4111111111111111"]),
        "source_zone": st.just("restricted"),
        "source_topic": st.sampled_from(["payments", "p"]),
        "destination_zone": st.just("internal"),
        "destination_topic": st.just("payments-clean"),
    }
)
_flow_record = st.tuples(
    st.one_of(st.integers(-1, 2**53), st.booleans()),
    st.integers(-1, 2**53),
    st.one_of(st.none(), st.binary(max_size=16)),
    st.sampled_from(["allow", "quarantine", "deny"]),
    st.one_of(
        st.none(),
        st.sampled_from(["dlp: card number", "x\ny", 'a "quoted" reason', "café ✓ approuvé"]),
    ),
)


def _one_by_one(shared: dict[str, Any], record: tuple[Any, ...], at: datetime) -> ev.AuditEvent:
    partition, offset, content, outcome, reason = record
    return ev.flow_transfer(
        **shared, source_partition=partition, source_offset=offset, content=content,
        outcome=outcome, reason=reason, at=at,
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(shared=_shared, records=st.lists(_flow_record, min_size=1, max_size=6))
def test_flow_transfers_are_byte_identical_to_flow_transfer(
    shared: dict[str, Any], records: list[tuple[Any, ...]]
) -> None:
    refusal: str | None = None
    try:
        expected = [_one_by_one(shared, r, T) for r in records]
    except AuditEventRejected as exc:
        refusal = str(exc)
    if refusal is not None:
        with pytest.raises(AuditEventRejected) as batch_exc:
            ev.flow_transfers(records, **shared, at=T)
        assert str(batch_exc.value) == refusal  # the same refusal, word for word
        return
    batch = ev.flow_transfers(records, **shared, at=T)
    assert len(batch) == len(records)
    for got, want in zip(batch, expected, strict=True):
        # The same event but for the id, which each event gets afresh.
        same = want.model_copy(update={"id": got.id})
        assert got.body == canonical_json(same)
        assert got == ev.CanonicalEvent.of(same)
        assert got.event() == same  # and the bytes pass the full check
        assert got.body == rfc8785.dumps(json.loads(got.body))


def test_flow_transfers_stamp_each_event_with_its_own_id_and_time() -> None:
    records = [(0, i, b"r%d" % i, "allow", None) for i in range(50)]
    shared = {"flow": "f1", "principal": "svc", "source_zone": "r", "source_topic": "p",
              "destination_zone": "i", "destination_topic": "q"}  # fmt: skip
    batch = ev.flow_transfers(records, **shared)
    assert len({e.id for e in batch}) == 50
    assert all(e.id[14] == "7" for e in batch)  # UUIDv7
    assert [e.time for e in batch] == sorted(e.time for e in batch)
    assert [e.event().data.extra["source_offset"] for e in batch] == list(range(50))
    assert batch[3].event().data.extra["content_hash"] == content_hash(b"r3")


def test_flow_transfers_ids_and_times_follow_the_clock_even_backwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ids and times are made from prefixes kept per millisecond and per second: across
    # millisecond and second boundaries, and with a clock that steps back, each event still
    # gets its own clock reading's time and timestamp, like _format_ns and _uuid7 make them.
    base = 1_790_000_000_999_999_000
    clock = [base, base + 1, base + 999, base + 1_000, base + 2_000_000, base - 5,
             base - 1_000_000_000, base + 3_000_000_000, base + 3_000_000_000]  # fmt: skip
    monkeypatch.setattr(ev._time, "time_ns", iter(clock).__next__)
    records = [(0, i, b"r%d" % i, "allow", None) for i in range(len(clock))]
    shared = {"flow": "f1", "principal": "svc", "source_zone": "r", "source_topic": "p",
              "destination_zone": "i", "destination_topic": "q"}  # fmt: skip
    batch = ev.flow_transfers(records, **shared)
    assert [e.time for e in batch] == [ev._format_ns(ns) for ns in clock]
    for e, ns in zip(batch, clock, strict=True):
        u = uuid.UUID(e.id)
        assert (u.version, u.variant) == (7, uuid.RFC_4122)
        assert u.int >> 80 == ns // 1_000_000  # the 48-bit millisecond timestamp
        assert e.event().time == e.time
    assert len({e.id for e in batch}) == len(batch)


def test_uuid7_lays_out_the_timestamp_and_74_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    now_ns = 1_790_000_000_123_456_789
    monkeypatch.setattr(ev, "_rng", random.Random(7))
    drawn = random.Random(7).randbytes(10)
    got = uuid.UUID(ev._uuid7(now_ns))
    assert (got.version, got.variant) == (7, uuid.RFC_4122)
    assert got.int >> 80 == now_ns // 1_000_000
    r = int.from_bytes(drawn) >> 4  # the first 19 hex digits of the draw
    rand_a = r >> 64
    rand_b = (r >> 60 & 0x3) << 60 | r & (1 << 60) - 1  # the variant digit's two low bits, then 60
    assert got.int >> 64 & 0xFFF == rand_a
    assert got.int & (1 << 62) - 1 == rand_b
    ids = {ev._uuid7(now_ns) for _ in range(1000)}  # the same millisecond: still all distinct
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_flow_transfers_refuse_a_sensitive_reason_without_echoing_it() -> None:
    records = [(0, 0, b"a", "allow", None), (0, 1, b"b", "quarantine", "card 4111111111111111")]
    with pytest.raises(AuditEventRejected, match=r"^audit event refused: data\.reason") as exc:
        ev.flow_transfers(records, flow="f1", principal="svc", source_zone="r", source_topic="p",
                          destination_zone="i", destination_topic="q")  # fmt: skip
    assert "4111" not in str(exc.value)
