"""The policy decision point: one place that answers "may this identity do this, now?".

Steps of :meth:`PolicyDecisionPoint.decide`:

1. catch up with the grant store: a change committed by this process (subscription) or by
   another (SQLite ``data_version``) reloads grants and revocations and empties the cache,
   so a revocation counts from the very next decision;
2. answer from the decision cache if an entry is still fresh: entries live at most
   ``cache_ttl`` (always less than one minute, the grant granularity) and never past the
   expiry of the grant they relied on;
3. refuse unknown principals, zones and topics, and requests with no live grant that covers
   them (the ``invariant:live-grant`` policy would refuse them anyway);
4. ask Cedar with each candidate grant; any evaluation error denies (Cedar itself skips an
   erroring policy, which for a ``forbid`` would fail open);
5. record the grant's use, and hand the decision to the audit sink; if the sink fails the
   answer is deny.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cedarpy
import orjson

from trustzones.access._cedar import (
    NEVER,
    NS,
    build_entities,
    cedar_schema,
    directory_entities,
    load_policies,
)
from trustzones.access._grants import GrantStore
from trustzones.access._model import (
    Action,
    AuditEvent,
    AuditSink,
    Decision,
    Directory,
    GrantInfo,
    Identity,
    Resource,
    epoch_seconds,
    from_epoch,
)
from trustzones.errors import AccessDenied

__all__ = ["PolicyDecisionPoint"]

_log = logging.getLogger(__name__)
_GRANULARITY = timedelta(minutes=1)
_MAX_CANDIDATES = 4
_MAX_CACHE = 100_000


@dataclass(frozen=True, slots=True)
class _Candidate:
    grant: GrantInfo
    expires_s: int
    context_ref: str  # the JSON of the grant's entity reference, made once per reload

    def usable(self, zone: str, topic: str | None, action: Action, now_s: int) -> bool:
        g = self.grant
        return (
            self.expires_s > now_s
            and g.zone == zone
            and (g.topic is None or g.topic == topic)
            and action in g.access
        )


@dataclass(frozen=True, slots=True)
class _Cached:
    decision: Decision
    since: int
    until: int


class PolicyDecisionPoint:
    """Cedar-backed decisions over a :class:`Directory` plus a :class:`GrantStore`.

    Thread-safe: one lock serialises decisions (Cedar holds the GIL anyway). Decisions are
    deterministic in their inputs; ``now`` must be an aware datetime.
    """

    def __init__(
        self,
        directory: Directory,
        *,
        audit: AuditSink,
        store: GrantStore | None = None,
        policy_dir: Path | None = None,
        cache_ttl: timedelta = timedelta(seconds=5),
        usage_flush_interval: timedelta = timedelta(seconds=10),
    ) -> None:
        if not timedelta(0) <= cache_ttl < _GRANULARITY:
            raise ValueError(
                f"cache_ttl must be shorter than the grant granularity (1 minute); got {cache_ttl}"
            )
        self.directory = directory
        self._audit = audit
        self._store = store
        self._compiled = load_policies(policy_dir)
        # the zone rules are entity data, so they are part of what "the policy" is
        fingerprint = orjson.dumps(directory_entities(directory), option=orjson.OPT_SORT_KEYS)
        self._version = hashlib.sha256(
            self._compiled.version.encode() + b"\0" + fingerprint
        ).hexdigest()[:16]
        self._cache_ttl = int(cache_ttl.total_seconds())
        self._flush_every = int(usage_flush_interval.total_seconds())
        self._lock = threading.RLock()
        self._cache: dict[tuple[Identity, Action, Resource], _Cached] = {}
        self._usage: dict[str, int] = {}
        self._last_flush: int | None = None
        self._dirty = True
        self._store_version: int | None = None
        self._loaded_at = 0
        self._grants: dict[str, list[_Candidate]] = {}
        self._entities: cedarpy.Entities | None = None
        if store is not None:
            store.subscribe(self.invalidate)

    # -- public -------------------------------------------------------------------------------

    @property
    def policy_version(self) -> str:
        """A hash of the schema, the policy set and the zone rules that decide."""
        return self._version

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return self._compiled.sources

    @staticmethod
    def schema_text() -> str:
        return cedar_schema()

    def invalidate(self) -> None:
        """Forget cached decisions and reload grants before the next decision."""
        with self._lock:
            self._dirty = True
            self._cache.clear()

    def decide(
        self, identity: Identity, action: Action, resource: Resource, now: datetime
    ) -> Decision:
        """Allow or deny ``identity`` doing ``action`` on ``resource`` at ``now``."""
        now_s = epoch_seconds(now)
        with self._lock:
            self._sync(now_s)
            key = (identity, action, resource)
            hit = self._cache.get(key) if self._cache_ttl else None
            if hit is not None and hit.since <= now_s < hit.until:
                decision = hit.decision
                details: dict[str, str] = {"cached": "true"}
            else:
                decision, until, details = self._evaluate(identity, action, resource, now_s)
                if self._cache_ttl and until > now_s:
                    if len(self._cache) >= _MAX_CACHE:
                        self._cache.clear()
                    self._cache[key] = _Cached(decision, now_s, until)
        try:
            self._audit(
                AuditEvent(
                    kind="access.decision",
                    at=now,
                    principal=identity.principal,
                    allowed=decision.allowed,
                    reason=decision.reason,
                    action=action,
                    resource=str(resource),
                    flagged=decision.break_glass,
                    details={
                        "method": identity.method,
                        "mfa": str(identity.mfa).lower(),
                        "policy_version": decision.policy_version,
                        "grant_id": decision.grant_id or "",
                        **details,
                    },
                )
            )
        except Exception:
            _log.exception("the audit sink failed; denying (fail closed)")
            return Decision(False, "denied: the audit log is unavailable", self.policy_version)
        if decision.allowed and decision.grant_id is not None:
            with self._lock:
                if self._usage.get(decision.grant_id, -1) < now_s:
                    self._usage[decision.grant_id] = now_s
                self._maybe_flush(now_s)
        return decision

    def authorize(
        self, identity: Identity, action: Action, resource: Resource, now: datetime
    ) -> Decision:
        """:meth:`decide`, raising :class:`~trustzones.errors.AccessDenied` on deny."""
        decision = self.decide(identity, action, resource, now)
        if not decision.allowed:
            raise AccessDenied(
                f"{identity.principal} may not {action} {resource}: {decision.reason}"
            )
        return decision

    def flush_usage(self) -> None:
        """Write the recorded grant usage to the store now."""
        with self._lock:
            if self._store is not None and self._usage:
                self._store.record_usage(self._usage)
            self._usage = {}

    def close(self) -> None:
        self.flush_usage()

    def __enter__(self) -> PolicyDecisionPoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _maybe_flush(self, now_s: int) -> None:
        if self._store is None:
            return
        if self._last_flush is None:
            self._last_flush = now_s
        elif now_s - self._last_flush >= self._flush_every:
            self._store.record_usage(self._usage)
            self._usage = {}
            self._last_flush = now_s

    def _sync(self, now_s: int) -> None:
        if self._store is not None:
            version = self._store.data_version()
            if version != self._store_version:
                self._store_version = version
                self._dirty = True
        if now_s < self._loaded_at:
            self._dirty = True  # time went backwards: grants dropped as expired may be live
        if not self._dirty:
            return
        grants = list(self.directory.grants)
        revoked: frozenset[str] = frozenset()
        if self._store is not None:
            issued, revoked = self._store.active_grants(now=from_epoch(now_s))
            grants.extend(issued)
        live = [g for g in grants if g.id not in revoked]
        by_principal: dict[str, list[_Candidate]] = {}
        for g in live:
            expires_s = NEVER if g.expires_at is None else epoch_seconds(g.expires_at)
            ref = orjson.dumps({"__entity": {"type": f"{NS}::Grant", "id": g.id}}).decode()
            by_principal.setdefault(g.principal, []).append(_Candidate(g, expires_s, ref))
        for candidates in by_principal.values():
            # prefer ordinary grants, so break-glass is only used (and flagged) when needed
            candidates.sort(key=lambda c: (c.grant.source == "break_glass", c.grant.id))
        self._grants = by_principal
        self._entities = build_entities(self.directory, live)
        self._cache.clear()
        self._loaded_at = now_s
        self._dirty = False

    def _deny(self, reason: str) -> tuple[Decision, int, dict[str, str]]:
        return Decision(False, reason, self.policy_version), 0, {}

    def _evaluate(
        self, identity: Identity, action: Action, resource: Resource, now_s: int
    ) -> tuple[Decision, int, dict[str, str]]:
        principal = self.directory.principals.get(identity.principal)
        if principal is None:
            return self._deny(f"unknown principal {identity.principal!r} (deny by default)")
        zone = self.directory.zones.get(resource.zone)
        if zone is None:
            return self._deny(f"unknown zone {resource.zone!r} (deny by default)")
        if resource.topic is not None and resource.topic not in zone.topics:
            return self._deny(f"zone {zone.name} has no topic {resource.topic!r}")
        candidates = [
            c
            for c in self._grants.get(principal.name, ())
            if c.usable(resource.zone, resource.topic, action, now_s)
        ][:_MAX_CANDIDATES]
        entities = self._entities
        if not candidates or entities is None:
            return self._deny(self._explain_no_grant(identity, action, resource))
        request = {
            "principal": {"type": f"{NS}::Principal", "id": principal.name},
            "action": {"type": f"{NS}::Action", "id": action},
            "resource": (
                {"type": f"{NS}::Zone", "id": resource.zone}
                if resource.topic is None
                else {"type": f"{NS}::Topic", "id": f"{resource.zone}/{resource.topic}"}
            ),
            "context": "",
        }
        first_denial: list[str] = []
        # the method is one of four fixed names and mfa a bool, so plain formatting is safe
        session = f'"auth_method":"{identity.method}","mfa":{"true" if identity.mfa else "false"}'
        for candidate in candidates:
            grant = candidate.grant
            request["context"] = f'{{"now":{now_s},{session},"grant":{candidate.context_ref}}}'
            try:
                result = cedarpy.is_authorized(request, self._compiled.policy_set, entities)
            except Exception as exc:  # a crash in the engine is a deny, never an allow
                _log.exception("Cedar evaluation failed")
                return (
                    Decision(False, "denied: policy evaluation failed", self.policy_version),
                    0,
                    {"error": type(exc).__name__},
                )
            errors = result.diagnostics.errors
            if errors:
                return (
                    Decision(False, "denied: a policy failed to evaluate", self.policy_version),
                    0,
                    {"errors": "; ".join(errors)[:2000]},
                )
            if result.allowed:
                until = min(now_s + self._cache_ttl, candidate.expires_s)
                return (
                    Decision(
                        True,
                        f"allowed by grant {grant.id}",
                        self.policy_version,
                        grant.id,
                        grant.source == "break_glass",
                    ),
                    until,
                    {"policies": ",".join(result.diagnostics.reasons)},
                )
            if not first_denial:
                first_denial = list(result.diagnostics.reasons)
        reason = self._explain(identity, action, resource, first_denial)
        return (
            Decision(False, reason, self.policy_version),
            now_s + self._cache_ttl,
            {"policies": ",".join(first_denial)},
        )

    def _explain_no_grant(self, identity: Identity, action: Action, resource: Resource) -> str:
        principal = self.directory.principals[identity.principal]
        zone = self.directory.zones[resource.zone]
        if action == "read" and self.directory.rank(principal.clearance) < self.directory.rank(
            zone.classification
        ):
            return self._explain(identity, action, resource, ["invariant:no-read-up"])
        return (
            f"no live grant for {action} on {resource}: request one with "
            f"trustzones access request (deny by default)"
        )

    def _explain(
        self, identity: Identity, action: Action, resource: Resource, policy_ids: list[str]
    ) -> str:
        principal = self.directory.principals[identity.principal]
        zone = self.directory.zones[resource.zone]
        messages: dict[str, str] = {
            "invariant:no-read-up": (
                f"no read up: clearance {principal.clearance} is below zone {zone.name}'s "
                f"classification {zone.classification}"
            ),
            "invariant:live-grant": f"no live grant for {action} on {resource}",
            "control:auth-methods": (
                f"zone {zone.name} does not accept {identity.method} sessions "
                f"(it accepts {', '.join(sorted(zone.auth_methods))})"
            ),
            "control:mfa": f"zone {zone.name} requires MFA: log in again with a TOTP code",
            "control:principal-kinds": (
                f"zone {zone.name} admits only {'/'.join(sorted(zone.principal_kinds))} principals"
            ),
            "control:jit": (
                f"zone {zone.name} requires just-in-time access: run trustzones access request"
            ),
            "control:approvals": (
                f"zone {zone.name} requires {zone.approvals.count} approvals for the grant"
            ),
        }
        for pid in policy_ids:
            if pid in messages:
                return messages[pid]
        custom = [pid for pid in policy_ids if pid.startswith("custom:")]
        if custom:
            return f"forbidden by policy {custom[0]}"
        return f"no policy permits {action} on {resource} (deny by default)"
