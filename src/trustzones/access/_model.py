"""The access part's own input and output types.

The config part fills a :class:`Directory` from ``trustzones.yaml``; nothing here imports the
config model, so the access part stands alone and is tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal, get_args

from trustzones.errors import ConfigError

__all__ = [
    "AUTH_METHODS",
    "Action",
    "ApprovalRule",
    "AuditEvent",
    "AuditSink",
    "AuthMethod",
    "Decision",
    "Directory",
    "GrantInfo",
    "GrantSource",
    "Identity",
    "PrincipalInfo",
    "PrincipalKind",
    "Resource",
    "ZoneRule",
    "epoch_seconds",
]

Action = Literal["read", "write"]
AuthMethod = Literal["password", "api_key", "mtls", "oidc"]
PrincipalKind = Literal["user", "service"]
GrantSource = Literal["config", "jit", "break_glass"]

ACTIONS: tuple[Action, ...] = get_args(Action)
AUTH_METHODS: frozenset[AuthMethod] = frozenset(get_args(AuthMethod))
PRINCIPAL_KINDS: frozenset[PrincipalKind] = frozenset(get_args(PrincipalKind))

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


def epoch_seconds(when: datetime) -> int:
    """Whole seconds since the epoch of an aware datetime; a naive one is a programming error."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("times must be timezone-aware (use datetime.now(UTC))")
    return int(when.timestamp())


def from_epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use letters, digits, '.', '_', '@' or '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """How many distinct approvers a just-in-time request needs, and which role they hold."""

    count: int = 0
    approver_role: str | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError(f"approvals count must be 0 or more, not {self.count}")


@dataclass(frozen=True, slots=True)
class ZoneRule:
    """The access controls of one zone.

    ``auth_methods`` are the methods a session may have used; ``mfa_required`` and
    ``jit_required`` apply to ``user`` principals (a service account has no second factor and
    holds standing grants from the config); ``approvals`` is what a just-in-time request
    needs; ``principal_kinds`` narrows who may act in the zone at all (``{"user"}`` for "named
    individuals only"). ``break_glass_roles`` ``None`` lets any user whose clearance suffices
    break glass; a set restricts it to holders of one of those roles; an empty set disables it.
    A grant unused for ``stale_after`` is reported stale by the access review.
    """

    name: str
    classification: str
    topics: frozenset[str] = frozenset()
    auth_methods: frozenset[AuthMethod] = AUTH_METHODS
    mfa_required: bool = False
    jit_required: bool = False
    approvals: ApprovalRule = ApprovalRule()
    principal_kinds: frozenset[PrincipalKind] = PRINCIPAL_KINDS
    max_grant_duration: timedelta = timedelta(hours=8)
    break_glass_duration: timedelta = timedelta(minutes=30)
    break_glass_roles: frozenset[str] | None = None
    stale_after: timedelta = timedelta(days=30)

    def __post_init__(self) -> None:
        _check_name("zone", self.name)
        for topic in self.topics:
            _check_name("topic", topic)
        unknown = set(self.auth_methods) - AUTH_METHODS
        if unknown or not self.auth_methods:
            raise ConfigError(
                f"zone {self.name}: auth methods must be a non-empty subset of "
                f"{sorted(AUTH_METHODS)}, got {sorted(self.auth_methods)}"
            )
        if not self.principal_kinds or set(self.principal_kinds) - PRINCIPAL_KINDS:
            raise ConfigError(
                f"zone {self.name}: principal kinds must be a non-empty subset of "
                f"{sorted(PRINCIPAL_KINDS)}"
            )
        if self.max_grant_duration < timedelta(minutes=1):
            raise ConfigError(f"zone {self.name}: max grant duration must be at least 1 minute")
        if not timedelta(minutes=1) <= self.break_glass_duration <= timedelta(hours=4):
            raise ConfigError(
                f"zone {self.name}: break-glass duration must be between 1 minute and 4 hours"
            )


@dataclass(frozen=True, slots=True)
class PrincipalInfo:
    """A user or service account. ``mfa_required`` makes every login need a TOTP code."""

    name: str
    kind: PrincipalKind
    clearance: str
    auth_methods: frozenset[AuthMethod]
    roles: frozenset[str] = frozenset()
    mfa_required: bool = False

    def __post_init__(self) -> None:
        _check_name("principal", self.name)
        if self.kind not in PRINCIPAL_KINDS:
            raise ConfigError(f"principal {self.name}: kind must be 'user' or 'service'")
        if set(self.auth_methods) - AUTH_METHODS:
            raise ConfigError(
                f"principal {self.name}: unknown auth methods "
                f"{sorted(set(self.auth_methods) - AUTH_METHODS)}"
            )


@dataclass(frozen=True, slots=True)
class GrantInfo:
    """Permission for ``principal`` to ``access`` a whole zone (``topic`` None) or one topic.

    Standing grants come from the config (``source="config"``); the grant store issues
    ``"jit"`` and ``"break_glass"`` grants. ``expires_at`` None means no expiry.
    """

    id: str
    principal: str
    zone: str
    topic: str | None
    access: frozenset[Action]
    expires_at: datetime | None = None
    source: GrantSource = "config"
    approvals: int = 0
    approved_by: tuple[str, ...] = ()
    issued_at: datetime | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("a grant needs a non-empty id")
        if not self.access or set(self.access) - set(ACTIONS):
            raise ConfigError(f"grant {self.id}: access must be a non-empty subset of read/write")
        if self.expires_at is not None:
            epoch_seconds(self.expires_at)

    def covers(self, zone: str, topic: str | None, action: Action) -> bool:
        if action not in self.access or zone != self.zone:
            return False
        return self.topic is None or self.topic == topic

    def live_at(self, now_s: int) -> bool:
        return self.expires_at is None or epoch_seconds(self.expires_at) > now_s

    @property
    def scope(self) -> str:
        return self.zone if self.topic is None else f"{self.zone}/{self.topic}"


@dataclass(frozen=True, slots=True)
class Resource:
    """What is accessed: a whole zone (``topic`` None) or one topic in it."""

    zone: str
    topic: str | None = None

    @classmethod
    def parse(cls, text: str) -> Resource:
        """``"payments"`` is a zone, ``"payments/cards"`` a topic in it."""
        zone, sep, topic = text.partition("/")
        return cls(zone, topic if sep else None)

    def __str__(self) -> str:
        return self.zone if self.topic is None else f"{self.zone}/{self.topic}"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated session: who, how, and whether a second factor was verified."""

    principal: str
    method: AuthMethod
    mfa: bool

    def __post_init__(self) -> None:
        if self.method not in AUTH_METHODS or not isinstance(self.mfa, bool):
            raise ValueError(f"invalid identity: method {self.method!r}, mfa {self.mfa!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of the policy decision point. ``reason`` is safe to show to the caller."""

    allowed: bool
    reason: str
    policy_version: str
    grant_id: str | None = None
    break_glass: bool = False


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One thing the access part did, for the audit zone.

    ``kind`` is ``access.decision``, ``access.authenticate``, ``access.request``,
    ``access.approve``, ``access.deny``, ``access.grant``, ``access.revoke`` or
    ``access.break_glass``. ``flagged`` marks break-glass use. ``details`` may hold the
    detailed failure reason that the caller is never shown; it never holds a secret.
    """

    kind: str
    at: datetime
    principal: str
    allowed: bool
    reason: str
    action: str = ""
    resource: str = ""
    flagged: bool = False
    details: Mapping[str, str] = field(default_factory=dict)


AuditSink = Callable[[AuditEvent], None]


class Directory:
    """Zones, principals and standing grants, as the policy decision point sees them.

    ``levels`` lists the classification names from least to most sensitive. Construction
    checks every cross reference and raises :class:`~trustzones.errors.ConfigError` listing
    all problems.
    """

    __slots__ = ("_grants", "_principals", "_ranks", "_zones", "admin_roles", "levels")

    def __init__(
        self,
        *,
        levels: Iterable[str],
        zones: Iterable[ZoneRule],
        principals: Iterable[PrincipalInfo],
        grants: Iterable[GrantInfo] = (),
        admin_roles: Iterable[str] = ("security-admin",),
    ) -> None:
        self.levels: tuple[str, ...] = tuple(levels)
        self.admin_roles: frozenset[str] = frozenset(admin_roles)
        issues: list[str] = []
        if not self.levels or len(set(self.levels)) != len(self.levels):
            issues.append("classification levels must be a non-empty list without repeats")
        self._ranks = {name: rank for rank, name in enumerate(self.levels)}
        zone_map: dict[str, ZoneRule] = {}
        for zone in zones:
            if zone.name in zone_map:
                issues.append(f"zone {zone.name} is declared twice")
            if zone.classification not in self._ranks:
                issues.append(
                    f"zone {zone.name}: unknown classification {zone.classification!r} "
                    f"(known: {', '.join(self.levels)})"
                )
            zone_map[zone.name] = zone
        principal_map: dict[str, PrincipalInfo] = {}
        for principal in principals:
            if principal.name in principal_map:
                issues.append(f"principal {principal.name} is declared twice")
            if principal.clearance not in self._ranks:
                issues.append(
                    f"principal {principal.name}: unknown clearance {principal.clearance!r} "
                    f"(known: {', '.join(self.levels)})"
                )
            principal_map[principal.name] = principal
        grant_list: list[GrantInfo] = []
        seen: set[str] = set()
        for grant in grants:
            if grant.id in seen:
                issues.append(f"grant id {grant.id} is used twice")
            seen.add(grant.id)
            if grant.principal not in principal_map:
                issues.append(f"grant {grant.id}: unknown principal {grant.principal}")
            zone_rule = zone_map.get(grant.zone)
            if zone_rule is None:
                issues.append(f"grant {grant.id}: unknown zone {grant.zone}")
            elif grant.topic is not None and grant.topic not in zone_rule.topics:
                issues.append(f"grant {grant.id}: zone {grant.zone} has no topic {grant.topic}")
            grant_list.append(grant)
        if issues:
            raise ConfigError(
                "the access directory is invalid: " + "; ".join(issues), issues=issues
            )
        self._zones: Mapping[str, ZoneRule] = MappingProxyType(zone_map)
        self._principals: Mapping[str, PrincipalInfo] = MappingProxyType(principal_map)
        self._grants: tuple[GrantInfo, ...] = tuple(grant_list)

    @property
    def zones(self) -> Mapping[str, ZoneRule]:
        return self._zones

    @property
    def principals(self) -> Mapping[str, PrincipalInfo]:
        return self._principals

    @property
    def grants(self) -> tuple[GrantInfo, ...]:
        return self._grants

    def rank(self, level: str) -> int:
        """Position of a classification name, 0 for the least sensitive."""
        return self._ranks[level]

    def resolve(self, text: str) -> Resource:
        """Turn ``zone``, ``zone/topic`` or a topic name unique across zones into a resource."""
        if "/" in text:
            resource = Resource.parse(text)
        elif text in self._zones:
            resource = Resource(text)
        else:
            owners = [z.name for z in self._zones.values() if text in z.topics]
            if len(owners) != 1:
                hint = "no zone has it" if not owners else f"zones {', '.join(owners)} have it"
                raise ConfigError(f"cannot resolve {text!r}: {hint}; write it as zone/topic")
            resource = Resource(owners[0], text)
        zone = self._zones.get(resource.zone)
        if zone is None:
            raise ConfigError(f"unknown zone {resource.zone!r}")
        if resource.topic is not None and resource.topic not in zone.topics:
            raise ConfigError(f"zone {resource.zone} has no topic {resource.topic!r}")
        return resource
