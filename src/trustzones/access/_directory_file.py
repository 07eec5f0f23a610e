"""Read a :class:`Directory` from a small YAML/JSON file.

A stand-in until the config part builds the directory from ``trustzones.yaml``; it lets the
``access`` CLI and tests run on their own. Shape::

    levels: [public, internal, confidential, restricted]
    zones:
      payments:
        classification: restricted
        topics: [cards]
        auth_methods: [mtls, oidc]
        mfa_required: true
        jit_required: true
        approvals: {count: 2, approver_role: executive}
    principals:
      alice: {kind: user, clearance: restricted, auth_methods: [oidc], roles: [executive]}
    grants:
      - {id: g1, principal: alice, zone: payments, topic: cards, access: [read]}
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trustzones.access._model import (
    AUTH_METHODS,
    ApprovalRule,
    AuthMethod,
    Directory,
    GrantInfo,
    PrincipalInfo,
    PrincipalKind,
    ZoneRule,
)
from trustzones.errors import ConfigError

__all__ = ["load_directory"]

_KINDS: tuple[PrincipalKind, ...] = ("user", "service")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Approvals(_Model):
    count: int = 0
    approver_role: str | None = None


class _Zone(_Model):
    classification: str
    topics: list[str] = Field(default_factory=list)
    auth_methods: list[AuthMethod] = Field(default_factory=lambda: sorted(AUTH_METHODS))
    mfa_required: bool = False
    jit_required: bool = False
    approvals: _Approvals = _Approvals()
    principal_kinds: list[PrincipalKind] = Field(default_factory=lambda: list(_KINDS))
    max_grant_duration_minutes: int = 480
    break_glass_minutes: int = 30
    break_glass_roles: list[str] | None = None
    stale_after_days: int = 30


class _Principal(_Model):
    kind: PrincipalKind
    clearance: str
    auth_methods: list[AuthMethod]
    roles: list[str] = Field(default_factory=list)
    mfa_required: bool = False


class _Grant(_Model):
    id: str
    principal: str
    zone: str
    topic: str | None = None
    access: list[Literal["read", "write"]]
    expires_at: datetime | None = None


class _File(_Model):
    levels: list[str]
    zones: dict[str, _Zone]
    principals: dict[str, _Principal]
    grants: list[_Grant] = Field(default_factory=list)
    admin_roles: list[str] = Field(default_factory=lambda: ["security-admin"])


def load_directory(path: Path) -> Directory:
    """Parse and check the file; errors name the file and the offending field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the access directory: {exc}") from exc
    try:
        doc = _File.model_validate(raw)
    except ValidationError as exc:
        issues = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(issues), issues=issues) from None
    try:
        return Directory(
            levels=doc.levels,
            zones=[
                ZoneRule(
                    name=name,
                    classification=z.classification,
                    topics=frozenset(z.topics),
                    auth_methods=frozenset(z.auth_methods),
                    mfa_required=z.mfa_required,
                    jit_required=z.jit_required,
                    approvals=ApprovalRule(z.approvals.count, z.approvals.approver_role),
                    principal_kinds=frozenset(z.principal_kinds),
                    max_grant_duration=timedelta(minutes=z.max_grant_duration_minutes),
                    break_glass_duration=timedelta(minutes=z.break_glass_minutes),
                    break_glass_roles=(
                        None if z.break_glass_roles is None else frozenset(z.break_glass_roles)
                    ),
                    stale_after=timedelta(days=z.stale_after_days),
                )
                for name, z in doc.zones.items()
            ],
            principals=[
                PrincipalInfo(
                    name=name,
                    kind=p.kind,
                    clearance=p.clearance,
                    auth_methods=frozenset(p.auth_methods),
                    roles=frozenset(p.roles),
                    mfa_required=p.mfa_required,
                )
                for name, p in doc.principals.items()
            ],
            grants=[
                GrantInfo(
                    id=g.id,
                    principal=g.principal,
                    zone=g.zone,
                    topic=g.topic,
                    access=frozenset(g.access),
                    expires_at=g.expires_at,
                )
                for g in doc.grants
            ],
            admin_roles=doc.admin_roles,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", issues=exc.issues) from None
