"""Quarantine: every record a flow refused, held in the source zone with its reason.

Held records live in the flow's quarantine topic (``tz.quarantine.<flow>``) in the source
zone, so refused data never leaves the zone it came from. Decisions about them (released,
discarded) are appended to ``tz.quarantine.<flow>.decisions``; nothing is ever deleted.

A release re-runs the record through the flow's transforms and the destination's schema and
classification checks (the DLP scan is what the approvers overrode), needs an approved
``release`` request, and writes the record together with an idempotency marker in one
destination transaction: a release that crashes half way and is retried delivers once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from trustzones.errors import AccessDenied, ApprovalRequired, FlowError
from trustzones.flows._approvals import Approvals
from trustzones.flows._runner import FlowRunner
from trustzones.streams import NewRecord, Record

__all__ = ["HeldRecord", "Quarantine"]

HeldStatus = Literal["held", "released", "discarded"]


@dataclass(frozen=True)
class HeldRecord:
    flow: str
    offset: int
    source_partition: int
    source_offset: int
    reason: str
    findings: list[dict[str, Any]]
    policy: str
    quarantined_at_ms: int
    status: HeldStatus

    def to_dict(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "offset": self.offset,
            "source_partition": self.source_partition,
            "source_offset": self.source_offset,
            "reason": self.reason,
            "findings": self.findings,
            "policy": self.policy,
            "quarantined_at": self.quarantined_at_ms,
            "status": self.status,
        }


def _h(r: Record, name: str) -> str:
    v = r.header(name)
    return v.decode() if v is not None else ""


class Quarantine:
    """Review and resolve the records one flow refused. Every method needs source rights."""

    def __init__(self, runner: FlowRunner, approvals: Approvals) -> None:
        self.runner = runner
        self.approvals = approvals
        self.ws = runner.ws
        self.flow = runner.name
        self.topic = runner.quarantine_topic
        self.decisions_topic = f"{self.topic}.decisions"

    def _require(self, principal: str) -> None:
        try:
            self.ws.authorize(principal, "read", self.runner.source_topic)
        except AccessDenied as exc:
            raise AccessDenied(
                f"the quarantine of flow {self.flow!r} is in zone {self.runner.source_zone!r}: "
                f"{exc}"
            ) from None

    def _records(self) -> list[Record]:
        src = self.ws.backend(self.runner.source_zone)
        self.runner.prepare()
        out: list[Record] = []
        off = 0
        while True:
            batch = src.fetch(self.topic, 0, off, max_records=1000)
            if not batch:
                return out
            out += batch
            off = batch[-1].offset + 1

    def _decisions(self) -> dict[int, str]:
        src = self.ws.backend(self.runner.source_zone)
        out: dict[int, str] = {}
        off = 0
        while True:
            batch = src.fetch(self.decisions_topic, 0, off, max_records=1000)
            if not batch:
                return out
            for r in batch:
                d = orjson.loads(r.value)
                out[int(d["offset"])] = str(d["decision"])
            off = batch[-1].offset + 1

    def _held(self, r: Record, decisions: dict[int, str]) -> HeldRecord:
        status = decisions.get(r.offset, "held")
        return HeldRecord(
            flow=self.flow,
            offset=r.offset,
            source_partition=int(_h(r, "tz.source.partition") or -1),
            source_offset=int(_h(r, "tz.source.offset") or -1),
            reason=_h(r, "tz.reason"),
            findings=orjson.loads(r.header("tz.findings") or b"[]"),
            policy=_h(r, "tz.policy"),
            quarantined_at_ms=int(_h(r, "tz.quarantined_at") or 0),
            status=status,  # type: ignore[arg-type]
        )

    def list(self, *, principal: str, include_decided: bool = False) -> list[HeldRecord]:
        self._require(principal)
        decisions = self._decisions()
        held = [self._held(r, decisions) for r in self._records()]
        return held if include_decided else [h for h in held if h.status == "held"]

    def _get(self, offset: int) -> Record:
        src = self.ws.backend(self.runner.source_zone)
        self.runner.prepare()
        got = src.fetch(self.topic, 0, offset, max_records=1)
        if not got or got[0].offset != offset:
            raise FlowError(f"no record at offset {offset} in the quarantine of {self.flow!r}")
        return got[0]

    def show(self, offset: int, *, principal: str) -> tuple[HeldRecord, bytes]:
        self._require(principal)
        r = self._get(offset)
        self.runner._emit(
            "quarantine.shown", {"flow": self.flow, "offset": offset, "principal": principal}
        )
        return self._held(r, self._decisions()), r.value

    def _target(self, offset: int) -> str:
        return f"{self.topic}@{offset}"

    def release(self, offset: int, *, principal: str, reason: str = "") -> HeldRecord:
        """Release a held record. Without an approved request, opens one and raises
        :class:`ApprovalRequired` saying who must approve."""
        self._require(principal)
        r = self._get(offset)
        held = self._held(r, self._decisions())
        if held.status != "held":
            raise FlowError(
                f"quarantined record {offset} of {self.flow!r} is already {held.status}"
            )
        target = self._target(offset)
        if not self.approvals.is_approved("release", self.flow, target):
            rule = self.runner.spec.approvals
            req = self.approvals.request(
                "release",
                self.flow,
                target,
                zone=self.runner.source_zone,
                requester=principal,
                required=max(1, rule.count),
                approver_role=rule.approver_role,
                reason=reason or f"release quarantined record {offset} of {self.flow}",
            )
            if req.status != "approved":
                raise ApprovalRequired(
                    f"releasing record {offset} of flow {self.flow!r} needs approval: request "
                    f"{req.id} waits for {req.describe_needs()}"
                )
        found = self.approvals.find("release", self.flow, target)
        assert found is not None
        req = found
        outcome = self.runner.decide(r.value, scan=False)
        if outcome.kind != "deliver":
            raise FlowError(
                f"record {offset} of {self.flow!r} cannot be released: {outcome.reason}"
            )
        dst = self.runner.dest_backend()
        marker_group = f"tz.release.{self.flow}"
        if not dst.committed_offsets(marker_group, target):
            headers = (
                *r.headers[:6],
                ("tz.released_by", principal.encode()),
                ("tz.approval", req.id.encode()),
            )
            with dst.transaction(marker_group) as tx:
                tx.produce(
                    self.runner.dest_topic,
                    [NewRecord(value=outcome.value, key=r.key, headers=headers)],
                )
                tx.store_offsets(marker_group, target, {0: 1})
        self._decide(offset, "released", principal, req.id)
        return self._held(r, self._decisions())

    def discard(self, offset: int, *, principal: str, reason: str) -> HeldRecord:
        """Keep the record held forever but mark it reviewed and not to be released."""
        if not reason.strip():
            raise FlowError("discarding a quarantined record needs a reason (--reason)")
        self._require(principal)
        r = self._get(offset)
        held = self._held(r, self._decisions())
        if held.status != "held":
            raise FlowError(
                f"quarantined record {offset} of {self.flow!r} is already {held.status}"
            )
        self._decide(offset, "discarded", principal, None, reason)
        return self._held(r, self._decisions())

    def _decide(
        self, offset: int, decision: str, principal: str, approval: str | None, reason: str = ""
    ) -> None:
        src = self.ws.backend(self.runner.source_zone)
        doc = {
            "offset": offset,
            "decision": decision,
            "by": principal,
            "approval": approval,
            "reason": reason,
            "at": int(time.time() * 1000),
        }
        src.produce(self.decisions_topic, [NewRecord(value=orjson.dumps(doc))])
        self.runner._emit(
            f"quarantine.{decision}",
            {"flow": self.flow, "offset": offset, "principal": principal, "approval": approval},
        )
