"""Approvals: N distinct approvers, none of them the requester, each holding the zone.

One mechanism serves two kinds of request: ``flow`` (run this exact flow definition, named
by its hash) and ``release`` (let this quarantined record through). A request is approved
once ``required`` distinct principals approved it; one deny ends it. A changed definition
has a different hash, so it needs a new approval.

The store is one SQLite file in the workspace state directory (outside every zone): it holds
names, hashes and record positions, never record contents.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trustzones.errors import AccessDenied, FlowError

__all__ = ["ApprovalRequest", "Approvals", "RequestKind"]

RequestKind = Literal["flow", "release"]
Status = Literal["pending", "approved", "denied"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT NULL, target TEXT NOT NULL,
    zone TEXT NOT NULL, requester TEXT NOT NULL, required INTEGER NOT NULL,
    approver_role TEXT, reason TEXT NOT NULL, created_ms INTEGER NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_target ON requests (kind, subject, target);
CREATE TABLE IF NOT EXISTS votes (
    request_id TEXT NOT NULL REFERENCES requests(id), approver TEXT NOT NULL,
    decision TEXT NOT NULL, comment TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);
"""


@dataclass(frozen=True)
class ApprovalRequest:
    id: str
    kind: RequestKind
    subject: str
    target: str
    zone: str
    requester: str
    required: int
    approver_role: str | None
    reason: str
    created_ms: int
    status: Status
    approvers: tuple[str, ...]

    def describe_needs(self) -> str:
        missing = self.required - len(self.approvers)
        role = f" with role {self.approver_role!r}" if self.approver_role else ""
        return (
            f"{missing} more approval(s) from principals{role} holding zone {self.zone!r} "
            f"(not {self.requester!r}); approve with `trustzones approvals approve {self.id} "
            "--as NAME`"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "target": self.target,
            "zone": self.zone,
            "requester": self.requester,
            "required": self.required,
            "approver_role": self.approver_role,
            "reason": self.reason,
            "created_ms": self.created_ms,
            "status": self.status,
            "approvers": list(self.approvers),
        }


HoldsZone = Callable[[str, str], bool]
Roles = Callable[[str], frozenset[str]]


class Approvals:
    """The approval store. ``holds_zone(principal, zone)`` and ``roles(principal)`` come from
    the access decision point and the config; they decide who may approve."""

    def __init__(
        self,
        path: Path,
        *,
        holds_zone: HoldsZone,
        roles: Roles,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._holds_zone = holds_zone
        self._roles = roles
        self._on_event = on_event
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _emit(self, action: str, req: ApprovalRequest, **extra: object) -> None:
        if self._on_event is not None:
            self._on_event(action, {**req.to_dict(), **extra})

    def _load(self, row: tuple[Any, ...]) -> ApprovalRequest:
        rid = str(row[0])
        approvers = tuple(
            str(a)
            for (a,) in self._db.execute(
                "SELECT approver FROM votes WHERE request_id=? AND decision='approve' "
                "ORDER BY at_ms",
                (rid,),
            )
        )
        return ApprovalRequest(
            id=rid,
            kind=row[1],
            subject=str(row[2]),
            target=str(row[3]),
            zone=str(row[4]),
            requester=str(row[5]),
            required=int(row[6]),
            approver_role=None if row[7] is None else str(row[7]),
            reason=str(row[8]),
            created_ms=int(row[9]),
            status=row[10],
            approvers=approvers,
        )

    _COLS = (
        "id, kind, subject, target, zone, requester, required, approver_role, reason, "
        "created_ms, status"
    )

    def get(self, request_id: str) -> ApprovalRequest:
        row = self._db.execute(
            f"SELECT {self._COLS} FROM requests WHERE id=?",  # noqa: S608
            (request_id,),
        ).fetchone()
        if row is None:
            raise FlowError(
                f"no approval request {request_id!r}; `trustzones approvals list` "
                "shows the pending ones"
            )
        return self._load(row)

    def find(self, kind: RequestKind, subject: str, target: str) -> ApprovalRequest | None:
        """The newest request for exactly this target (any status)."""
        row = self._db.execute(
            f"SELECT {self._COLS} FROM requests WHERE kind=? AND subject=? AND target=? "  # noqa: S608
            "ORDER BY created_ms DESC, rowid DESC LIMIT 1",
            (kind, subject, target),
        ).fetchone()
        return None if row is None else self._load(row)

    def is_approved(self, kind: RequestKind, subject: str, target: str) -> bool:
        r = self.find(kind, subject, target)
        return r is not None and r.status == "approved"

    def list(self, *, status: Status | None = "pending") -> list[ApprovalRequest]:
        q = f"SELECT {self._COLS} FROM requests"  # noqa: S608
        args: tuple[object, ...] = ()
        if status is not None:
            q += " WHERE status=?"
            args = (status,)
        return [self._load(r) for r in self._db.execute(q + " ORDER BY created_ms", args)]

    def request(
        self,
        kind: RequestKind,
        subject: str,
        target: str,
        *,
        zone: str,
        requester: str,
        required: int,
        approver_role: str | None,
        reason: str = "",
        now_ms: int | None = None,
    ) -> ApprovalRequest:
        """Open a request, or return the live (pending or approved) one for the same target."""
        existing = self.find(kind, subject, target)
        if existing is not None and existing.status != "denied":
            return existing
        rid = secrets.token_hex(6)
        status: Status = "approved" if required <= 0 else "pending"
        with self._tx() as db:
            db.execute(
                "INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rid,
                    kind,
                    subject,
                    target,
                    zone,
                    requester,
                    required,
                    approver_role,
                    reason,
                    now_ms if now_ms is not None else int(time.time() * 1000),
                    status,
                ),
            )
        req = self.get(rid)
        self._emit("approval.requested", req)
        return req

    def _check_approver(self, req: ApprovalRequest, approver: str) -> None:
        if approver == req.requester:
            raise AccessDenied(
                f"{approver!r} requested {req.id!r} and cannot approve or deny it: "
                "self-approval is refused"
            )
        if req.approver_role and req.approver_role not in self._roles(approver):
            raise AccessDenied(
                f"{approver!r} lacks the role {req.approver_role!r} that request {req.id!r} "
                "needs of its approvers"
            )
        if not self._holds_zone(approver, req.zone):
            raise AccessDenied(
                f"{approver!r} does not hold zone {req.zone!r} (clearance and a live read "
                "grant), so cannot approve what leaves it"
            )

    def approve(
        self, request_id: str, *, approver: str, comment: str = "", now_ms: int | None = None
    ) -> ApprovalRequest:
        """Record an approval; the request is approved once ``required`` distinct approvers
        (never its requester, each holding its zone and role) have approved."""
        return self._vote(request_id, approver, "approve", comment, now_ms)

    def deny(
        self, request_id: str, *, approver: str, comment: str = "", now_ms: int | None = None
    ) -> ApprovalRequest:
        """Deny: one qualified approver's deny ends the request."""
        return self._vote(request_id, approver, "deny", comment, now_ms)

    def _vote(
        self,
        request_id: str,
        approver: str,
        decision: Literal["approve", "deny"],
        comment: str,
        now_ms: int | None,
    ) -> ApprovalRequest:
        self._check_approver(self.get(request_id), approver)
        at = now_ms if now_ms is not None else int(time.time() * 1000)
        with self._tx() as db:
            # 1. Re-read the status inside the write lock: a concurrent vote may have ended it.
            (status, required) = db.execute(
                "SELECT status, required FROM requests WHERE id=?", (request_id,)
            ).fetchone()
            if status != "pending":
                raise FlowError(f"request {request_id!r} is already {status}")
            # 2. Record the vote (one per approver), 3. then settle the request.
            db.execute(
                "INSERT OR REPLACE INTO votes VALUES (?,?,?,?,?)",
                (request_id, approver, decision, comment, at),
            )
            if decision == "deny":
                db.execute("UPDATE requests SET status='denied' WHERE id=?", (request_id,))
            else:
                n = db.execute(
                    "SELECT count(*) FROM votes WHERE request_id=? AND decision='approve'",
                    (request_id,),
                ).fetchone()[0]
                if n >= required:
                    db.execute("UPDATE requests SET status='approved' WHERE id=?", (request_id,))
        out = self.get(request_id)
        self._emit(
            "approval.approved" if decision == "approve" else "approval.denied",
            out,
            approver=approver,
        )
        return out
