"""``trustzones audit``: read, verify and prove the tamper-evident audit log.

Reading commands (``tail``, ``search``, ``prove``) need the auditor role. The check is the
callable stored under ``ctx.meta[AUDITOR_CHECK]`` (``check(principal, operation) -> bool``,
installed by whoever wires the access part in); without one, reads are denied (fail closed).
``verify``, ``check-proof`` and ``checkpoint`` reveal no event content and need no role:
``verify`` and ``check-proof`` need only the public key, ``checkpoint`` the signing key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from trustzones.audit import (
    AuditLog,
    AuditorCheck,
    AuditReader,
    NoteSigner,
    NoteVerifier,
    StoredEvent,
    check_proof,
    verify_log,
)
from trustzones.audit.events import canonical_json
from trustzones.audit.notes import write_key_files
from trustzones.errors import AccessDenied, AuditError

__all__ = ["AUDITOR_CHECK", "group"]

AUDITOR_CHECK = "trustzones.audit.auditor_check"
"""``ctx.meta`` key of the auditor-role check used by the reading commands."""

_db = click.option(
    "--db",
    "db",
    envvar="TRUSTZONES_AUDIT_DB",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The audit log's SQLite file.",
)
_public_key = click.option(
    "--public-key",
    "public_key",
    envvar="TRUSTZONES_AUDIT_PUBLIC_KEY",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The log's verifier key file (public).",
)
_principal = click.option(
    "--as",
    "principal",
    envvar="TRUSTZONES_PRINCIPAL",
    required=True,
    metavar="PRINCIPAL",
    help="Who is reading (must hold the auditor role).",
)
_json = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")


def _kafka(ctx: click.Context) -> tuple[Any, Any] | None:
    """(config, audit backend settings) when the workspace keeps its audit zone on Kafka."""
    from trustzones.cli._context import CliState
    from trustzones.config.model import AuditKafkaBackend

    st = ctx.find_object(CliState)
    if st is None or not st.path.exists():
        return None
    cfg = st.config()
    backend = cfg.file.audit.backend
    return (cfg, backend) if isinstance(backend, AuditKafkaBackend) else None


def _kafka_login(cfg: Any, backend: Any, user: str | None) -> Any:
    """A connection to the audit cluster as ``user`` (its SCRAM password from ``apply``), or
    with the backend's admin login when ``user`` is None."""
    import os

    from trustzones.provision import read_credentials
    from trustzones.streams._kafka_admin import KafkaConnection

    if user is None:
        user = backend.username
        password = backend.password.get_secret_value() if backend.password else None
        if password is None and backend.password_env:
            password = os.environ.get(backend.password_env)
    else:
        password = read_credentials(cfg).get(backend.bootstrap, {}).get(user)
    if password is None:
        raise AuditError(
            f"no Kafka password for {user!r} on the audit cluster {backend.bootstrap}: run "
            "`trustzones apply` (it creates the audit writer and auditors), or set "
            "audit.backend.password_env for the admin login"
        )
    extra = {"ssl.ca.location": backend.ssl_ca_location} if backend.ssl_ca_location else {}
    return KafkaConnection(
        backend.bootstrap,
        username=user,
        password=password,  # kept secret by the connection (SecretStr)
        security_protocol=backend.security_protocol,
        sasl_mechanism=backend.sasl_mechanism,
        extra=extra,
    )


def _reader(ctx: click.Context, db: Path, principal: str) -> Any:
    check: AuditorCheck | None = ctx.meta.get(AUDITOR_CHECK)
    if check is None:
        raise AccessDenied(
            "reading the audit log needs the auditor role, and no auditor-role check is "
            "configured for this command; nothing is shown (fail closed)"
        )
    kafka = _kafka(ctx)
    if kafka is not None:
        from trustzones.audit._kafka import KafkaAuditReader

        cfg, backend = kafka
        if check(principal, "read") is not True:  # before any password is looked up
            raise AccessDenied(
                f"{principal!r} may not read the audit log: reading it needs the auditor role"
            )
        return KafkaAuditReader(
            _kafka_login(cfg, backend, principal),
            verifier=NoteVerifier.from_file(cfg.state_dir / "audit.pub"),
            principal=principal,
            authorize=check,
            prefix=backend.prefix,
        )
    return AuditReader(db, principal=principal, authorize=check)


def _show(events: list[StoredEvent], as_json: bool) -> None:
    for s in events:
        if as_json:
            line = b'{"leaf_index":%d,"event":%s}' % (s.leaf_index, canonical_json(s.event))
            click.echo(line.decode())
            continue
        d = s.event.data
        reason = f"  {d.reason}" if d.reason else ""
        click.echo(
            f"{s.leaf_index:>8}  {s.event.time}  {d.principal}  {d.action}  {d.resource}  "
            f"{d.zone}  {d.decision}{reason}"
        )


@click.group("audit")
def group() -> None:
    """The tamper-evident audit log: tail, search, verify, prove, check-proof, checkpoint."""


@group.command()
@click.option("--origin", required=True, help="The log's name, e.g. audit.example.com/prod.")
@click.option(
    "--key",
    "key",
    envvar="TRUSTZONES_AUDIT_KEY",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the signing key (mode 0600; keep it outside the audited zones).",
)
@click.option(
    "--public-key",
    "public_key",
    envvar="TRUSTZONES_AUDIT_PUBLIC_KEY",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the verifier key (public; give it to auditors and third parties).",
)
def keygen(origin: str, key: Path, public_key: Path) -> None:
    """Create the log's Ed25519 signing key and its public verifier key."""
    signer = NoteSigner.generate(origin)
    write_key_files(signer, key, public_key)
    click.echo(signer.verifier().key_string)
    click.echo(f"wrote {key} (secret) and {public_key} (public)", err=True)


@group.command()
@_db
@_principal
@click.option("-n", "--limit", default=20, show_default=True, help="How many events.")
@_json
@click.pass_context
def tail(ctx: click.Context, db: Path, principal: str, limit: int, as_json: bool) -> None:
    """The most recent events, oldest first."""
    _show(_reader(ctx, db, principal).tail(limit), as_json)


@group.command()
@_db
@_principal
@click.option("--principal", "who", help="Events of this principal.")
@click.option("--zone", help="Events in this zone.")
@click.option("--action", help="Events of this action (read, consume, flow.transfer, ...).")
@click.option("--decision", type=click.Choice(["allow", "deny", "quarantine"]))
@click.option("--since", help="From this time on (RFC 3339, e.g. 2026-03-01T00:00:00Z).")
@click.option("--until", help="Before this time (RFC 3339).")
@click.option("--limit", default=100, show_default=True)
@_json
@click.pass_context
def search(
    ctx: click.Context,
    db: Path,
    principal: str,
    who: str | None,
    zone: str | None,
    action: str | None,
    decision: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Events matching every given filter, oldest first."""
    found = _reader(ctx, db, principal).search(
        principal=who,
        zone=zone,
        action=action,
        decision=decision,
        since=since,
        until=until,
        limit=limit,
    )
    _show(found, as_json)


@group.command()
@_db
@_public_key
@click.option(
    "--trusted",
    "trusted",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A checkpoint published earlier; the log must still extend it (repeatable).",
)
@click.pass_context
def verify(ctx: click.Context, db: Path, public_key: Path, trusted: tuple[Path, ...]) -> None:
    """Recompute the whole log and check every signature; exit 1 naming the first bad entry."""
    verifier = NoteVerifier.from_file(public_key)
    notes = [p.read_text(encoding="utf-8") for p in trusted]
    progress: Any = None
    bar: Any = None
    if sys.stderr.isatty():
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task("verifying", total=None)
        bar.start()

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

    kafka = _kafka(ctx)
    try:
        if kafka is not None:
            from trustzones.audit._kafka import verify_kafka_log

            cfg, backend = kafka
            report = verify_kafka_log(
                _kafka_login(cfg, backend, None),
                verifier,
                prefix=backend.prefix,
                trusted=notes,
                progress=progress,
            )
        else:
            report = verify_log(db, verifier, trusted=notes, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    click.echo(
        f"ok: {report.origin}: {report.tree_size} entries, root "
        f"{report.root_hash.hex()}, {report.checkpoints} checkpoints"
        + (f", extends {report.trusted_checkpoints} trusted" if report.trusted_checkpoints else "")
    )


@group.command()
@click.argument("event_id")
@_db
@_principal
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the proof here instead of stdout.",
)
@click.pass_context
def prove(ctx: click.Context, event_id: str, db: Path, principal: str, out: Path | None) -> None:
    """An inclusion proof of EVENT_ID that `audit check-proof` verifies with the public key."""
    data = _reader(ctx, db, principal).prove(event_id).to_json()
    if out is None:
        click.echo(data.decode(), nl=False)
    else:
        out.write_bytes(data)
        click.echo(f"wrote {out}", err=True)


@group.command("check-proof")
@click.argument("proof", type=click.File("rb"), default="-")
@_public_key
def check_proof_command(proof: Any, public_key: Path) -> None:
    """Verify a proof from `audit prove` (PROOF file or stdin); print the proven event."""
    data = proof.read()
    event = check_proof(data, NoteVerifier.from_file(public_key))
    doc = orjson.loads(data)
    click.echo(canonical_json(event).decode())
    click.echo(
        f"ok: entry {doc['leaf_index']} of a signed log of {doc['tree_size']} entries",
        err=True,
    )


@group.command()
@_db
@click.option(
    "--key",
    "key",
    envvar="TRUSTZONES_AUDIT_KEY",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The log's signing key file.",
)
@click.pass_context
def checkpoint(ctx: click.Context, db: Path, key: Path) -> None:
    """Keep the current signed tree head as a checkpoint and print it (publish it elsewhere)."""
    kafka = _kafka(ctx)
    if kafka is not None:
        from trustzones.audit._kafka import KafkaAuditLog

        cfg, backend = kafka
        conn = _kafka_login(cfg, backend, backend.writer)
        with KafkaAuditLog(conn, signer=NoteSigner.from_file(key), prefix=backend.prefix) as klog:
            click.echo(klog.checkpoint(), nl=False)
        return
    if not db.is_file():
        raise AuditError(f"no audit log at {db}: check --db")
    with AuditLog.open(db, signer=NoteSigner.from_file(key)) as log:
        click.echo(log.checkpoint(), nl=False)
