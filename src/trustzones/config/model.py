"""The typed, frozen models of ``trustzones.yaml``.

These models check the shape of each value. Cross-references and the security rules (no
write down, clearance, ...) are checked by :mod:`trustzones.config._checks` once everything has
parsed, so that all errors are reported together.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "DEFAULT_CLASSIFICATIONS",
    "AccessMode",
    "ApprovalRule",
    "AuditBackendSettings",
    "AuditKafkaBackend",
    "AuditLevel",
    "AuditSettings",
    "AuthMethod",
    "BackendSettings",
    "ConfigFile",
    "DlpAction",
    "DlpSettings",
    "EmbeddedBackend",
    "FlowSpec",
    "GrantSpec",
    "KafkaBackend",
    "PrincipalSpec",
    "RateLimit",
    "TopicSpec",
    "WatermarkSettings",
    "ZoneControls",
    "ZoneSpec",
    "parse_duration",
]

DEFAULT_CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")

AuthMethod = Literal["password", "api_key", "mtls", "oidc"]
AuditLevel = Literal["aggregate", "access", "per-message"]
AccessMode = Literal["read", "write"]
DlpAction = Literal["quarantine", "redact", "block"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """``"30s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(
        f"{value!r} is not a duration; write a whole number with a unit, like 30s, 15m, 2h or 7d"
    )


Duration = Annotated[timedelta, Field()]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class ApprovalRule(_Model):
    """How many distinct approvers, holding which role, an action needs."""

    count: int = Field(1, ge=0, le=10)
    approver_role: str | None = None


class RateLimit(_Model):
    records_per_second: float = Field(gt=0)
    burst: int | None = Field(None, gt=0)
    bytes_per_second: int | None = Field(None, gt=0)


class ZoneControls(_Model):
    auth_methods: tuple[AuthMethod, ...] = ("password", "api_key", "mtls", "oidc")
    mfa_required: bool = False
    jit_required: bool = False
    approvals: ApprovalRule = ApprovalRule(count=0)
    audit_level: AuditLevel = "access"
    encryption_at_rest: bool = True
    rate_limit: RateLimit | None = None
    max_record_bytes: int = Field(1_048_576, gt=0)

    @field_validator("auth_methods")
    @classmethod
    def _non_empty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("a zone must accept at least one auth method (deny-all is not a zone)")
        return v


class EmbeddedBackend(_Model):
    type: Literal["embedded"] = "embedded"
    data_dir: str | None = None  # default: <workspace>/data/<zone>


class KafkaBackend(_Model):
    """A dedicated cluster (``prefix`` empty) or a virtual cluster on a shared one."""

    type: Literal["kafka"]
    bootstrap: str
    username: str = "admin"
    password: SecretStr | None = None
    password_env: str | None = None
    prefix: str = ""
    security_protocol: Literal["SASL_PLAINTEXT", "SASL_SSL"] = "SASL_PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    ssl_ca_location: str | None = None
    zone_user_fallback: bool = False  # a principal without its own Kafka password uses username


BackendSettings = Annotated[EmbeddedBackend | KafkaBackend, Field(discriminator="type")]


class ZoneSpec(_Model):
    name: Name
    classification: str
    description: str = ""
    backend: BackendSettings = EmbeddedBackend()
    controls: ZoneControls = Field(default_factory=ZoneControls)
    compliance: tuple[str, ...] = ()


class TopicSpec(_Model):
    name: Name
    zone: str
    partitions: int = Field(1, ge=1, le=10_000)
    retention: Duration | None = None
    min_insync_replicas: int | None = Field(None, ge=1)
    description: str = ""
    schema_: dict[str, Any] | str | None = Field(None, alias="schema")

    @field_validator("retention", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)


class PrincipalSpec(_Model):
    name: Name
    kind: Literal["user", "service"] = "user"
    clearance: str
    auth_methods: tuple[AuthMethod, ...] = ("password",)
    roles: tuple[str, ...] = ()
    description: str = ""


class GrantSpec(_Model):
    principal: str
    topic: str | None = None
    zone: str | None = None
    access: tuple[AccessMode, ...] = ("read",)
    expires: datetime | None = None
    reason: str = ""

    @field_validator("access", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v


class DlpSettings(_Model):
    action: DlpAction = "quarantine"
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    redact_style: Literal["type", "mask"] = "type"
    allow_types: tuple[str, ...] = ()


class WatermarkSettings(_Model):
    enabled: bool = False
    canary_every: int = Field(0, ge=0)


class FlowSpec(_Model):
    name: Name
    source: str
    destination: str
    principal: str
    description: str = ""
    transforms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    drop_unlisted: bool = False
    dlp: DlpSettings = Field(default_factory=DlpSettings)
    approvals: ApprovalRule = ApprovalRule(count=1)
    watermark: WatermarkSettings = Field(default_factory=WatermarkSettings)
    quarantine_topic: str | None = None


class AuditKafkaBackend(KafkaBackend):
    """The audit zone on Kafka: its own topic ``<prefix>tz.audit`` (one partition, kept forever)
    and ``<prefix>tz.audit.checkpoints``, on a dedicated cluster or a shared one.

    ``username``/``password`` are the admin login ``plan``/``apply`` use (as for a zone);
    ``writer`` is the SCRAM user that appends (its password is generated by ``apply`` into
    ``.trustzones/kafka-credentials.yaml``): the only principal with WRITE on the log.
    """

    writer: Annotated[str, Field(pattern=_NAME)] = "trustzones-audit"


AuditBackendSettings = Annotated[EmbeddedBackend | AuditKafkaBackend, Field(discriminator="type")]


class AuditSettings(_Model):
    data_dir: str = "audit"
    origin: str | None = None
    checkpoint_every: int = Field(1000, ge=1)
    aggregate_window: int = Field(60, ge=1, le=86_400)
    """Seconds per counting window of zones at audit level ``aggregate``."""
    backend: AuditBackendSettings = EmbeddedBackend()


class ConfigFile(_Model):
    """The whole file, as written."""

    version: Literal[1] = 1
    name: str = "trustzones"
    classifications: tuple[str, ...] = DEFAULT_CLASSIFICATIONS
    data_dir: str = "data"
    audit: AuditSettings = Field(default_factory=AuditSettings)
    policy_dir: str | None = None
    zones: tuple[ZoneSpec, ...] = ()
    topics: tuple[TopicSpec, ...] = ()
    principals: tuple[PrincipalSpec, ...] = ()
    grants: tuple[GrantSpec, ...] = ()
    flows: tuple[FlowSpec, ...] = ()

    @field_validator("classifications")
    @classmethod
    def _classifications(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2:
            raise ValueError("declare at least two classifications, lowest first")
        if len(set(v)) != len(v):
            raise ValueError("classification names must be unique")
        return v
