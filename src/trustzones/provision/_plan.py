"""Compare what the config wants with what each Kafka cluster has; make it so, audited."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import SecretStr

from trustzones.config import Config
from trustzones.errors import TrustzonesError
from trustzones.provision._audit import add_audit_wants
from trustzones.provision._desired import ClusterWant, TopicWant, desired_state
from trustzones.provision._quotas import LIBS_ENV, QuotaTool
from trustzones.streams._kafka_admin import AclRule, KafkaAdmin, KafkaConnection

__all__ = [
    "CREDENTIALS_FILE",
    "Change",
    "ClusterPlan",
    "ProvisionError",
    "apply_plan",
    "make_plan",
    "read_credentials",
]

CREDENTIALS_FILE = "kafka-credentials.yaml"
Op = Literal["create", "change", "remove", "drift"]
Kind = Literal["topic", "user", "acl", "quota"]


class ProvisionError(TrustzonesError):
    """Provisioning could not read or change a cluster, or its credentials file."""


@dataclass(frozen=True)
class Change:
    """One difference. ``remove`` undoes drift (ACLs, users the config does not explain);
    ``drift`` is reported only (topics are never deleted: they hold data)."""

    op: Op
    kind: Kind
    name: str
    detail: str = ""
    acl: AclRule | None = None
    topic: TopicWant | None = None
    configs: tuple[tuple[str, str], ...] = ()
    grow_to: int | None = None
    mechanism: str = "SCRAM-SHA-512"
    quotas: tuple[tuple[str, int], ...] = ()

    def line(self) -> str:
        sign = {"create": "+", "change": "~", "remove": "-", "drift": "!"}[self.op]
        return f"  {sign} {self.kind:5} {self.name}" + (f"  ({self.detail})" if self.detail else "")


@dataclass
class ClusterPlan:
    bootstrap: str
    zones: list[str]
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    notes: list[str] = field(default_factory=list)
    want: ClusterWant | None = None

    def text(self) -> str:
        head = f"cluster {self.bootstrap} (zones: {', '.join(self.zones)})"
        lines = [head, *(c.line() for c in self.changes)]
        lines.append(f"  = {self.unchanged} unchanged")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.bootstrap,
            "zones": self.zones,
            "changes": [
                {"op": c.op, "kind": c.kind, "name": c.name, "detail": c.detail}
                for c in self.changes
            ],
            "unchanged": self.unchanged,
            "notes": self.notes,
        }


# -- credentials ------------------------------------------------------------------------------
def _credentials_path(config: Config) -> Path:
    return config.state_dir / CREDENTIALS_FILE


def read_credentials(config: Config) -> dict[str, dict[str, str]]:
    """Cluster bootstrap → SCRAM user → password, from ``.trustzones/kafka-credentials.yaml``."""
    path = _credentials_path(config)
    if not path.exists():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ProvisionError(f"{path}: cannot read the Kafka credentials file ({exc})") from exc
    if not isinstance(doc, dict):
        raise ProvisionError(f"{path}: expected a mapping of cluster → user → password")
    return {str(k): {str(u): str(p) for u, p in (v or {}).items()} for k, v in doc.items()}


def _write_credentials(config: Config, creds: Mapping[str, Mapping[str, str]]) -> None:
    """Write atomically with mode 0600 (created so, never widened)."""
    path = _credentials_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# SCRAM passwords set by `trustzones apply`. Keep secret; never commit.\n")
        yaml.safe_dump({k: dict(v) for k, v in creds.items()}, fh, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# -- observing --------------------------------------------------------------------------------
def _connection(want: ClusterWant) -> KafkaConnection:
    s = want.settings
    password = s.password
    if password is None and s.password_env:
        value = os.environ.get(s.password_env)
        if value is None:
            raise ProvisionError(
                f"cluster {want.bootstrap}: the admin password is read from ${s.password_env}, "
                "which is not set. Export it and run again."
            )
        password = SecretStr(value)
    if password is None:
        raise ProvisionError(
            f"cluster {want.bootstrap} (zones {', '.join(want.zones)}): set backend.password_env "
            "for an admin login that may manage topics, users and ACLs"
        )
    extra = {"ssl.ca.location": s.ssl_ca_location} if s.ssl_ca_location else {}
    return KafkaConnection(
        want.bootstrap,
        username=s.username,
        password=password,
        security_protocol=s.security_protocol,
        sasl_mechanism=s.sasl_mechanism,
        extra=extra,
    )


def _topics(
    admin: KafkaAdmin, names: list[str]
) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """All topic names → partitions, and the configs of ``names`` that exist."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # implicit re-exports
        ConfigResource,
        ResourceType,
    )

    md = admin.metadata()
    parts = {n: len(t.partitions) for n, t in md.topics.items() if t.error is None}
    configs: dict[str, dict[str, str]] = {}
    wanted = [n for n in names if n in parts]
    if wanted:
        futures = admin.client.describe_configs(
            [ConfigResource(ResourceType.TOPIC, n) for n in wanted]
        )
        for res, fut in futures.items():
            entries = admin._result(fut, f"describe topic {res.name!r}")
            configs[res.name] = {k: v.value for k, v in entries.items()}
    return parts, configs


def _plan_cluster(
    want: ClusterWant, admin: KafkaAdmin, known_principals: set[str], creds: Mapping[str, str]
) -> ClusterPlan:
    plan = ClusterPlan(want.bootstrap, list(want.zones), notes=list(want.notes), want=want)
    ch = plan.changes
    parts, configs = _topics(admin, sorted(want.topics))
    for name, t in sorted(want.topics.items()):
        sets = {}
        if t.retention_ms is not None:
            sets["retention.ms"] = str(t.retention_ms)
        if t.min_insync_replicas is not None:
            sets["min.insync.replicas"] = str(t.min_insync_replicas)
        sets.update(getattr(t, "configs", ()))  # the audit topics' cleanup.policy
        if name not in parts:
            detail = ", ".join(
                [f"partitions={t.partitions}", *(f"{k}={v}" for k, v in sets.items())]
            )
            ch.append(Change("create", "topic", name, f"{detail}; {t.why}", topic=t))
            continue
        have = configs.get(name, {})
        diffs = {k: v for k, v in sets.items() if have.get(k) != v}
        grow = t.partitions if t.partitions > parts[name] else None
        if diffs or grow:
            bits = [f"{k} {have.get(k)} → {v}" for k, v in diffs.items()]
            if grow:
                bits.append(f"partitions {parts[name]} → {grow}")
            ch.append(
                Change(
                    "change",
                    "topic",
                    name,
                    ", ".join(bits),
                    topic=t,
                    configs=tuple(diffs.items()),
                    grow_to=grow,
                )
            )
        else:
            plan.unchanged += 1
        if t.partitions < parts[name]:
            plan.notes.append(
                f"topic {name} has {parts[name]} partitions, the config says "
                f"{t.partitions}; Kafka cannot shrink a topic (left as is)"
            )
    # Topics nobody declared, under our prefixes: reported, never deleted (they hold data).
    for name in sorted(parts):
        if name.startswith("__") or name in want.topics:
            continue
        prefix = max((p for p in want.prefixes if name.startswith(p)), key=len, default=None)
        if prefix is None or name[len(prefix) :].startswith("__"):
            continue
        ch.append(Change("drift", "topic", name, "not declared in trustzones.yaml; left alone"))

    users = admin.scram_users()
    for user, mech in sorted(want.users.items()):
        if user not in users or mech not in users[user]:
            ch.append(
                Change(
                    "create", "user", user, f"{mech}, password generated at apply", mechanism=mech
                )
            )
        elif user not in creds:
            ch.append(
                Change(
                    "change",
                    "user",
                    user,
                    f"{mech}: no local password; a new one is set at apply",
                    mechanism=mech,
                )
            )
        else:
            plan.unchanged += 1
    login = want.settings.username
    for user in sorted(users):
        if user in want.users or user == login:
            continue
        if user in known_principals or want.owned:
            ch.append(
                Change(
                    "remove",
                    "user",
                    user,
                    "drift: the config gives it nothing here",
                    mechanism=users[user][0],
                )
            )

    ours = set(want.prefixes) - {""}
    principals = {f"User:{p}" for p in known_principals}
    for rule in admin.describe_acls():
        explained = rule in want.acls
        in_scope = (
            want.owned or rule.principal in principals or any(rule.name.startswith(p) for p in ours)
        )
        if explained:
            plan.unchanged += 1
        elif in_scope:
            ch.append(
                Change(
                    "remove",
                    "acl",
                    _acl_name(rule),
                    "drift: not explained by trustzones.yaml",
                    acl=rule,
                )
            )
    present = set(admin.describe_acls())
    for rule, why in sorted(want.acls.items()):
        if rule not in present:
            ch.append(Change("create", "acl", _acl_name(rule), why, acl=rule))
    if want.quotas:
        tool = QuotaTool.find()
        if tool is None:
            plan.notes.append(
                f"client quotas for {', '.join(sorted(want.quotas))} not managed: put "
                f"kafka-configs.sh on PATH or set ${LIBS_ENV} to Kafka's libs folder"
            )
        else:
            quotas_now = tool.user_quotas(admin.conn)
            for user, quotas in sorted(want.quotas.items()):
                diff = {k: v for k, v in quotas.items() if quotas_now.get(user, {}).get(k) != v}
                if diff:
                    detail = ", ".join(f"{k}={v}" for k, v in sorted(diff.items()))
                    ch.append(
                        Change("change", "quota", user, detail, quotas=tuple(sorted(diff.items())))
                    )
                else:
                    plan.unchanged += 1
    return plan


def _acl_name(r: AclRule) -> str:
    pat = "*" if r.pattern == "prefixed" else ""
    return f"{r.permission.upper()} {r.principal} {r.operation.upper()} {r.resource}:{r.name}{pat}"


def make_plan(config: Config) -> list[ClusterPlan]:
    """What ``apply`` would do on every Kafka cluster of the config (reads the clusters)."""
    wants = desired_state(config)
    add_audit_wants(config, wants)
    creds = read_credentials(config)
    plans = []
    for bootstrap, want in wants.items():
        with KafkaAdmin(_connection(want), timeout_s=30.0) as admin:
            plans.append(
                _plan_cluster(want, admin, set(config.principals), creds.get(bootstrap, {}))
            )
    return plans


# -- applying ---------------------------------------------------------------------------------
def apply_plan(
    config: Config,
    plans: list[ClusterPlan],
    *,
    emit: Callable[[str, dict[str, Any]], None],
    actor: str = "trustzones",
) -> int:
    """Make each change (topics, then users, then ACLs, then drift removals); audit each one
    through ``emit`` before it is made, so an unrecordable change does not happen. Returns
    how many changes were made. Passwords are stored (0600) before they are set on a broker,
    and never printed."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # implicit re-exports
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
        ResourceType,
    )

    creds = read_credentials(config)
    done = 0
    for plan in plans:
        assert plan.want is not None
        want = plan.want
        order = {"topic": 0, "user": 1, "acl": 2, "quota": 3}
        changes = sorted(
            (c for c in plan.changes if c.op != "drift"),
            key=lambda c: (c.op == "remove", order[c.kind]),
        )
        if not changes:
            continue
        with KafkaAdmin(_connection(want), timeout_s=30.0) as admin:
            client = admin.client
            adds: list[AclRule] = []
            removes: list[AclRule] = []
            for c in changes:
                zone = c.topic.zone if c.topic else want.zones[0]
                emit(
                    "provision.apply",
                    {
                        "principal": actor,
                        "action": f"{c.op}-{c.kind}",
                        "resource": f"kafka/{c.kind}/{c.acl.name if c.acl else c.name}",
                        "zone": zone,
                        "cluster": want.bootstrap,
                        "reason": c.detail[:180],
                        "acl_principal": c.acl.principal if c.acl else None,
                        "acl_operation": c.acl.operation if c.acl else None,
                    },
                )
                if c.kind == "topic" and c.topic is not None:
                    t = c.topic
                    if c.op == "create":
                        cfg = {}
                        if t.retention_ms is not None:
                            cfg["retention.ms"] = str(t.retention_ms)
                        if t.min_insync_replicas is not None:
                            cfg["min.insync.replicas"] = str(t.min_insync_replicas)
                        cfg.update(getattr(t, "configs", ()))
                        new = NewTopic(
                            t.name, num_partitions=t.partitions, replication_factor=-1, config=cfg
                        )
                        admin._result(
                            client.create_topics([new])[t.name], f"create topic {t.name!r}"
                        )
                    else:
                        if c.grow_to:
                            admin._result(
                                client.create_partitions([NewPartitions(t.name, c.grow_to)])[
                                    t.name
                                ],
                                f"grow topic {t.name!r}",
                            )
                        if c.configs:
                            res = ConfigResource(
                                ResourceType.TOPIC,
                                t.name,
                                incremental_configs=[
                                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                                    for k, v in c.configs
                                ],
                            )
                            for fut in client.incremental_alter_configs([res]).values():
                                admin._result(fut, f"configure topic {t.name!r}")
                elif c.kind == "user":
                    mech: Any = c.mechanism
                    if c.op == "remove":
                        admin.delete_scram_user(c.name, mechanism=mech)
                        creds.get(want.bootstrap, {}).pop(c.name, None)
                        _write_credentials(config, creds)
                    else:
                        password = secrets.token_urlsafe(24)
                        creds.setdefault(want.bootstrap, {})[c.name] = password
                        _write_credentials(config, creds)
                        admin.upsert_scram_user(c.name, password, mechanism=mech)
                elif c.kind == "acl" and c.acl is not None:
                    (removes if c.op == "remove" else adds).append(c.acl)
                elif c.kind == "quota":
                    tool = QuotaTool.find()
                    if tool is None:
                        raise ProvisionError(f"cannot set the quotas of {c.name}: no kafka-configs")
                    tool.set_user_quotas(admin.conn, c.name, dict(c.quotas))
                done += 1
            admin.create_acls(adds)
            admin.delete_acls(removes)
    return done
