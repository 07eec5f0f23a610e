"""Just-in-time requests, approvals, time-limited grants, revocation, break-glass, review.

One SQLite file (durable, shared by processes). Every mutation is one ``BEGIN IMMEDIATE``
transaction; its audit event is emitted inside it, so a change that could not be audited is
rolled back. Subscribers (the policy decision point) are told after each commit, and other
processes see the change through SQLite's ``data_version``.

Grants are issued only here (``jit`` after enough approvals, ``break_glass`` at once) or come
from the config (standing grants). A revocation is a row of its own, so standing grants can
be revoked too; it takes effect at the next decision.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from trustzones.access._errors import AccessRequestError
from trustzones.access._model import (
    Action,
    AuditEvent,
    AuditSink,
    Directory,
    GrantInfo,
    GrantSource,
    Resource,
    ZoneRule,
    epoch_seconds,
    from_epoch,
)
from trustzones.errors import AccessDenied, ConfigError

__all__ = ["AccessRequest", "GrantStore", "GrantView", "RequestStatus", "parse_duration"]

RequestStatus = Literal["pending", "granted", "denied", "withdrawn", "expired"]
#: A pending request older than this can no longer be approved.
REQUEST_TTL = timedelta(hours=24)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, zone TEXT NOT NULL, topic TEXT,
    access TEXT NOT NULL, duration_s INTEGER NOT NULL, reason TEXT NOT NULL,
    created_at INTEGER NOT NULL, status TEXT NOT NULL, decided_by TEXT,
    decided_at INTEGER, decision_reason TEXT, grant_id TEXT);
CREATE TABLE IF NOT EXISTS approvals (
    request_id TEXT NOT NULL, approver TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver));
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, zone TEXT NOT NULL, topic TEXT,
    access TEXT NOT NULL, source TEXT NOT NULL, request_id TEXT, reason TEXT NOT NULL,
    issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, approvals INTEGER NOT NULL,
    approved_by TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS grants_expiry ON grants (expires_at);
CREATE TABLE IF NOT EXISTS revocations (
    grant_id TEXT PRIMARY KEY, at INTEGER NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (grant_id TEXT PRIMARY KEY, last_used INTEGER NOT NULL);
"""

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def parse_duration(text: str) -> timedelta:
    """``"2h"``, ``"90m"``, ``"1h30m"``, ``"1d"``: whole minutes, the grant granularity."""
    m = _DURATION.match(text.strip())
    if not text.strip() or m is None or not any(m.groups()):
        raise AccessRequestError(
            f"invalid duration {text!r}: write it as days, hours and minutes, e.g. 2h, 90m, 1h30m"
        )
    days, hours, minutes = (int(g) if g else 0 for g in m.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def _access_text(access: frozenset[Action]) -> str:
    return ",".join(sorted(access))


def _access_set(text: str) -> frozenset[Action]:
    out: set[Action] = set()
    for part in text.split(","):
        if part == "read":
            out.add("read")
        elif part == "write":
            out.add("write")
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """A just-in-time request and where it stands."""

    id: str
    requester: str
    resource: Resource
    access: frozenset[Action]
    duration: timedelta
    reason: str
    created_at: datetime
    status: RequestStatus
    approvals: tuple[tuple[str, datetime], ...]
    required_approvals: int
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class GrantView:
    """A grant as access listings and the access review show it."""

    id: str
    principal: str
    resource: Resource
    access: frozenset[Action]
    source: GrantSource
    status: Literal["active", "expired", "revoked"]
    issued_at: datetime | None
    expires_at: datetime | None
    approved_by: tuple[str, ...]
    reason: str
    last_used: datetime | None
    stale: bool
    break_glass: bool
    revoked_by: str | None = None
    revoked_at: datetime | None = None


class GrantStore:
    """Durable store and workflow of just-in-time access, bound to a :class:`Directory`.

    Every method that depends on time takes ``now`` (an aware datetime); nothing reads the
    clock. Thread-safe (one lock); several processes may open the same file.
    """

    def __init__(self, path: Path, directory: Directory, *, audit: AuditSink) -> None:
        self.path = path
        self.directory = directory
        self._audit = audit
        self._lock = threading.RLock()
        self._subscribers: list[Callable[[], None]] = []
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 5000")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path} is not a trustzones grant store: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> GrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change this object commits."""
        with self._lock:
            self._subscribers.append(callback)

    def data_version(self) -> int:
        """Changes whenever another connection (or process) commits to the file."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        for callback in list(self._subscribers):
            callback()

    # -- rules --------------------------------------------------------------------------------

    def _principal(self, name: str) -> None:
        if name not in self.directory.principals:
            raise AccessDenied(f"unknown principal {name!r}")

    def _zone_rule(self, resource: Resource) -> ZoneRule:
        zone = self.directory.zones.get(resource.zone)
        if zone is None:
            raise AccessRequestError(f"unknown zone {resource.zone!r}")
        if resource.topic is not None and resource.topic not in zone.topics:
            raise AccessRequestError(f"zone {zone.name} has no topic {resource.topic!r}")
        return zone

    def _check_eligible(
        self, principal: str, resource: Resource, access: frozenset[Action]
    ) -> None:
        info = self.directory.principals[principal]
        zone = self._zone_rule(resource)
        if info.kind not in zone.principal_kinds:
            raise AccessDenied(
                f"zone {zone.name} admits only {'/'.join(sorted(zone.principal_kinds))} "
                f"principals; {principal} is a {info.kind}"
            )
        if "read" in access and self.directory.rank(info.clearance) < self.directory.rank(
            zone.classification
        ):
            raise AccessDenied(
                f"no read up: {principal}'s clearance {info.clearance} is below zone "
                f"{zone.name}'s classification {zone.classification}; no grant can change that"
            )

    def _all_grants(self, cur: sqlite3.Cursor) -> list[GrantInfo]:
        rows = cur.execute(
            "SELECT id, principal, zone, topic, access, source, reason, issued_at, expires_at, "
            "approvals, approved_by FROM grants"
        ).fetchall()
        return list(self.directory.grants) + [self._grant_from_row(r) for r in rows]

    @staticmethod
    def _grant_from_row(row: tuple[object, ...]) -> GrantInfo:
        (gid, principal, zone, topic, access, source, reason, issued, expires, n, by) = row
        return GrantInfo(
            id=str(gid),
            principal=str(principal),
            zone=str(zone),
            topic=None if topic is None else str(topic),
            access=_access_set(str(access)),
            expires_at=from_epoch(int(str(expires))),
            source="break_glass" if source == "break_glass" else "jit",
            approvals=int(str(n)),
            approved_by=tuple(json.loads(str(by))),
            issued_at=from_epoch(int(str(issued))),
            reason=str(reason),
        )

    def _revoked(self, cur: sqlite3.Cursor) -> set[str]:
        return {str(r[0]) for r in cur.execute("SELECT grant_id FROM revocations")}

    def _holds_zone(self, cur: sqlite3.Cursor, principal: str, zone: str, now_s: int) -> bool:
        """Clearance for the zone and a live, unrevoked grant on it or on one of its topics."""
        info = self.directory.principals.get(principal)
        rule = self.directory.zones[zone]
        if info is None or self.directory.rank(info.clearance) < self.directory.rank(
            rule.classification
        ):
            return False
        revoked = self._revoked(cur)
        return any(
            g.principal == principal and g.zone == zone and g.id not in revoked and g.live_at(now_s)
            for g in self._all_grants(cur)
        )

    def _check_approver(
        self, cur: sqlite3.Cursor, approver: str, request: AccessRequest, now_s: int
    ) -> None:
        rule = self.directory.zones[request.resource.zone]
        info = self.directory.principals[approver]
        if rule.approvals.approver_role and rule.approvals.approver_role not in info.roles:
            raise AccessDenied(
                f"{approver} cannot approve access to zone {rule.name}: the zone needs an "
                f"approver with role {rule.approvals.approver_role!r}"
            )
        if not self._holds_zone(cur, approver, rule.name, now_s):
            raise AccessDenied(
                f"{approver} cannot approve access to zone {rule.name}: an approver must hold "
                "the zone (clearance for it and a live grant in it)"
            )

    def _emit(self, event: AuditEvent) -> None:
        self._audit(event)

    # -- requests -----------------------------------------------------------------------------

    def request(
        self,
        requester: str,
        resource: Resource,
        *,
        access: frozenset[Action],
        duration: timedelta,
        reason: str,
        now: datetime,
    ) -> AccessRequest:
        """File a request. A zone that needs no approvals grants it at once."""
        now_s = epoch_seconds(now)
        self._principal(requester)
        zone = self._zone_rule(resource)
        if not reason.strip():
            raise AccessRequestError('a request needs a reason (--reason "why you need it")')
        if not access:
            raise AccessRequestError("a request needs an access: read, write or both")
        if duration < timedelta(minutes=1) or duration % timedelta(minutes=1):
            raise AccessRequestError("the duration is whole minutes, at least 1 minute")
        if duration > zone.max_grant_duration:
            raise AccessRequestError(
                f"zone {zone.name} grants at most {zone.max_grant_duration}; ask for less"
            )
        self._check_eligible(requester, resource, access)
        request_id = "req-" + secrets.token_hex(6)
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO requests (id, requester, zone, topic, access, duration_s, reason, "
                "created_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (
                    request_id,
                    requester,
                    resource.zone,
                    resource.topic,
                    _access_text(access),
                    int(duration.total_seconds()),
                    reason.strip(),
                    now_s,
                ),
            )
            self._emit(
                AuditEvent(
                    kind="access.request",
                    at=now,
                    principal=requester,
                    allowed=True,
                    reason=reason.strip(),
                    action=_access_text(access),
                    resource=str(resource),
                    details={
                        "request_id": request_id,
                        "duration_s": str(int(duration.total_seconds())),
                    },
                )
            )
            if zone.approvals.count == 0:
                self._issue(cur, self._load_request(cur, request_id, now_s), now, approvers=())
        return self.get_request(request_id, now=now)

    def _load_request(self, cur: sqlite3.Cursor, request_id: str, now_s: int) -> AccessRequest:
        row = cur.execute(
            "SELECT id, requester, zone, topic, access, duration_s, reason, created_at, status, "
            "decided_by, decided_at, decision_reason, grant_id FROM requests WHERE id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            raise AccessRequestError(
                f"no request {request_id!r}; list pending ones with: trustzones access requests"
            )
        approvals = tuple(
            (str(a), from_epoch(int(t)))
            for a, t in cur.execute(
                "SELECT approver, at FROM approvals WHERE request_id = ? ORDER BY at, rowid",
                (request_id,),
            )
        )
        status: RequestStatus = row[8]
        if status == "pending" and now_s - int(row[7]) > REQUEST_TTL.total_seconds():
            status = "expired"
        rule = self.directory.zones.get(str(row[2]))
        return AccessRequest(
            id=str(row[0]),
            requester=str(row[1]),
            resource=Resource(str(row[2]), None if row[3] is None else str(row[3])),
            access=_access_set(str(row[4])),
            duration=timedelta(seconds=int(row[5])),
            reason=str(row[6]),
            created_at=from_epoch(int(row[7])),
            status=status,
            approvals=approvals,
            required_approvals=rule.approvals.count if rule else 0,
            decided_by=None if row[9] is None else str(row[9]),
            decided_at=None if row[10] is None else from_epoch(int(row[10])),
            decision_reason=None if row[11] is None else str(row[11]),
            grant_id=None if row[12] is None else str(row[12]),
        )

    def get_request(self, request_id: str, *, now: datetime) -> AccessRequest:
        with self._lock:
            return self._load_request(self._conn.cursor(), request_id, epoch_seconds(now))

    def requests(
        self, *, now: datetime, status: RequestStatus | None = "pending"
    ) -> list[AccessRequest]:
        """Requests, newest first; ``status`` None lists all."""
        now_s = epoch_seconds(now)
        with self._lock:
            cur = self._conn.cursor()
            ids = [
                str(r[0])
                for r in cur.execute("SELECT id FROM requests ORDER BY created_at DESC, id")
            ]
            found = [self._load_request(cur, i, now_s) for i in ids]
        return [r for r in found if status is None or r.status == status]

    def approve(self, request_id: str, *, approver: str, now: datetime) -> AccessRequest:
        """Record an approval; the grant is issued when the zone's count is reached.

        Refused: self-approval, a second approval by the same approver, an approver without
        the zone's approver role or who does not hold the zone, a request not pending.
        """
        now_s = epoch_seconds(now)
        self._principal(approver)
        with self._tx() as cur:
            req = self._load_request(cur, request_id, now_s)
            if req.status != "pending":
                raise AccessRequestError(f"request {request_id} is {req.status}, not pending")
            if approver == req.requester:
                raise AccessDenied(
                    f"{approver} cannot approve their own request {request_id}: "
                    "self-approval is not allowed"
                )
            if any(a == approver for a, _ in req.approvals):
                raise AccessRequestError(f"{approver} has already approved request {request_id}")
            self._check_approver(cur, approver, req, now_s)
            cur.execute("INSERT INTO approvals VALUES (?, ?, ?)", (request_id, approver, now_s))
            self._emit(
                AuditEvent(
                    kind="access.approve",
                    at=now,
                    principal=approver,
                    allowed=True,
                    reason=f"approved request {request_id} of {req.requester}",
                    action=_access_text(req.access),
                    resource=str(req.resource),
                    details={"request_id": request_id, "requester": req.requester},
                )
            )
            req = self._load_request(cur, request_id, now_s)
            if len(req.approvals) >= req.required_approvals:
                self._issue(cur, req, now, approvers=tuple(a for a, _ in req.approvals))
        return self.get_request(request_id, now=now)

    def _issue(
        self,
        cur: sqlite3.Cursor,
        req: AccessRequest,
        now: datetime,
        *,
        approvers: tuple[str, ...],
    ) -> str:
        now_s = epoch_seconds(now)
        grant_id = "grant-" + secrets.token_hex(6)
        expires_s = now_s + int(req.duration.total_seconds())
        cur.execute(
            "INSERT INTO grants VALUES (?, ?, ?, ?, ?, 'jit', ?, ?, ?, ?, ?, ?)",
            (
                grant_id,
                req.requester,
                req.resource.zone,
                req.resource.topic,
                _access_text(req.access),
                req.id,
                req.reason,
                now_s,
                expires_s,
                len(approvers),
                json.dumps(list(approvers)),
            ),
        )
        cur.execute(
            "UPDATE requests SET status = 'granted', decided_at = ?, grant_id = ? WHERE id = ?",
            (now_s, grant_id, req.id),
        )
        self._emit(
            AuditEvent(
                kind="access.grant",
                at=now,
                principal=req.requester,
                allowed=True,
                reason=req.reason,
                action=_access_text(req.access),
                resource=str(req.resource),
                details={
                    "grant_id": grant_id,
                    "request_id": req.id,
                    "approved_by": ",".join(approvers),
                    "expires_at": from_epoch(expires_s).isoformat(),
                },
            )
        )
        return grant_id

    def deny(
        self, request_id: str, *, actor: str, now: datetime, reason: str = ""
    ) -> AccessRequest:
        """Refuse a pending request (an eligible approver) or withdraw it (the requester)."""
        now_s = epoch_seconds(now)
        self._principal(actor)
        with self._tx() as cur:
            req = self._load_request(cur, request_id, now_s)
            if req.status != "pending":
                raise AccessRequestError(f"request {request_id} is {req.status}, not pending")
            status = "withdrawn" if actor == req.requester else "denied"
            if status == "denied":
                self._check_approver(cur, actor, req, now_s)
            cur.execute(
                "UPDATE requests SET status = ?, decided_by = ?, decided_at = ?, "
                "decision_reason = ? WHERE id = ?",
                (status, actor, now_s, reason, request_id),
            )
            self._emit(
                AuditEvent(
                    kind="access.deny",
                    at=now,
                    principal=actor,
                    allowed=False,
                    reason=reason or status,
                    action=_access_text(req.access),
                    resource=str(req.resource),
                    details={
                        "request_id": request_id,
                        "requester": req.requester,
                        "status": status,
                    },
                )
            )
        return self.get_request(request_id, now=now)

    # -- grants -----------------------------------------------------------------------------

    def break_glass(
        self,
        principal: str,
        resource: Resource,
        *,
        access: frozenset[Action],
        reason: str,
        now: datetime,
    ) -> GrantInfo:
        """Grant at once, for the zone's fixed break-glass duration, flagged for review.

        Only ``user`` principals whose clearance covers the zone (even for writing), holding
        one of the zone's break-glass roles when it names some; a reason is required.
        """
        now_s = epoch_seconds(now)
        self._principal(principal)
        zone = self._zone_rule(resource)
        info = self.directory.principals[principal]
        if not reason.strip():
            raise AccessRequestError('break-glass needs a reason (--reason "what is on fire")')
        if info.kind != "user":
            raise AccessDenied("break-glass is for named users, not service accounts")
        if zone.break_glass_roles is not None and not (zone.break_glass_roles & info.roles):
            roles = ", ".join(sorted(zone.break_glass_roles)) or "nobody (disabled)"
            raise AccessDenied(f"zone {zone.name} allows break-glass only to roles: {roles}")
        if not access:
            raise AccessRequestError("break-glass needs an access: read, write or both")
        self._check_eligible(principal, resource, frozenset({"read"}))
        grant_id = "grant-" + secrets.token_hex(6)
        expires_s = now_s + int(zone.break_glass_duration.total_seconds())
        with self._tx() as cur:
            cur.execute(
                "INSERT INTO grants VALUES (?, ?, ?, ?, ?, 'break_glass', NULL, ?, ?, ?, 0, '[]')",
                (
                    grant_id,
                    principal,
                    resource.zone,
                    resource.topic,
                    _access_text(access),
                    reason.strip(),
                    now_s,
                    expires_s,
                ),
            )
            self._emit(
                AuditEvent(
                    kind="access.break_glass",
                    at=now,
                    principal=principal,
                    allowed=True,
                    reason=reason.strip(),
                    action=_access_text(access),
                    resource=str(resource),
                    flagged=True,
                    details={
                        "grant_id": grant_id,
                        "expires_at": from_epoch(expires_s).isoformat(),
                    },
                )
            )
            row = cur.execute(
                "SELECT id, principal, zone, topic, access, source, reason, issued_at, "
                "expires_at, approvals, approved_by FROM grants WHERE id = ?",
                (grant_id,),
            ).fetchone()
        return self._grant_from_row(row)

    def revoke(self, grant_id: str, *, actor: str, reason: str, now: datetime) -> None:
        """Revoke a grant (issued here or standing from the config), effective at once.

        Allowed to the grantee, to an admin role and to an eligible approver of the zone.
        """
        now_s = epoch_seconds(now)
        self._principal(actor)
        if not reason.strip():
            raise AccessRequestError("a revocation needs a reason (--reason)")
        with self._tx() as cur:
            grant = next((g for g in self._all_grants(cur) if g.id == grant_id), None)
            if grant is None:
                raise AccessRequestError(
                    f"no grant {grant_id!r}; list them with: trustzones access grants"
                )
            if grant_id in self._revoked(cur):
                raise AccessRequestError(f"grant {grant_id} is already revoked")
            info = self.directory.principals[actor]
            rule = self.directory.zones[grant.zone]
            allowed = (
                actor == grant.principal
                or bool(info.roles & self.directory.admin_roles)
                or (
                    rule.approvals.approver_role is not None
                    and rule.approvals.approver_role in info.roles
                    and self._holds_zone(cur, actor, grant.zone, now_s)
                )
            )
            if not allowed:
                raise AccessDenied(
                    f"{actor} cannot revoke grant {grant_id}: only its holder, an approver of "
                    f"zone {grant.zone} or a security admin can"
                )
            cur.execute(
                "INSERT INTO revocations VALUES (?, ?, ?, ?)", (grant_id, now_s, actor, reason)
            )
            self._emit(
                AuditEvent(
                    kind="access.revoke",
                    at=now,
                    principal=actor,
                    allowed=True,
                    reason=reason,
                    action=_access_text(grant.access),
                    resource=grant.scope,
                    details={"grant_id": grant_id, "grantee": grant.principal},
                )
            )

    def active_grants(self, *, now: datetime) -> tuple[list[GrantInfo], frozenset[str]]:
        """Grants issued here that are unrevoked and unexpired, and every revoked grant id."""
        now_s = epoch_seconds(now)
        with self._lock:
            cur = self._conn.cursor()
            rows = cur.execute(
                "SELECT id, principal, zone, topic, access, source, reason, issued_at, "
                "expires_at, approvals, approved_by FROM grants WHERE expires_at > ? "
                "AND id NOT IN (SELECT grant_id FROM revocations)",
                (now_s,),
            ).fetchall()
            revoked = frozenset(self._revoked(cur))
        return [self._grant_from_row(r) for r in rows], revoked

    def record_usage(self, usage: Mapping[str, int]) -> None:
        """Store when grants were last used (epoch seconds), keeping the latest."""
        if not usage:
            return
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany(
                    "INSERT INTO usage VALUES (?, ?) ON CONFLICT (grant_id) DO UPDATE SET "
                    "last_used = max(last_used, excluded.last_used)",
                    list(usage.items()),
                )
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def grants(
        self,
        *,
        now: datetime,
        principal: str | None = None,
        zone: str | None = None,
        include_inactive: bool = False,
    ) -> list[GrantView]:
        """Standing and issued grants, with approvers, last use, staleness and flags."""
        now_s = epoch_seconds(now)
        with self._lock:
            cur = self._conn.cursor()
            grants = self._all_grants(cur)
            revocations = {
                str(r[0]): (int(r[1]), str(r[2]))
                for r in cur.execute("SELECT grant_id, at, by FROM revocations")
            }
            usage = {
                str(r[0]): int(r[1]) for r in cur.execute("SELECT grant_id, last_used FROM usage")
            }
        views: list[GrantView] = []
        for g in grants:
            if (principal and g.principal != principal) or (zone and g.zone != zone):
                continue
            revoked = revocations.get(g.id)
            status: Literal["active", "expired", "revoked"] = (
                "revoked" if revoked else "active" if g.live_at(now_s) else "expired"
            )
            if status != "active" and not include_inactive:
                continue
            rule = self.directory.zones[g.zone]
            stale_s = int(rule.stale_after.total_seconds())
            last = usage.get(g.id)
            issued_s = epoch_seconds(g.issued_at) if g.issued_at else None
            reference = last if last is not None else issued_s
            stale = status == "active" and (reference is None or now_s - reference > stale_s)
            views.append(
                GrantView(
                    id=g.id,
                    principal=g.principal,
                    resource=Resource(g.zone, g.topic),
                    access=g.access,
                    source=g.source,
                    status=status,
                    issued_at=g.issued_at,
                    expires_at=g.expires_at,
                    approved_by=g.approved_by if g.source != "config" else ("config",),
                    reason=g.reason,
                    last_used=None if last is None else from_epoch(last),
                    stale=stale,
                    break_glass=g.source == "break_glass",
                    revoked_by=revoked[1] if revoked else None,
                    revoked_at=from_epoch(revoked[0]) if revoked else None,
                )
            )
        views.sort(key=lambda v: (v.resource.zone, v.resource.topic or "", v.principal, v.id))
        return views

    def review(self, zone: str, *, actor: str, now: datetime) -> list[GrantView]:
        """The access review of a zone: every grant, active or not (PCI DSS 7.2.4).

        Open to security admins and to holders of the zone's approver role.
        """
        rule = self.directory.zones.get(zone)
        if rule is None:
            raise AccessRequestError(f"unknown zone {zone!r}")
        self._principal(actor)
        roles = self.directory.principals[actor].roles
        approver_role = rule.approvals.approver_role
        if not (roles & self.directory.admin_roles or (approver_role and approver_role in roles)):
            raise AccessDenied(
                f"{actor} cannot review zone {zone}: reviews are for security admins and "
                "the zone's approvers"
            )
        return self.grants(now=now, zone=zone, include_inactive=True)
