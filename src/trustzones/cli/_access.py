"""``trustzones access``: just-in-time requests, approvals, grants, break-glass, reviews.

For now the files and the acting principal are options (``--store``, ``--directory``,
``--actor``, each with a ``TRUSTZONES_*`` variable); the top-level CLI replaces ``--actor``
with the authenticated ``--as`` identity and the workspace profile by putting an
:class:`AccessCliContext` in ``ctx.obj`` before this group runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from trustzones.access import (
    AccessRequest,
    Action,
    AuditEvent,
    AuditSink,
    Directory,
    GrantInfo,
    GrantStore,
    GrantView,
    Resource,
    cedar_schema,
    load_directory,
    parse_duration,
)
from trustzones.errors import ConfigError

__all__ = ["AccessCliContext", "group"]


@dataclass
class AccessCliContext:
    """What the commands need; the lead's top-level CLI may build it from the workspace."""

    directory: Directory
    store_path: Path
    actor: str | None
    audit: AuditSink
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def open_store(self) -> GrantStore:
        return GrantStore(self.store_path, self.directory, audit=self.audit)

    def require_actor(self) -> str:
        if not self.actor:
            raise ConfigError("who is acting? pass --actor NAME (or set TRUSTZONES_ACTOR)")
        return self.actor


def _jsonl_sink(path: Path) -> AuditSink:
    def sink(event: AuditEvent) -> None:
        record = {
            "kind": event.kind,
            "at": event.at.isoformat(),
            "principal": event.principal,
            "allowed": event.allowed,
            "reason": event.reason,
            "action": event.action,
            "resource": event.resource,
            "flagged": event.flagged,
            "details": dict(event.details),
        }
        with path.open("ab") as fh:
            fh.write(orjson.dumps(record) + b"\n")

    return sink


def _ctx(ctx: click.Context) -> AccessCliContext:
    obj = ctx.find_object(AccessCliContext)
    if obj is None:
        raise click.UsageError("internal: the access context is missing")
    return obj


@click.group(name="access")
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TRUSTZONES_ACCESS_STORE",
    help="Grant store (SQLite file; created if missing).",
)
@click.option(
    "--directory",
    "directory_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TRUSTZONES_ACCESS_DIRECTORY",
    help="Zones, principals and standing grants (YAML/JSON).",
)
@click.option(
    "--as",
    "--actor",
    "actor",
    envvar="TRUSTZONES_ACTOR",
    metavar="PRINCIPAL",
    help="Act as this principal (logged in with the workspace profile's credentials).",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TRUSTZONES_ACCESS_AUDIT_LOG",
    help="JSON-lines file for access events (default: next to the store).",
)
@click.pass_context
def group(
    ctx: click.Context,
    store_path: Path | None,
    directory_path: Path | None,
    actor: str | None,
    audit_log: Path | None,
) -> None:
    """Request, approve and review access to zones and topics."""
    existing = ctx.find_object(AccessCliContext)
    if existing is not None:
        if actor:
            existing.actor = actor
        return
    if ctx.invoked_subcommand == "schema":
        return
    if store_path is None and directory_path is None:
        from trustzones.cli._context import CliState

        root = ctx.find_root().obj
        if isinstance(root, CliState):
            ws = root.workspace()
            if actor:
                ws.access.identity(actor)  # --as is an authenticated identity
            ctx.obj = AccessCliContext(
                ws.access.directory,
                ws.config.state_dir / "grants.db",
                actor,
                ws.access.audit_sink,
                clock=ws.clock,
            )
            return
    if store_path is None or directory_path is None:
        raise click.UsageError(
            "pass --store FILE and --directory FILE (or TRUSTZONES_ACCESS_STORE and "
            "TRUSTZONES_ACCESS_DIRECTORY)"
        )
    sink = _jsonl_sink(audit_log or store_path.with_name(store_path.name + ".audit.jsonl"))
    ctx.obj = AccessCliContext(load_directory(directory_path), store_path, actor, sink)


def _dt(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _request_json(req: AccessRequest) -> dict[str, Any]:
    return {
        "id": req.id,
        "requester": req.requester,
        "resource": str(req.resource),
        "access": sorted(req.access),
        "duration_minutes": int(req.duration.total_seconds() // 60),
        "reason": req.reason,
        "status": req.status,
        "created_at": _dt(req.created_at),
        "approvals": [{"approver": a, "at": _dt(t)} for a, t in req.approvals],
        "required_approvals": req.required_approvals,
        "decided_by": req.decided_by,
        "grant_id": req.grant_id,
    }


def _grant_json(view: GrantView) -> dict[str, Any]:
    return {
        "id": view.id,
        "principal": view.principal,
        "resource": str(view.resource),
        "access": sorted(view.access),
        "source": view.source,
        "status": view.status,
        "issued_at": _dt(view.issued_at),
        "expires_at": _dt(view.expires_at),
        "approved_by": list(view.approved_by),
        "reason": view.reason,
        "last_used": _dt(view.last_used),
        "stale": view.stale,
        "break_glass": view.break_glass,
        "revoked_by": view.revoked_by,
        "revoked_at": _dt(view.revoked_at),
    }


def _emit(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _describe_request(req: AccessRequest) -> str:
    if req.status == "granted":
        return f"request {req.id} granted: grant {req.grant_id}"
    if req.status == "pending":
        return (
            f"request {req.id} pending: {len(req.approvals)} of {req.required_approvals} approvals"
        )
    return f"request {req.id} {req.status}"


def _resource(obj: AccessCliContext, topic: str | None, zone: str | None) -> Resource:
    if (topic is None) == (zone is None):
        raise click.UsageError("name exactly one of --topic or --zone")
    return obj.directory.resolve(zone if zone is not None else str(topic))


def _access(value: str) -> frozenset[Action]:
    if value == "readwrite":
        return frozenset({"read", "write"})
    return frozenset({"read"}) if value == "read" else frozenset({"write"})


_TOPIC = click.option("--topic", help="Topic as zone/topic (or a topic name unique across zones).")
_ZONE = click.option("--zone", help="A whole zone.")
_ACCESS = click.option(
    "--access",
    "access_text",
    type=click.Choice(["read", "write", "readwrite"]),
    default="read",
    show_default=True,
)
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _set_actor(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--as NAME`` on a subcommand: the acting principal, logged in through the workspace."""
    if value:
        obj = ctx.find_object(AccessCliContext)
        if obj is not None:
            obj.actor = value
        from trustzones.cli._context import CliState

        root = ctx.find_root().obj
        if isinstance(root, CliState) and root.path.exists():
            root.workspace().access.identity(value)
    return value


_AS = click.option(
    "--as",
    "as_principal",
    metavar="PRINCIPAL",
    expose_value=False,
    callback=_set_actor,
    help="Act as this principal (logged in with the workspace profile's credentials).",
)


@group.command()
@_AS
@_TOPIC
@_ZONE
@click.option("--for", "duration_text", required=True, help="How long, e.g. 2h, 90m, 1h30m.")
@click.option("--reason", required=True, help="Why the access is needed.")
@_ACCESS
@_JSON
@click.pass_context
def request(
    ctx: click.Context,
    topic: str | None,
    zone: str | None,
    duration_text: str,
    reason: str,
    access_text: str,
    as_json: bool,
) -> None:
    """Ask for time-limited access; prints the request id."""
    obj = _ctx(ctx)
    resource = _resource(obj, topic, zone)
    with obj.open_store() as store:
        req = store.request(
            obj.require_actor(),
            resource,
            access=_access(access_text),
            duration=parse_duration(duration_text),
            reason=reason,
            now=obj.clock(),
        )
    if as_json:
        _emit(_request_json(req))
    else:
        click.echo(_describe_request(req))


@group.command()
@_AS
@click.argument("request_id")
@_JSON
@click.pass_context
def approve(ctx: click.Context, request_id: str, as_json: bool) -> None:
    """Approve a pending request (not your own)."""
    obj = _ctx(ctx)
    with obj.open_store() as store:
        req = store.approve(request_id, approver=obj.require_actor(), now=obj.clock())
    if as_json:
        _emit(_request_json(req))
    else:
        click.echo(_describe_request(req))


@group.command()
@_AS
@click.argument("request_id")
@click.option("--reason", default="", help="Why it is refused.")
@_JSON
@click.pass_context
def deny(ctx: click.Context, request_id: str, reason: str, as_json: bool) -> None:
    """Refuse a pending request (or withdraw your own)."""
    obj = _ctx(ctx)
    with obj.open_store() as store:
        req = store.deny(request_id, actor=obj.require_actor(), reason=reason, now=obj.clock())
    if as_json:
        _emit(_request_json(req))
    else:
        click.echo(_describe_request(req))


@group.command()
@_AS
@click.option("--all", "show_all", is_flag=True, help="Include decided requests.")
@_JSON
@click.pass_context
def requests(ctx: click.Context, show_all: bool, as_json: bool) -> None:
    """List pending requests."""
    obj = _ctx(ctx)
    obj.require_actor()
    with obj.open_store() as store:
        found = store.requests(now=obj.clock(), status=None if show_all else "pending")
    if as_json:
        _emit([_request_json(r) for r in found])
        return
    for r in found:
        click.echo(
            f"{r.id}  {r.status:<9} {r.requester:<16} {','.join(sorted(r.access)):<10} "
            f"{r.resource}  {len(r.approvals)}/{r.required_approvals}  {r.reason}"
        )


def _print_grants(views: list[GrantView]) -> None:
    for v in views:
        flags = []
        if v.break_glass:
            flags.append("BREAK-GLASS")
        if v.stale:
            flags.append("STALE")
        expires = _dt(v.expires_at) or "never"
        used = _dt(v.last_used) or "never"
        click.echo(
            f"{v.id}  {v.status:<8} {v.principal:<16} {','.join(sorted(v.access)):<10} "
            f"{v.resource}  source={v.source} approved_by={','.join(v.approved_by) or '-'} "
            f"expires={expires} last_used={used} {' '.join(flags)}".rstrip()
        )


@group.command()
@_AS
@click.option("--principal", help="Only this principal's grants.")
@click.option("--zone", help="Only grants in this zone.")
@click.option("--all", "show_all", is_flag=True, help="Include expired and revoked grants.")
@_JSON
@click.pass_context
def grants(
    ctx: click.Context, principal: str | None, zone: str | None, show_all: bool, as_json: bool
) -> None:
    """List grants."""
    obj = _ctx(ctx)
    obj.require_actor()
    with obj.open_store() as store:
        views = store.grants(
            now=obj.clock(), principal=principal, zone=zone, include_inactive=show_all
        )
    if as_json:
        _emit([_grant_json(v) for v in views])
    else:
        _print_grants(views)


@group.command()
@_AS
@click.argument("grant_id")
@click.option("--reason", required=True, help="Why the grant is revoked.")
@click.pass_context
def revoke(ctx: click.Context, grant_id: str, reason: str) -> None:
    """Revoke a grant at once."""
    obj = _ctx(ctx)
    with obj.open_store() as store:
        store.revoke(grant_id, actor=obj.require_actor(), reason=reason, now=obj.clock())
    click.echo(f"grant {grant_id} revoked")


@group.command(name="break-glass")
@_AS
@_TOPIC
@_ZONE
@click.option("--reason", required=True, help="The emergency; it is flagged for review.")
@_ACCESS
@_JSON
@click.pass_context
def break_glass(
    ctx: click.Context,
    topic: str | None,
    zone: str | None,
    reason: str,
    access_text: str,
    as_json: bool,
) -> None:
    """Emergency access now, for the zone's short fixed time; flagged in audit and review."""
    obj = _ctx(ctx)
    resource = _resource(obj, topic, zone)
    with obj.open_store() as store:
        grant: GrantInfo = store.break_glass(
            obj.require_actor(),
            resource,
            access=_access(access_text),
            reason=reason,
            now=obj.clock(),
        )
    if as_json:
        _emit({"id": grant.id, "expires_at": _dt(grant.expires_at), "break_glass": True})
    else:
        click.echo(f"BREAK-GLASS grant {grant.id} until {_dt(grant.expires_at)}")


@group.command()
@_AS
@click.option("--zone", required=True, help="The zone to review.")
@_JSON
@click.pass_context
def review(ctx: click.Context, zone: str, as_json: bool) -> None:
    """Every grant of a zone: approvers, last use, staleness, break-glass."""
    obj = _ctx(ctx)
    with obj.open_store() as store:
        views = store.review(zone, actor=obj.require_actor(), now=obj.clock())
    if as_json:
        _emit([_grant_json(v) for v in views])
    else:
        _print_grants(views)


@group.command()
@_AS
def schema() -> None:
    """Print the Cedar schema that custom policies are validated against."""
    click.echo(cedar_schema(), nl=False)
