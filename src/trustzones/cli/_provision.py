"""``trustzones plan`` and ``trustzones apply``: make the Kafka clusters match the config."""

from __future__ import annotations

import json

import click

from trustzones.cli._context import CliState, pass_state

__all__ = ["COMMANDS"]


@click.command("plan")
@click.option("--json", "as_json", is_flag=True, help="One JSON document with every cluster.")
@pass_state
def plan_cmd(st: CliState, as_json: bool) -> None:
    """Show, per Kafka cluster, what `apply` would create, change or remove, and drift."""
    from trustzones.provision import make_plan

    plans = make_plan(st.config())
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in plans], indent=2))
        return
    if not plans:
        click.echo("no zone uses the kafka backend: nothing to provision")
    for p in plans:
        click.echo(p.text())


@click.command("apply")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def apply_cmd(st: CliState, yes: bool) -> None:
    """Create topics, SCRAM users and ACLs, and remove drift; each change is audited.

    New SCRAM passwords go to .trustzones/kafka-credentials.yaml (mode 0600), never to the
    terminal.
    """
    from trustzones.provision import apply_plan, make_plan

    ws = st.workspace()
    plans = make_plan(ws.config)
    for p in plans:
        click.echo(p.text())
    pending = sum(1 for p in plans for c in p.changes if c.op != "drift")
    if not pending:
        click.echo("nothing to do")
        return
    if not yes:
        click.confirm(f"apply {pending} change(s)?", abort=True, err=True)
    done = apply_plan(ws.config, plans, emit=ws.emit)
    click.echo(f"applied {done} change(s)")


COMMANDS = [plan_cmd, apply_cmd]
