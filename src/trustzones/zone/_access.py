"""Access control for a workspace: the config compiled into the access part's directory, the
credential and grant stores, and authentication of ``--as NAME`` through a profile.

Files, in the state directory ``.trustzones/`` (outside every zone, all mode 0600):

- ``credentials.db`` + ``credentials.key`` — SCRAM-SHA-512 password verifiers, API key
  digests and encrypted TOTP secrets (the access part's credential store);
- ``grants.db`` — just-in-time requests and grants, break-glass grants;
- ``profile.yaml`` — the credentials ``--as NAME`` logs in with. ``trustzones init`` writes
  one for the example principals (so the demo and the tests can act as each of them); in a
  real deployment each person keeps their own, or passes credentials through flags or the
  environment (``TRUSTZONES_PASSWORD``, ``TRUSTZONES_API_KEY``, ``TRUSTZONES_TOTP``);
- ``sessions/<principal>.json`` — after a login with a TOTP code, an HMAC-signed MFA session
  valid for 15 minutes, so that a code (which is accepted only once) is not needed on every
  command. The password or API key is still checked each time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import yaml

from trustzones.access import (
    ApiKeyCredentials,
    ApprovalRule,
    Authenticator,
    CredentialStore,
    Directory,
    GrantInfo,
    GrantStore,
    Identity,
    PasswordCredentials,
    PolicyDecisionPoint,
    PrincipalInfo,
    Resource,
    ZoneRule,
    create_store_key_file,
    read_store_key_file,
    totp_at_time,
)
from trustzones.access import AuditEvent as AccessEvent
from trustzones.config import Config
from trustzones.errors import AuthenticationFailed
from trustzones.zone._authz import Action, Decision

__all__ = ["WorkspaceAccess", "build_directory"]

MFA_SESSION = timedelta(minutes=15)


def build_directory(config: Config) -> Directory:
    """The access part's view of ``config``: zones, principals and standing grants.

    A flow's service principal gets two derived grants: read its source topic, write its
    destination topic. Nothing else.
    """
    zones = []
    for z in config.zones.values():
        ctl = z.controls
        zones.append(
            ZoneRule(
                z.name,
                z.classification,
                topics=frozenset(t.name for t in config.topics.values() if t.zone == z.name),
                auth_methods=frozenset(ctl.auth_methods),
                mfa_required=ctl.mfa_required,
                jit_required=ctl.jit_required,
                approvals=ApprovalRule(ctl.approvals.count, ctl.approvals.approver_role),
            )
        )
    principals = [
        PrincipalInfo(p.name, p.kind, p.clearance, frozenset(p.auth_methods), frozenset(p.roles))
        for p in config.principals.values()
    ]
    grants = []
    for i, g in enumerate(config.grants):
        zone = g.zone if g.zone is not None else config.topics[g.topic].zone  # type: ignore[index]
        grants.append(
            GrantInfo(
                f"config:{i}",
                g.principal,
                zone,
                g.topic,
                frozenset(g.access),
                expires_at=g.expires,
                source="config",
                reason=g.reason,
            )
        )
    for f in config.flows.values():
        grants.append(
            GrantInfo(
                f"flow:{f.name}:read",
                f.principal,
                config.topics[f.source].zone,
                f.source,
                frozenset({"read"}),
                source="config",
                reason=f"flow {f.name} reads its source",
            )
        )
        grants.append(
            GrantInfo(
                f"flow:{f.name}:write",
                f.principal,
                config.topics[f.destination].zone,
                f.destination,
                frozenset({"write"}),
                source="config",
                reason=f"flow {f.name} writes its destination",
            )
        )
    return Directory(
        levels=config.classifications, zones=zones, principals=principals, grants=grants
    )


@dataclass
class _Profile:
    password: str | None = None
    api_key: str | None = None
    totp_secret: str | None = None


def _b32(secret: str) -> bytes:
    s = secret.strip().replace(" ", "").upper()
    return base64.b32decode(s + "=" * (-len(s) % 8))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class WorkspaceAccess:
    """The policy decision point, the stores and the authenticator of one workspace."""

    def __init__(
        self,
        config: Config,
        *,
        emit: Callable[[str, dict[str, Any]], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.state = config.state_dir
        self._emit = emit
        self._clock = clock
        self.directory = build_directory(config)
        self.state.mkdir(parents=True, exist_ok=True)
        self.grants = GrantStore(self.state / "grants.db", self.directory, audit=self.audit_sink)
        policy_dir = (config.root / config.file.policy_dir) if config.file.policy_dir else None
        self.pdp = PolicyDecisionPoint(
            self.directory, audit=self.audit_sink, store=self.grants, policy_dir=policy_dir
        )
        self._credentials: CredentialStore | None = None
        self._identities: dict[str, Identity] = {}

    def close(self) -> None:
        self.pdp.close()
        self.grants.close()
        if self._credentials is not None:
            self._credentials.close()

    def audit_sink(self, e: AccessEvent) -> None:
        self._emit(
            e.kind,
            {
                "principal": e.principal,
                "action": e.action,
                "resource": e.resource,
                "decision": "allow" if e.allowed else "deny",
                "reason": e.reason,
                "flagged": e.flagged,
                **dict(e.details),
            },
        )

    # -- credentials ----------------------------------------------------------------------
    @property
    def credentials(self) -> CredentialStore:
        if self._credentials is None:
            key = read_store_key_file(self.state / "credentials.key")
            self._credentials = CredentialStore.open(self.state / "credentials.db", key=key)
        return self._credentials

    def provision_example_credentials(self) -> list[Path]:
        """Create credentials for every principal and a profile holding them (init only)."""
        key_path = self.state / "credentials.key"
        db_path = self.state / "credentials.db"
        if key_path.exists() or db_path.exists():
            return []
        key = create_store_key_file(key_path)
        store = CredentialStore.create(db_path, key=key)
        now = self._clock()
        profile: dict[str, dict[str, str]] = {}
        for p in self.config.principals.values():
            entry: dict[str, str] = {}
            if "api_key" in p.auth_methods:
                entry["api_key"] = store.create_api_key(p.name, now=now, label="init").secret
            if "password" in p.auth_methods:
                pw = secrets.token_urlsafe(18)
                store.set_password(p.name, pw)
                entry["password"] = pw
            if p.kind == "user":
                enrol = store.begin_totp_enrolment(p.name)
                store.confirm_totp_enrolment(
                    p.name,
                    totp_at_time(_b32(enrol.secret_base32), now - timedelta(seconds=30)),
                    now=now,
                )
                entry["totp_secret"] = enrol.secret_base32
            profile[p.name] = entry
        store.close()
        doc = (
            b"# Credentials of the example principals, written by `trustzones init`.\n"
            b"# For the demo and tests only: a real deployment never keeps a TOTP secret\n"
            b"# next to the password it protects.\n"
        )
        doc += yaml.safe_dump({"principals": profile}, sort_keys=True).encode()
        _write_private(self.state / "profile.yaml", doc)
        return [key_path, db_path, self.state / "profile.yaml"]

    def _profile(self, name: str) -> _Profile:
        p = self.state / "profile.yaml"
        entry: Mapping[str, Any] = {}
        if p.exists():
            if p.stat().st_mode & 0o077:
                raise AuthenticationFailed(
                    f"{p} may be read by group or others; chmod 600 it before using it"
                )
            doc = yaml.safe_load(p.read_text()) or {}
            entry = (doc.get("principals") or {}).get(name) or {}
        return _Profile(
            password=os.environ.get("TRUSTZONES_PASSWORD") or entry.get("password"),
            api_key=os.environ.get("TRUSTZONES_API_KEY") or entry.get("api_key"),
            totp_secret=entry.get("totp_secret"),
        )

    # -- MFA sessions ---------------------------------------------------------------------
    def _session_key(self) -> bytes:
        p = self.state / "session.key"
        if not p.exists():
            _write_private(p, secrets.token_bytes(32).hex().encode())
        return bytes.fromhex(p.read_text().strip())

    def _session_path(self, name: str) -> Path:
        return self.state / "sessions" / f"{name}.json"

    def _load_session(self, name: str, now: datetime) -> bool:
        p = self._session_path(name)
        if not p.exists():
            return False
        try:
            doc = orjson.loads(p.read_bytes())
            body = orjson.dumps({"principal": doc["principal"], "expires": doc["expires"]})
            mac = hmac.new(self._session_key(), body, hashlib.sha256).hexdigest()
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False
        return (
            hmac.compare_digest(mac, str(doc.get("mac", "")))
            and doc["principal"] == name
            and float(doc["expires"]) > now.timestamp()
        )

    def _save_session(self, name: str, now: datetime) -> None:
        (self.state / "sessions").mkdir(mode=0o700, exist_ok=True)
        expires = (now + MFA_SESSION).timestamp()
        body = orjson.dumps({"principal": name, "expires": expires})
        mac = hmac.new(self._session_key(), body, hashlib.sha256).hexdigest()
        _write_private(
            self._session_path(name),
            orjson.dumps({"principal": name, "expires": expires, "mac": mac}),
        )

    # -- authentication -------------------------------------------------------------------
    def identity(self, name: str, *, totp: str | None = None) -> Identity:
        """Log in as ``name`` with the profile's (or the environment's) credentials."""
        cached = self._identities.get(name)
        if cached is not None:
            return cached
        spec = self.config.principals.get(name)
        prof = self._profile(name)
        now = self._clock()
        creds: Any
        if prof.api_key and (spec is None or "api_key" in spec.auth_methods):
            creds = ApiKeyCredentials(prof.api_key)
        elif prof.password:
            creds = PasswordCredentials(name, prof.password)
        else:
            raise AuthenticationFailed(
                f"no credentials for {name!r}: add them to {self.state / 'profile.yaml'} or set "
                "TRUSTZONES_PASSWORD / TRUSTZONES_API_KEY"
            )
        auth = Authenticator(self.directory, self.credentials, audit=self.audit_sink)
        code = totp or os.environ.get("TRUSTZONES_TOTP")
        mfa_session = False
        if code is None and spec is not None and spec.kind == "user":
            mfa_session = self._load_session(name, now)
            if not mfa_session and prof.totp_secret:
                code = totp_at_time(_b32(prof.totp_secret), now)
        ident = auth.authenticate_at_time(creds, now, totp=code)
        if ident.principal != name:
            raise AuthenticationFailed(
                f"the credentials presented for {name!r} belong to another principal"
            )
        if ident.mfa:
            self._save_session(name, now)
        elif mfa_session:
            ident = Identity(ident.principal, ident.method, mfa=True)
        self._identities[name] = ident
        return ident

    # -- decisions ------------------------------------------------------------------------
    def decide(self, who: str | Identity, action: Action, topic: str, *, now: datetime) -> Decision:
        ident = who if isinstance(who, Identity) else self.identity(who)
        zone = self.config.topics[topic].zone
        d = self.pdp.decide(ident, action, Resource(zone, topic), now)
        return Decision(d.allowed, d.reason, d.policy_version, d.grant_id)

    def holds_zone(self, principal: str, zone: str, *, now: datetime | None = None) -> bool:
        """Clearance for ``zone`` and a live grant in it (config, JIT or break-glass): what an
        approver of something leaving the zone must have. Not the same as reading now."""
        spec = self.config.principals.get(principal)
        if spec is None or self.config.level(spec.clearance) < self.config.zone_level(zone):
            return False
        t = now or self._clock()
        for g in self.config.grants:
            gz = g.zone if g.zone is not None else self.config.topics[g.topic].zone  # type: ignore[index]
            if g.principal == principal and gz == zone and (g.expires is None or g.expires > t):
                return True
        live, _revoked = self.grants.active_grants(now=t)
        return any(g.principal == principal and g.zone == zone for g in live)
