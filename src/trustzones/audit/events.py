"""Audit events: CloudEvents 1.0 records of decisions, in RFC 8785 canonical JSON.

Example::

    from trustzones.audit.events import access_decision, canonical_json

    event = access_decision(
        principal="alice", action="read", resource="topic/payments", zone="restricted",
        decision="deny", reason="clearance confidential is below restricted",
        policy_version="7",
    )
    body = canonical_json(event)          # the exact bytes the Merkle log hashes

The shape follows Confluent's audit log (CloudEvents 1.0 with ``id``, ``source``,
``specversion``, ``type``, ``subject``, ``time``, ``datacontenttype``, ``data``); ``data`` holds
``principal``, ``action``, ``resource``, ``zone``, ``decision``, ``reason``, ``policy_version``,
``grant_id`` and free extra fields such as ``offset``, ``partition``, ``count`` or
``content_hash``.

**The contract: events hold references and hashes, never sensitive values.** Every string is
a reference (an identifier without spaces: principal, topic, grant id, ...) or a digest
(``sha256:<hex>``, made by :func:`content_hash`), except the short ``reason`` text. Extra
fields have lowercase names; a name ending in ``_hash`` needs a digest; values are references,
digests, integers (|n| < 2**53), booleans, or short lists of those; floats, bytes and nested
objects are refused. A best-effort scan also refuses strings that look like card numbers,
social security numbers, tokens or keys. A refused event raises
:class:`~trustzones.audit.AuditEventRejected` naming the field, never the value.

Hash content with :func:`content_hash` only when it has enough entropy (a whole record);
a hash of a short value (a card number, a name) can be reversed by guessing. Prefer
references (topic, partition, offset) for those.

Canonical JSON: keys sorted, no whitespace, UTF-8. Because every key is ASCII and every
number an integer below 2**53, ``orjson`` with sorted keys produces exactly the RFC 8785
form (the tests check this against the ``rfc8785`` package); ``None`` fields are left out.
"""

from __future__ import annotations

import binascii
import builtins
import functools
import hashlib
import os
import random
import re
import time as _time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, NamedTuple, Protocol, runtime_checkable

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    model_validator,
)

from trustzones.audit import _guard, _native
from trustzones.audit._errors import AuditEventRejected

__all__ = [
    "ACCESS_DECISION",
    "AGGREGATE",
    "APPROVAL",
    "CONFIG_CHANGE",
    "FLOW_TRANSFER",
    "GRANT_CHANGE",
    "KEY_OPERATION",
    "QUARANTINE",
    "QUARANTINE_RELEASE",
    "RECORD_CONSUMED",
    "RECORD_PRODUCED",
    "SESSION",
    "AuditData",
    "AuditEvent",
    "AuditSink",
    "CanonicalEvent",
    "Decision",
    "access_decision",
    "aggregate",
    "approval",
    "canonical_json",
    "config_change",
    "content_hash",
    "event_from_json",
    "flow_transfer",
    "flow_transfers",
    "grant_change",
    "key_operation",
    "new_event",
    "quarantine",
    "quarantine_release",
    "record_access",
    "record_accesses",
    "session",
]

# Event types (CloudEvents ``type``). Other parts may use any ``io.trustzones.*`` type; these
# are the ones the helper constructors below produce.
ACCESS_DECISION: Final = "io.trustzones.access.decision"
SESSION: Final = "io.trustzones.access.session"
RECORD_PRODUCED: Final = "io.trustzones.record.produced"
RECORD_CONSUMED: Final = "io.trustzones.record.consumed"
AGGREGATE: Final = "io.trustzones.record.aggregate"
FLOW_TRANSFER: Final = "io.trustzones.flow.transfer"
QUARANTINE: Final = "io.trustzones.quarantine.added"
QUARANTINE_RELEASE: Final = "io.trustzones.quarantine.released"
APPROVAL: Final = "io.trustzones.approval"
GRANT_CHANGE: Final = "io.trustzones.grant.change"
CONFIG_CHANGE: Final = "io.trustzones.config.change"
KEY_OPERATION: Final = "io.trustzones.key.operation"

Decision = Literal["allow", "deny", "quarantine"]
"""What was decided: ``allow`` (done/delivered), ``deny`` (refused) or ``quarantine``."""

_MAX_INT = 2**53 - 1
_MAX_EXTRAS = 32
_MAX_LIST = 64
_EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TYPE = re.compile(r"io\.trustzones(\.[a-z][a-z0-9_-]{0,63}){1,4}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
builtins_type = builtins.type  # ``type`` is a parameter name below


def content_hash(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``: how an event refers to content it must not hold."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _utc_time(value: object) -> object:
    """Normalise to ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width, so text order is time order)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("time must be timezone-aware (use datetime.now(UTC))")
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    if isinstance(value, str) and not _TIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("time must be an RFC 3339 timestamp") from exc
        return _utc_time(parsed)
    return value


_second_text: tuple[int, str] = (-1, "")


def _second_prefix(sec: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of Unix second ``sec`` (UTC)."""
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec))


def _format_ns(now_ns: int) -> str:
    """``now_ns`` (Unix nanoseconds) as event time text; the date part is reused per second."""
    global _second_text
    sec, ns = divmod(now_ns, 1_000_000_000)
    cached_sec, prefix = _second_text
    if sec != cached_sec:
        prefix = _second_prefix(sec)
        _second_text = (sec, prefix)
    return f"{prefix}.{ns // 1000:06d}Z"


def _check_extra(name: str, value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if -_MAX_INT <= value <= _MAX_INT:
            return
        raise ValueError(f"data.{name} must be an integer of magnitude below 2**53")
    if isinstance(value, str):
        if name.endswith("_hash") or value.startswith("sha256:"):
            _guard.check_digest(f"data.{name}", value)
        else:
            _guard.check_reference(f"data.{name}", value)
        return
    raise ValueError(
        f"data.{name} must be a reference, digest, integer or boolean (or a list of them), "
        f"not {type(value).__name__}"
    )


# (field, name in messages, longest allowed reference)
_DATA_REFS = (
    ("principal", "data.principal", 256),
    ("action", "data.action", 64),
    ("resource", "data.resource", 512),
    ("zone", "data.zone", 128),
    ("policy_version", "data.policy_version", 128),
    ("grant_id", "data.grant_id", 256),
)
_check_reference = _guard.check_reference


class AuditData(BaseModel):
    """The ``data`` of an audit event: who did what to which resource, and the decision."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True, hide_input_in_errors=True)

    principal: str
    action: str
    resource: str
    zone: str
    decision: Decision
    reason: str | None = None
    policy_version: str | None = None
    grant_id: str | None = None

    @model_validator(mode="after")
    def _check_contract(self) -> AuditData:
        # One validator for all fields: this runs for every audited record, so it is kept
        # to a single Python call with cached checks.
        fields = self.__dict__
        for name, label, limit in _DATA_REFS:
            value = fields[name]
            if value is not None:
                _check_reference(label, value, limit=limit)
        if self.reason is not None:
            _guard.check_text("data.reason", self.reason)
        extra = self.__pydantic_extra__
        if not extra:
            return self
        if len(extra) > _MAX_EXTRAS:
            raise ValueError(f"data may hold at most {_MAX_EXTRAS} extra fields")
        for name, value in extra.items():
            if not _EXTRA_NAME.fullmatch(name):
                raise ValueError(
                    "extra data field names are lowercase identifiers (a-z, 0-9, _), "
                    "at most 64 characters"
                )
            if isinstance(value, list | tuple):
                if len(value) > _MAX_LIST:
                    raise ValueError(f"data.{name} may hold at most {_MAX_LIST} items")
                for item in value:
                    _check_extra(name, item)
                if isinstance(value, tuple):
                    extra[name] = list(value)
            else:
                _check_extra(name, value)
        return self

    @property
    def extra(self) -> Mapping[str, Any]:
        """The free extra fields (offset, partition, content_hash, count, ...)."""
        return dict(self.__pydantic_extra__ or {})


class AuditEvent(BaseModel):
    """One CloudEvents 1.0 audit event. Build it with the helper constructors below."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, hide_input_in_errors=True)

    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str
    type: str
    subject: str | None = None
    time: Annotated[str, BeforeValidator(_utc_time)]
    datacontenttype: Literal["application/json"] = "application/json"
    data: AuditData

    @model_validator(mode="after")
    def _check_contract(self) -> AuditEvent:
        if not _ID.fullmatch(self.id):
            raise ValueError("id must be 1-128 characters of letters, digits and . _ : -")
        if not _TYPE.fullmatch(self.type):
            raise ValueError("type must look like io.trustzones.<part>.<what> (lowercase)")
        _check_reference("source", self.source)
        if not self.source.startswith("/"):
            raise ValueError("source must be a path-like URI reference such as /trustzones/access")
        if self.subject is not None:
            _check_reference("subject", self.subject, limit=512)
        return self

    @property
    def at(self) -> datetime:
        """``time`` as an aware UTC datetime."""
        return datetime.strptime(self.time, _TIME_FORMAT).replace(tzinfo=UTC)


_OPTIONAL_DATA = ("reason", "policy_version", "grant_id")


def canonical_json(event: AuditEvent) -> bytes:
    """The RFC 8785 canonical JSON of ``event``: the bytes the audit log stores and hashes."""
    # Hot path (every audited record): copying the models' dicts in C and deleting the few
    # None fields is about twice as fast as building new dicts key by key. Only the optional
    # fields can be None; they are left out.
    top = event.__dict__
    data = top["data"]
    fields = data.__dict__.copy()
    for name in _OPTIONAL_DATA:
        if fields[name] is None:
            del fields[name]
    extra = data.__pydantic_extra__
    if extra:
        fields.update(extra)
    out = top.copy()  # the event's fields (extra="forbid": nothing else is in there)
    out["data"] = fields
    if out["subject"] is None:
        del out["subject"]
    return _dumps(out, option=_SORT_KEYS)


_dumps = orjson.dumps
_SORT_KEYS = orjson.OPT_SORT_KEYS

CanonicalRow = tuple[str, str, str, str, str, str, bytes]
"""An event's id, time, principal, zone, action, decision and canonical JSON (the fields of
:class:`CanonicalEvent`, as a plain tuple)."""


def _canonical_row(event: AuditEvent) -> CanonicalRow:
    """What the audit log stores of ``event``: :func:`canonical_json` and the columns it is
    searched by, read from the models' dicts once (each attribute read of a model goes
    through pydantic's ``__getattr__`` hook, ~500 instructions). The tests hold it to
    :func:`canonical_json` and to ``rfc8785``."""
    top = event.__dict__
    data = top["data"]
    d = data.__dict__
    fields = d.copy()
    if d["reason"] is None:
        del fields["reason"]
    if d["policy_version"] is None:
        del fields["policy_version"]
    if d["grant_id"] is None:
        del fields["grant_id"]
    extra = data.__pydantic_extra__
    if extra:
        fields.update(extra)
    out = top.copy()
    out["data"] = fields
    if out["subject"] is None:
        del out["subject"]
    return (
        top["id"], top["time"], d["principal"], d["zone"], d["action"], d["decision"],
        _dumps(out, option=_SORT_KEYS),
    )  # fmt: skip


def _rejected(exc: ValidationError) -> AuditEventRejected:
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "event"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(msg if msg.startswith(where) else f"{where}: {msg}")
    return AuditEventRejected("audit event refused: " + "; ".join(problems))


def event_from_json(body: bytes | str) -> AuditEvent:
    """Parse an event from JSON, applying the same contract as the constructors."""
    try:
        return AuditEvent.model_validate_json(body)
    except ValidationError as exc:
        raise _rejected(exc) from None


_ms_prefix: tuple[int, str] = (-1, "")


def _uuid7(now_ns: int) -> str:
    """A time-ordered RFC 9562 version 7 UUID: appends land at the end of the id index.

    The 48-bit millisecond timestamp and the version digit ("7") are formatted once per
    millisecond; the 74 random bits are 19 hex digits of one draw: rand_a (3 digits), the
    variant digit (binary 10 and two random bits, by ``_VARIANT_DIGIT``) and the rest of
    rand_b (15 digits). Half the instructions of formatting five fields from an integer.
    """
    global _ms_prefix
    ms = now_ns // 1_000_000
    cached, prefix = _ms_prefix
    if ms != cached:
        stamp = ms & 0xFFFF_FFFF_FFFF
        prefix = f"{stamp >> 16:08x}-{stamp & 0xFFFF:04x}-7"
        _ms_prefix = (ms, prefix)
    r = _rng.randbytes(10).hex()
    return f"{prefix}{r[:3]}-{r[3].translate(_VARIANT_DIGIT)}{r[4:7]}-{r[7:19]}"


# The variant digit of a UUID: binary 10 followed by two random bits (a random hex digit's low
# two bits, which this maps it by).
_VARIANT_DIGIT = str.maketrans("0123456789abcdef", "89ab89ab89ab89ab")


# Ids must be unique, not secret: a private generator seeded from the OS (and reseeded in a
# forked child) saves a system call per event, and nobody else reseeds it (hypothesis, for
# one, resets the global ``random`` between examples).
_rng = random.Random(os.urandom(32))  # noqa: S311 - unique ids, not secrets
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


def new_event(
    type: str,
    *,
    source: str,
    principal: str,
    action: str,
    resource: str,
    zone: str,
    decision: Decision,
    reason: str | None = None,
    policy_version: str | None = None,
    grant_id: str | None = None,
    subject: str | None = None,
    at: datetime | None = None,
    event_id: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> AuditEvent:
    """Build and check an event of any ``io.trustzones.*`` type; ``at`` defaults to now (UTC).

    Raises :class:`AuditEventRejected` (naming the field, never the value) when a field breaks
    the contract.
    """
    now_ns = _time.time_ns()
    if extra:
        clash = _STANDARD_DATA.intersection(extra)
        if clash:
            raise AuditEventRejected(f"extra fields repeat standard fields: {sorted(clash)}")
    if subject is None:
        subject = f"zone/{zone}/{resource}"
    if event_id is None:
        event_id = _uuid7(now_ns)
    event = _fast_event(
        type, source, subject, event_id, at, now_ns,
        principal, action, resource, zone, decision, reason, policy_version, grant_id, extra,
    )  # fmt: skip
    if event is None:
        event = _validated_event(
            type, source, subject, event_id, at if at is not None else _format_ns(now_ns),
            principal, action, resource, zone, decision, reason, policy_version, grant_id, extra,
        )  # fmt: skip
    return event


def _validated_event(
    type: str,
    source: str,
    subject: str,
    event_id: str,
    when: datetime | str,
    principal: str,
    action: str,
    resource: str,
    zone: str,
    decision: str,
    reason: str | None,
    policy_version: str | None,
    grant_id: str | None,
    extra: Mapping[str, object] | None,
) -> AuditEvent:
    """The reference path: pydantic validation with the contract validators. Every event the
    fast path cannot vouch for comes here, so every refusal has the reference message."""
    data: dict[str, object] = {
        "principal": principal,
        "action": action,
        "resource": resource,
        "zone": zone,
        "decision": decision,
        "reason": reason,
        "policy_version": policy_version,
        "grant_id": grant_id,
    }
    if extra:
        data.update(extra)
    try:
        return AuditEvent(
            id=event_id,
            source=source,
            type=type,
            subject=subject,
            time=when,  # type: ignore[arg-type]  # normalised to text by the validator
            data=data,  # type: ignore[arg-type]  # a dict: validated once, as part of the event
        )
    except ValidationError as exc:
        raise _rejected(exc) from None


# -- the fast path --------------------------------------------------------------------------
#
# Building an event through pydantic costs ~50 us, most of it in the contract validators
# re-checking strings that repeat from event to event (principals, zones, topics, flows).
# ``_fast_event`` applies the same contract with cached checks and builds the two models
# directly. It only ever *accepts*: whenever a value is of an unexpected type or fails a check,
# it returns ``None`` and ``new_event`` takes the reference path, which raises the reference
# error (or accepts, where the fast path was merely conservative). A hypothesis test checks
# that whatever the fast path accepts, the reference path accepts as an equal event.

_STANDARD_DATA: Final = frozenset(
    ("principal", "action", "resource", "zone", "decision", "reason", "policy_version", "grant_id")
)
_EVENT_FIELDS_SET: Final = ("id", "source", "type", "subject", "time", "data")
_DECISIONS: Final = frozenset(("allow", "deny", "quarantine"))
_object_setattr = object.__setattr__


@functools.lru_cache(maxsize=4096)
def _header_ok(type: str, source: str, subject: str) -> bool:
    return (
        _TYPE.fullmatch(type) is not None
        and _guard.reference_ok(source, _guard.MAX_REF)
        and source.startswith("/")
        and _guard.reference_ok(subject, 512)
    )


@functools.lru_cache(maxsize=4096)
def _refs_ok(
    principal: str,
    action: str,
    resource: str,
    zone: str,
    policy_version: str | None,
    grant_id: str | None,
) -> bool:
    ok = _guard.reference_ok
    return (
        ok(principal, 256)
        and ok(action, 64)
        and ok(resource, 512)
        and ok(zone, 128)
        and (policy_version is None or ok(policy_version, 128))
        and (grant_id is None or ok(grant_id, 256))
    )


_good_names: set[str] = set()  # extra field names seen to be valid (a small, closed set)
_DIGEST_MATCH = re.compile(r"sha256:[0-9a-f]{64}").fullmatch


def _extra_value_ok(name: str, value: object) -> bool:
    t = type(value)
    if t is bool:
        return True
    if t is int:
        return -_MAX_INT <= value <= _MAX_INT  # type: ignore[operator]
    if t is str:
        if name.endswith("_hash") or value.startswith("sha256:"):  # type: ignore[attr-defined]
            return _guard.digest_ok(value)  # type: ignore[arg-type]
        return _guard.reference_ok(value, _guard.MAX_REF)  # type: ignore[arg-type]
    return False


def _strs(*values: object) -> bool:
    return all(type(v) is str for v in values)


def _fast_event(
    type: str,
    source: str,
    subject: str,
    event_id: str,
    at: datetime | None,
    now_ns: int,
    principal: str,
    action: str,
    resource: str,
    zone: str,
    decision: str,
    reason: str | None,
    policy_version: str | None,
    grant_id: str | None,
    extra: Mapping[str, object] | None,
) -> AuditEvent | None:
    """The event, if every field provably meets the contract; else ``None`` (see above)."""
    # 1. Types first (the reference path is strict: no str subclasses, no coercion).
    if not _strs(type, source, subject, event_id, principal, action, resource, zone, decision):
        return None
    if (
        (reason is not None and builtins_type(reason) is not str)
        or (policy_version is not None and builtins_type(policy_version) is not str)
        or (grant_id is not None and builtins_type(grant_id) is not str)
    ):
        return None
    # 2. The cached string checks.
    if decision not in _DECISIONS or not _ID.fullmatch(event_id):
        return None
    if not _header_ok(type, source, subject):
        return None
    if not _refs_ok(principal, action, resource, zone, policy_version, grant_id):
        return None
    if reason is not None and not _guard.text_ok(reason):
        return None
    # 3. The time, normalised as the reference path's validator does.
    if at is None:
        when = _format_ns(now_ns)
    elif builtins_type(at) is datetime and at.tzinfo is not None:
        when = str(_utc_time(at))
    else:
        return None
    # 4. Extra fields (inlined: this loop runs for every field of every audited record).
    extras: dict[str, Any] = {}
    if extra:
        if len(extra) > _MAX_EXTRAS:
            return None
        ref_problem = _guard.reference_problem
        digest = _DIGEST_MATCH
        values: Any = extra  # a Mapping[str, object]; the checks below narrow by type()
        for name, value in values.items():
            if name not in _good_names:
                if builtins_type(name) is not str or not _EXTRA_NAME.fullmatch(name):
                    return None
                _good_names.add(name)
            t = builtins_type(value)
            if t is int:
                if not -_MAX_INT <= value <= _MAX_INT:
                    return None
            elif t is str:
                if name.endswith("_hash") or value.startswith("sha256:"):
                    if digest(value) is None:
                        return None
                elif ref_problem(value, _guard.MAX_REF) is not None:
                    return None
            elif t is list or t is tuple:
                items: Any = value
                if len(items) > _MAX_LIST:
                    return None
                for item in items:
                    if not _extra_value_ok(name, item):
                        return None
                if t is tuple:
                    value = list(items)
            elif t is not bool:
                return None
            extras[name] = value
    # 5. Build the models as pydantic's own model_construct would, without re-validating.
    fields = {
        "principal": principal,
        "action": action,
        "resource": resource,
        "zone": zone,
        "decision": decision,
        "reason": reason,
        "policy_version": policy_version,
        "grant_id": grant_id,
    }
    data = AuditData.__new__(AuditData)
    _object_setattr(data, "__dict__", fields)
    _object_setattr(data, "__pydantic_extra__", extras)
    _object_setattr(data, "__pydantic_fields_set__", {*_STANDARD_DATA, *extras})
    _object_setattr(data, "__pydantic_private__", None)
    event = AuditEvent.__new__(AuditEvent)
    _object_setattr(
        event,
        "__dict__",
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": type,
            "subject": subject,
            "time": when,
            "datacontenttype": "application/json",
            "data": data,
        },
    )
    _object_setattr(event, "__pydantic_extra__", None)
    _object_setattr(event, "__pydantic_fields_set__", set(_EVENT_FIELDS_SET))
    _object_setattr(event, "__pydantic_private__", None)
    return event


def _extras(**fields: object) -> dict[str, object]:
    return {k: v for k, v in fields.items() if v is not None}


def access_decision(
    *,
    principal: str,
    action: str,
    resource: str,
    zone: str,
    decision: Literal["allow", "deny"],
    reason: str,
    policy_version: str | None = None,
    grant_id: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/access",
    **refs: object,
) -> AuditEvent:
    """An authorisation decision (allow or deny) for ``principal`` doing ``action``."""
    return new_event(
        ACCESS_DECISION,
        source=source,
        principal=principal,
        action=action,
        resource=resource,
        zone=zone,
        decision=decision,
        reason=reason,
        policy_version=policy_version,
        grant_id=grant_id,
        at=at,
        extra=refs,
    )


def session(
    *,
    principal: str,
    zone: str,
    resource: str,
    action: Literal["open", "close"],
    decision: Literal["allow", "deny"],
    session_id: str,
    reason: str | None = None,
    auth_method: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/access",
) -> AuditEvent:
    """A client session opened or closed (audit level ``access``)."""
    return new_event(
        SESSION,
        source=source,
        principal=principal,
        action=f"session.{action}",
        resource=resource,
        zone=zone,
        decision=decision,
        reason=reason,
        at=at,
        extra=_extras(session_id=session_id, auth_method=auth_method),
    )


def record_access(
    *,
    direction: Literal["produce", "consume"],
    principal: str,
    zone: str,
    topic: str,
    partition: int,
    offset: int,
    content: bytes | None = None,
    decision: Decision = "allow",
    reason: str | None = None,
    grant_id: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/zone",
) -> AuditEvent:
    """One record produced or consumed (audit level ``per-message``): offset and content hash."""
    return new_event(
        RECORD_PRODUCED if direction == "produce" else RECORD_CONSUMED,
        source=source,
        principal=principal,
        action=direction,
        resource=f"topic/{topic}",
        zone=zone,
        decision=decision,
        reason=reason,
        grant_id=grant_id,
        at=at,
        extra=_extras(
            topic=topic,
            partition=partition,
            offset=offset,
            content_hash=content_hash(content) if content is not None else None,
        ),
    )


def record_accesses(
    records: Iterable[tuple[int, int, bytes | None]],
    *,
    direction: Literal["produce", "consume"],
    principal: str,
    zone: str,
    topic: str,
    decision: Decision = "allow",
    reason: str | None = None,
    grant_id: str | None = None,
    source: str = "/trustzones/zone",
) -> list[AuditEvent]:
    """``record_access`` for a batch of ``(partition, offset, content)`` records, stamped now.

    The fields the batch shares are checked once; each event is a copy that differs only in
    values made here (id, time, partition, offset, content hash), which is about three times
    faster than building every event from scratch.
    """
    template = record_access(
        direction=direction,
        principal=principal,
        zone=zone,
        topic=topic,
        partition=0,
        offset=0,
        decision=decision,
        reason=reason,
        grant_id=grant_id,
        source=source,
    )
    out = []
    for partition, offset, content in records:
        for name, number in (("partition", partition), ("offset", offset)):
            if builtins_type(number) is not int or not 0 <= number <= _MAX_INT:
                raise AuditEventRejected(
                    f"audit event refused: data.{name} must be an integer from 0 to 2**53 - 1"
                )
        updates: dict[str, object] = {"partition": partition, "offset": offset}
        if content is not None:
            updates["content_hash"] = content_hash(content)
        out.append(_stamped(template, None, updates))
    return out


def aggregate(
    *,
    principal: str,
    zone: str,
    topic: str,
    action: Literal["produce", "consume"],
    allowed: int,
    denied: int,
    window_start: datetime,
    window_end: datetime,
    at: datetime | None = None,
    source: str = "/trustzones/zone",
    byte_count: int | None = None,
    offsets: Mapping[int, tuple[int, int]] | None = None,
    event_id: str | None = None,
    recovered: bool | None = None,
) -> AuditEvent:
    """Counts for one principal, topic and action over a window (audit level ``aggregate``).

    ``byte_count`` is the total size of the counted record values; ``offsets`` maps each
    partition to the first and last offset counted in it (written as three parallel lists,
    ``partitions``, ``first_offsets`` and ``last_offsets``, when there are at most 64
    partitions, else only ``partition_count``). ``recovered`` marks counts written by a later
    process after the one that counted them stopped without writing them.
    """
    extra: dict[str, object] = {
        "topic": topic,
        "count": allowed + denied,
        "allowed": allowed,
        "denied": denied,
        "window_start": _utc_time(window_start),
        "window_end": _utc_time(window_end),
    }
    if byte_count is not None:
        extra["bytes"] = byte_count
    if offsets is not None:
        parts = sorted(offsets)
        if len(parts) <= _MAX_LIST:
            extra["partitions"] = parts
            extra["first_offsets"] = [offsets[p][0] for p in parts]
            extra["last_offsets"] = [offsets[p][1] for p in parts]
        else:
            extra["partition_count"] = len(parts)
    if recovered is not None:
        extra["recovered"] = recovered
    return new_event(
        AGGREGATE,
        source=source,
        principal=principal,
        action=action,
        resource=f"topic/{topic}",
        zone=zone,
        decision="allow" if not denied else "deny",
        at=at,
        event_id=event_id,
        extra=extra,
    )


def flow_transfer(
    *,
    flow: str,
    principal: str,
    source_zone: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    destination_zone: str,
    destination_topic: str,
    outcome: Decision,
    content: bytes | None = None,
    destination_offset: int | None = None,
    reason: str | None = None,
    at: datetime | None = None,
) -> AuditEvent:
    """A record moved (``allow``), refused (``deny``) or quarantined by a flow.

    Called once per record by flows that audit per message, so the fields a flow's records
    share are checked once (a cached template) and each event is a stamped copy of it.
    """
    if (
        builtins_type(source_partition) is int
        and builtins_type(source_offset) is int
        and 0 <= source_partition <= _MAX_INT
        and 0 <= source_offset <= _MAX_INT
        and (
            destination_offset is None
            or (builtins_type(destination_offset) is int and 0 <= destination_offset <= _MAX_INT)
        )
        and (content is None or builtins_type(content) is bytes)
        and (at is None or (builtins_type(at) is datetime and at.tzinfo is not None))
    ):
        try:
            template = _flow_template(
                flow, principal, source_zone, source_topic, destination_zone, destination_topic,
                outcome, reason, destination_offset is not None, content is not None,
            )  # fmt: skip
        except (AuditEventRejected, TypeError):
            pass  # the reference path below raises the reference error
        else:
            updates: dict[str, object] = {
                "source_partition": source_partition,
                "source_offset": source_offset,
            }
            if destination_offset is not None:
                updates["destination_offset"] = destination_offset
            if content is not None:
                updates["content_hash"] = content_hash(content)
            return _stamped(template, at, updates)
    return _flow_transfer(
        flow, principal, source_zone, source_topic, source_partition, source_offset,
        destination_zone, destination_topic, outcome, content, destination_offset, reason, at,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _flow_template(
    flow: str,
    principal: str,
    source_zone: str,
    source_topic: str,
    destination_zone: str,
    destination_topic: str,
    outcome: Decision,
    reason: str | None,
    has_destination_offset: bool,
    has_content: bool,
) -> AuditEvent:
    return _flow_transfer(
        flow, principal, source_zone, source_topic, 0, 0, destination_zone, destination_topic,
        outcome, b"" if has_content else None, 0 if has_destination_offset else None, reason,
        None,
    )  # fmt: skip


def _flow_transfer(
    flow: str,
    principal: str,
    source_zone: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    destination_zone: str,
    destination_topic: str,
    outcome: Decision,
    content: bytes | None,
    destination_offset: int | None,
    reason: str | None,
    at: datetime | None,
) -> AuditEvent:
    return new_event(
        FLOW_TRANSFER,
        source=f"/trustzones/flows/{flow}",
        principal=principal,
        action="flow.transfer",
        resource=f"topic/{destination_topic}",
        zone=destination_zone,
        decision=outcome,
        reason=reason,
        at=at,
        extra=_extras(
            flow=flow,
            source_zone=source_zone,
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            destination_topic=destination_topic,
            destination_offset=destination_offset,
            content_hash=content_hash(content) if content is not None else None,
        ),
    )


def _stamped(template: AuditEvent, at: datetime | None, updates: dict[str, object]) -> AuditEvent:
    """A copy of a checked ``template`` with a new id and time and some extra fields replaced.

    The caller vouches that every name and value in ``updates`` meets the contract (integers in
    range, digests made by :func:`content_hash`), so the copy is as valid as the template; the
    tests compare stamped events with events built and checked from scratch.
    """
    now_ns = _time.time_ns()
    tdata = template.data
    extras = dict(tdata.__pydantic_extra__ or ())
    extras.update(updates)
    data = AuditData.__new__(AuditData)
    _object_setattr(data, "__dict__", tdata.__dict__.copy())
    _object_setattr(data, "__pydantic_extra__", extras)
    _object_setattr(data, "__pydantic_fields_set__", tdata.__pydantic_fields_set__ | updates.keys())
    _object_setattr(data, "__pydantic_private__", None)
    fields = template.__dict__.copy()
    fields["id"] = _uuid7(now_ns)
    fields["time"] = _format_ns(now_ns) if at is None else str(_utc_time(at))
    fields["data"] = data
    event = AuditEvent.__new__(AuditEvent)
    _object_setattr(event, "__dict__", fields)
    _object_setattr(event, "__pydantic_extra__", None)
    _object_setattr(event, "__pydantic_fields_set__", set(template.__pydantic_fields_set__))
    _object_setattr(event, "__pydantic_private__", None)
    return event


class CanonicalEvent(NamedTuple):
    """An audit event already in its RFC 8785 canonical form: the bytes the log stores and
    hashes, and the columns it indexes them by.

    Made by the batch constructors here (:func:`flow_transfers`) from a checked template, so
    ``body`` meets the event contract; :meth:`event` parses it back with every check, for a
    sink that needs the model. :meth:`AuditLog.append_many` stores it as it is.
    """

    id: str
    time: str
    principal: str
    zone: str
    action: str
    decision: str
    body: bytes

    @classmethod
    def of(cls, event: AuditEvent) -> CanonicalEvent:
        """The canonical form of a checked event."""
        return _new_canonical(cls, _canonical_row(event))

    def event(self) -> AuditEvent:
        """The event model, parsed from ``body`` and checked in full."""
        return event_from_json(self.body)


FlowRecord = tuple[int, int, bytes | None, Decision, str | None]
"""What :func:`flow_transfers` needs of one record: ``(source_partition, source_offset,
content, outcome, reason)``."""


def flow_transfers(
    records: Iterable[FlowRecord],
    *,
    flow: str,
    principal: str,
    source_zone: str,
    source_topic: str,
    destination_zone: str,
    destination_topic: str,
    at: datetime | None = None,
) -> list[CanonicalEvent]:
    """:func:`flow_transfer` for each record of a batch, already canonical.

    Each event's bytes are exactly ``canonical_json(flow_transfer(...))`` for the same record,
    id and time. The fields a batch shares are checked once per outcome and reason (the cached
    template of :func:`flow_transfer`), and their canonical bytes made once: a record then only
    fills in values made or range-checked here (id, time, partition, offset, content hash),
    none of which JSON needs to escape. A record whose own fields are not plainly valid goes
    through :func:`flow_transfer`, which raises its reference error. With the native core
    (``trustzones_native``) the loop runs there, with the same bytes.
    """
    when: str | None = None
    if at is not None and builtins_type(at) is datetime and at.tzinfo is not None:
        when = str(_utc_time(at))
    fast = at is None or when is not None
    records = records if builtins_type(records) is list else list(records)
    # The random bits of every id in one draw (10 bytes a record).
    random_bits = _rng.randbytes(10 * len(records))
    shell_for = functools.partial(
        _flow_shell, flow, principal, source_zone, source_topic, destination_zone,
        destination_topic,
    )  # fmt: skip
    out: list[CanonicalEvent | None]
    native = _native.native
    if native is not None and fast:
        # The loop below in the native core (60% less CPU a record), for the records it
        # vouches for; it leaves the others (None) to the loop, which also raises the errors.
        out = native.flow_events(
            records, shell_for, CanonicalEvent, principal, destination_zone, "flow.transfer",
            when, _time.time_ns, _second_prefix, random_bits,
        )  # fmt: skip
        todo: Iterable[int] = [k for k, made in enumerate(out) if made is None]
    else:
        out = [None] * len(records)
        todo = range(len(records))
    # (outcome, reason, has content) -> the canonical bytes around the per-record values
    shells: dict[tuple[str, str | None, bool], _Shell | None] = {}
    now, sha, hexlify = _time.time_ns, hashlib.sha256, _hexlify
    join, new_canonical = b"".join, _new_canonical
    action = "flow.transfer"
    # Ids and times as _uuid7 and _format_ns make them, for less: 20 hex digits of the draw
    # a record, of which 19 are used (rand_a, the variant digit and rand_b), and the text
    # before them kept while the millisecond (ids) or the second (times) stays the same.
    rand = random_bits.hex()
    variant = rand.translate(_VARIANT_DIGIT)
    ms_start = ms_end = sec_start = sec_end = 0
    id_prefix = time_format = ""
    for k in todo:
        partition, offset, content, outcome, reason = records[k]
        if (
            fast
            and builtins_type(partition) is int
            and builtins_type(offset) is int
            and 0 <= partition <= _MAX_INT
            and 0 <= offset <= _MAX_INT
            and (content is None or builtins_type(content) is bytes)
        ):
            key = (outcome, reason, content is not None)
            if key in shells:
                shell = shells[key]
            else:
                shell = shells[key] = shell_for(outcome, reason, content is not None)
            if shell is not None:
                now_ns = now()
                if not ms_start <= now_ns < ms_end:  # a new millisecond (or the clock went back)
                    ms = now_ns // 1_000_000
                    ms_start, ms_end = ms * 1_000_000, (ms + 1) * 1_000_000
                    ms &= 0xFFFF_FFFF_FFFF
                    id_prefix = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7"
                    if not sec_start <= now_ns < sec_end:
                        sec = now_ns // 1_000_000_000
                        sec_start, sec_end = sec * 1_000_000_000, (sec + 1) * 1_000_000_000
                        time_format = _second_prefix(sec) + ".%06dZ"
                o = 20 * k
                event_id = (
                    f"{id_prefix}{rand[o : o + 3]}-{variant[o + 3]}{rand[o + 4 : o + 7]}-"
                    f"{rand[o + 7 : o + 19]}"
                )
                stamp = when if when is not None else time_format % ((now_ns - sec_start) // 1000)
                numbers = b"%d%s%d" % (offset, shell[1], partition)
                if content is None:
                    body = join((shell[0], numbers, shell[2], event_id.encode(), shell[3],
                                 stamp.encode(), shell[4]))  # fmt: skip
                else:
                    body = join((shell[0], hexlify(sha(content).digest()), shell[5], numbers,
                                 shell[2], event_id.encode(), shell[3], stamp.encode(),
                                 shell[4]))  # fmt: skip
                out[k] = new_canonical(CanonicalEvent, (
                    event_id, stamp, principal, destination_zone, action, outcome, body,
                ))  # fmt: skip
                continue
        event = flow_transfer(
            flow=flow, principal=principal, source_zone=source_zone, source_topic=source_topic,
            source_partition=partition, source_offset=offset, destination_zone=destination_zone,
            destination_topic=destination_topic, outcome=outcome, content=content,
            reason=reason, at=at,
        )  # fmt: skip
        out[k] = CanonicalEvent.of(event)
    return out  # type: ignore[return-value]  # every record's event is made above


_hexlify = binascii.hexlify
_new_canonical = tuple.__new__  # CanonicalEvent(...) without its Python-level __new__

_Shell = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
"""The canonical bytes of a flow-transfer template cut at its per-record values:
``(before the first value, between offset and partition, before the id, between id and time,
after the time, between the content hash and the offset)``; the last is empty without content.
"""

# Stand-ins for the per-record values while the template is serialised, in the order sorted
# keys put them (data.content_hash, data.source_offset, data.source_partition, id, time). A
# checked template holds no control character, so each one's escaped form appears only where
# it was put.
_SLOTS: Final = ("content_hash", "source_offset", "source_partition", "id", "time")


def _slot(name: str) -> str:
    return f"\x01{name}"


def _flow_shell(
    flow: str,
    principal: str,
    source_zone: str,
    source_topic: str,
    destination_zone: str,
    destination_topic: str,
    outcome: Decision,
    reason: str | None,
    has_content: bool,
) -> _Shell | None:
    """The canonical bytes of a checked flow-transfer template, cut where a record's values go;
    ``None`` when the template is refused (or, never expected, does not cut as planned)."""
    try:
        template = _flow_template(
            flow, principal, source_zone, source_topic, destination_zone, destination_topic,
            outcome, reason, False, has_content,
        )  # fmt: skip
    except (AuditEventRejected, TypeError):
        return None  # flow_transfer, per record, raises the reference error
    top: dict[str, Any] = orjson.loads(canonical_json(template))
    data: dict[str, Any] = top["data"]
    for name in _SLOTS[:3]:
        if name in data:
            data[name] = _slot(name)
    top["id"], top["time"] = _slot("id"), _slot("time")
    text = _dumps(top, option=_SORT_KEYS)
    # Cut at each stand-in (a JSON string, quotes included); ids, times and hashes go back
    # between quotes, integers without.
    cuts: list[bytes] = []
    for name in _SLOTS if has_content else _SLOTS[1:]:
        token = _dumps(_slot(name))
        if text.count(token) != 1:
            return None
        head, text = text.split(token)
        cuts.append(head)
    cuts.append(text)
    if has_content:
        first, after_hash, between, before_id, before_time, tail = cuts
        first, after_hash = first + b'"sha256:', b'"' + after_hash
    else:
        first, between, before_id, before_time, tail = cuts
        after_hash = b""
    return (
        first, between, before_id + b'"', b'"' + before_time + b'"', b'"' + tail, after_hash,
    )  # fmt: skip


def quarantine(
    *,
    principal: str,
    zone: str,
    topic: str,
    quarantine_topic: str,
    partition: int,
    offset: int,
    reason: str,
    content: bytes | None = None,
    flow: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/flows",
) -> AuditEvent:
    """A record put into quarantine, with the reason (never the content)."""
    return new_event(
        QUARANTINE,
        source=source,
        principal=principal,
        action="quarantine.add",
        resource=f"topic/{topic}",
        zone=zone,
        decision="quarantine",
        reason=reason,
        at=at,
        extra=_extras(
            topic=topic,
            quarantine_topic=quarantine_topic,
            partition=partition,
            offset=offset,
            flow=flow,
            content_hash=content_hash(content) if content is not None else None,
        ),
    )


def quarantine_release(
    *,
    principal: str,
    zone: str,
    quarantine_topic: str,
    partition: int,
    offset: int,
    approval_id: str,
    destination_topic: str,
    at: datetime | None = None,
    source: str = "/trustzones/flows",
) -> AuditEvent:
    """A quarantined record released after approval ``approval_id``."""
    return new_event(
        QUARANTINE_RELEASE,
        source=source,
        principal=principal,
        action="quarantine.release",
        resource=f"topic/{quarantine_topic}",
        zone=zone,
        decision="allow",
        at=at,
        extra=_extras(
            quarantine_topic=quarantine_topic,
            partition=partition,
            offset=offset,
            approval_id=approval_id,
            destination_topic=destination_topic,
        ),
    )


def approval(
    *,
    approver: str,
    request_id: str,
    action: str,
    resource: str,
    zone: str,
    decision: Literal["allow", "deny"],
    reason: str | None = None,
    requester: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/access",
) -> AuditEvent:
    """An approver approving (``allow``) or rejecting (``deny``) request ``request_id``."""
    return new_event(
        APPROVAL,
        source=source,
        principal=approver,
        action=action,
        resource=resource,
        zone=zone,
        decision=decision,
        reason=reason,
        at=at,
        extra=_extras(request_id=request_id, requester=requester),
    )


def grant_change(
    *,
    actor: str,
    grant_id: str,
    grantee: str,
    change: Literal["create", "revoke", "expire", "use"],
    resource: str,
    zone: str,
    expires_at: datetime | None = None,
    reason: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/access",
) -> AuditEvent:
    """A grant created, revoked, expired or used; ``actor`` made the change."""
    return new_event(
        GRANT_CHANGE,
        source=source,
        principal=actor,
        action=f"grant.{change}",
        resource=resource,
        zone=zone,
        decision="allow",
        reason=reason,
        grant_id=grant_id,
        at=at,
        extra=_extras(
            grantee=grantee,
            expires_at=_utc_time(expires_at) if expires_at is not None else None,
        ),
    )


def config_change(
    *,
    actor: str,
    config_hash: str,
    policy_version: str,
    change: str = "apply",
    previous_config_hash: str | None = None,
    zone: str = "*",
    reason: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/config",
) -> AuditEvent:
    """A configuration change (``trustzones apply``); ``config_hash`` from content_hash()."""
    return new_event(
        CONFIG_CHANGE,
        source=source,
        principal=actor,
        action=f"config.{change}",
        resource="config/trustzones.yaml",
        zone=zone,
        decision="allow",
        reason=reason,
        policy_version=policy_version,
        at=at,
        extra=_extras(config_hash=config_hash, previous_config_hash=previous_config_hash),
    )


def key_operation(
    *,
    principal: str,
    zone: str,
    key_id: str,
    operation: str,
    decision: Literal["allow", "deny"],
    reason: str | None = None,
    at: datetime | None = None,
    source: str = "/trustzones/keys",
) -> AuditEvent:
    """A key operation (rotate, unwrap, access) in ``zone`` on key ``key_id``."""
    return new_event(
        KEY_OPERATION,
        source=source,
        principal=principal,
        action=f"key.{operation}",
        resource=f"key/{key_id}",
        zone=zone,
        decision=decision,
        reason=reason,
        at=at,
        extra={"key_id": key_id},
    )


@runtime_checkable
class AuditSink(Protocol):
    """Where the other parts send audit events.

    ``record`` returns only once the event is durably appended; if it raises (always an
    :class:`~trustzones.errors.AuditError`), the caller must treat the action as failed and
    not carry it out: no audit, no action. ``record_many`` appends a batch atomically (all or
    nothing), in order; use it on hot paths (per-message audit) to share one commit.

    The product's implementation is :class:`~trustzones.audit.AuditLog`. There is
    deliberately no no-op sink.
    """

    def record(self, event: AuditEvent) -> None: ...

    def record_many(self, events: Sequence[AuditEvent]) -> None: ...
