"""Authorization seam of the zone runtime.

Every produce and consume asks an :class:`Authorizer`. The rules it must apply are
DESIGN.md's invariants 1 and 2: deny by default; reading needs clearance ≥ the zone's
classification *and* a live grant; writing needs a live grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from trustzones.config import Config

Action = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    policy_version: str = ""
    grant_id: str | None = None


class Authorizer(Protocol):
    def decide(self, principal: str, action: Action, topic: str, *, now: datetime) -> Decision: ...


class GrantAuthorizer:
    """The standing grants of ``trustzones.yaml``, checked in plain Python.

    This is the policy with no just-in-time grants, no sessions and no custom policies: the
    access part's Cedar decision point supersedes it wherever a credential store exists.
    """

    def __init__(self, config: Config) -> None:
        self._c = config

    def decide(self, principal: str, action: Action, topic: str, *, now: datetime) -> Decision:
        c = self._c
        pv = c.policy_version
        p = c.principals.get(principal)
        if p is None:
            return Decision(False, f"unknown principal {principal!r}", pv)
        t = c.topics.get(topic)
        if t is None:
            return Decision(False, f"unknown topic {topic!r}", pv)
        zone = c.zones[t.zone]
        if action == "read" and c.level(p.clearance) < c.level(zone.classification):
            return Decision(
                False,
                f"clearance {p.clearance!r} of {principal!r} is below zone {zone.name!r} "
                f"({zone.classification}): no read up",
                pv,
            )
        for i, g in enumerate(c.grants):
            if g.principal != principal or action not in g.access:
                continue
            if g.topic != topic and g.zone != zone.name:
                continue
            if g.expires is not None and g.expires <= now:
                continue
            return Decision(True, f"standing grant grants[{i}]", pv, f"config:{i}")
        for f in c.flows.values():
            if f.principal == principal and (
                (action == "read" and f.source == topic)
                or (action == "write" and f.destination == topic)
            ):
                return Decision(True, f"flow {f.name!r}", pv, f"flow:{f.name}")
        return Decision(False, f"no live {action} grant for {principal!r} on {topic!r}", pv)


def utcnow() -> datetime:
    return datetime.now(UTC)
