"""Flow commands: flows, quarantine, approvals, watermark, generate."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from trustzones.cli._context import CliState, pass_state
from trustzones.errors import FlowError, TrustzonesError


def _flows_api() -> Any:
    from trustzones import flows

    return flows


# -- flows ------------------------------------------------------------------------------------
@click.group("flows")
def flows_group() -> None:
    """Cross-zone flows: the only way data moves down."""


@flows_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per flow.")
@pass_state
def flows_list(st: CliState, as_json: bool) -> None:
    """The declared flows."""
    c = st.config()
    for f in c.flows.values():
        doc = {
            "name": f.name,
            "source": f.source,
            "destination": f.destination,
            "principal": f.principal,
            "source_zone": c.topics[f.source].zone,
            "destination_zone": c.topics[f.destination].zone,
            "dlp_action": f.dlp.action,
            "approvals": f.approvals.count,
            "definition": c.flow_hash(f.name)[:12],
        }
        if as_json:
            click.echo(orjson.dumps(doc).decode())
        else:
            click.echo(
                f"{f.name}: {f.source} ({doc['source_zone']}) → {f.destination} "
                f"({doc['destination_zone']}) as {f.principal}, DLP {f.dlp.action}, "
                f"definition {doc['definition']}"
            )


def _progress_table(name: str, s: Any) -> Table:
    t = Table(title=f"flow {name}", show_header=True)
    for col in ("read", "delivered", "quarantined", "redacted", "lag"):
        t.add_column(col, justify="right")
    t.add_row(str(s.read), str(s.delivered), str(s.quarantined), str(s.redacted), str(s.lag))
    return t


@flows_group.command("run")
@click.argument("names", nargs=-1)
@click.option("--once", is_flag=True, help="Drain what is there and exit.")
@click.option("--batch", default=500, show_default=True, help="Records per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@click.option(
    "--partitions",
    metavar="P[,P...]",
    help="Only these source partitions (scale out: one process per disjoint set).",
)
@pass_state
def flows_run(
    st: CliState,
    names: tuple[str, ...],
    once: bool,
    batch: int,
    as_json: bool,
    partitions: str | None,
) -> None:
    """Run flows (all when none named). Shows a live progress display; Ctrl-C stops cleanly."""
    api = _flows_api()
    ws = st.workspace()
    selected = list(names) or list(ws.config.flows)
    runners = [api.open_flow(ws, n) for n in selected]
    for r in runners:
        api.require_approved(ws, r)
        if partitions:
            try:
                r.partitions = tuple(sorted({int(p) for p in partitions.split(",")}))
            except ValueError:
                raise click.BadParameter(
                    "a comma-separated list of partition numbers", param_hint="--partitions"
                ) from None
        if partitions:
            try:
                r.partitions = tuple(sorted({int(p) for p in partitions.split(",")}))
            except ValueError:
                raise click.BadParameter(
                    "a comma-separated list of partition numbers", param_hint="--partitions"
                ) from None
    stop = {"flag": False}

    def _stop(*_: object) -> None:
        stop["flag"] = True

    old = signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    err = Console(stderr=True)
    results = {}
    try:
        for r in runners:
            if len(runners) > 1 and not once:
                raise FlowError(
                    "run one flow per process when following (omit --once only "
                    "with a single flow name)"
                )
            live = (
                Live(
                    _progress_table(r.name, api.FlowStats()),
                    console=err,
                    transient=False,
                    auto_refresh=False,
                )
                if err.is_terminal
                else None
            )
            if live:
                live.start()

            def show(s: Any, r: Any = r, live: Any = live) -> None:
                if live is not None:
                    live.update(_progress_table(r.name, s), refresh=True)

            try:
                results[r.name] = r.run(
                    once=once, batch=batch, on_progress=show, should_stop=lambda: stop["flag"]
                )
            finally:
                if live:
                    live.stop()
    finally:
        signal.signal(signal.SIGINT, old)
    for name, s in results.items():
        doc = {
            "flow": name,
            "read": s.read,
            "delivered": s.delivered,
            "quarantined": s.quarantined,
            "redacted": s.redacted,
            "lag": s.lag,
        }
        if as_json:
            click.echo(orjson.dumps(doc).decode())
        else:
            click.echo(
                f"{name}: read {s.read}, delivered {s.delivered}, quarantined "
                f"{s.quarantined}, redacted {s.redacted}, lag {s.lag}"
            )


@flows_group.command("status")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@pass_state
def flows_status(st: CliState, names: tuple[str, ...], as_json: bool) -> None:
    """Position, lag, quarantine size and approval state of each flow."""
    api = _flows_api()
    ws = st.workspace()
    for name in names or tuple(ws.config.flows):
        doc = api.flow_status(ws, name)
        if as_json:
            click.echo(orjson.dumps(doc).decode())
        else:
            click.echo(" ".join(f"{k}={v}" for k, v in doc.items()))


# -- quarantine ------------------------------------------------------------------------------
@click.group("quarantine")
def quarantine_group() -> None:
    """Records a flow refused, held in its source zone."""


def _quarantine(st: CliState, flow: str) -> Any:
    api = _flows_api()
    ws = st.workspace()
    return api.open_quarantine(ws, flow)


@quarantine_group.command("list")
@click.argument("flow")
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@click.option("--all", "include_decided", is_flag=True, help="Include released/discarded.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def q_list(st: CliState, flow: str, principal: str, include_decided: bool, as_json: bool) -> None:
    """Held records of FLOW: position, reason, findings (types and paths, never values)."""
    for h in _quarantine(st, flow).list(principal=principal, include_decided=include_decided):
        if as_json:
            click.echo(orjson.dumps(h.to_dict()).decode())
        else:
            kinds = ", ".join(sorted({f["type"] for f in h.findings})) or "-"
            click.echo(
                f"#{h.offset} source {h.source_partition}:{h.source_offset} "
                f"[{h.status}] {h.reason} (findings: {kinds})"
            )


@quarantine_group.command("show")
@click.argument("flow")
@click.argument("offset", type=int)
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@pass_state
def q_show(st: CliState, flow: str, offset: int, principal: str) -> None:
    """Show one held record, value included (needs source-zone rights; audited)."""
    held, value = _quarantine(st, flow).show(offset, principal=principal)
    try:
        v: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        v = value.decode(errors="replace")
    click.echo(orjson.dumps({**held.to_dict(), "value": v}).decode())


@quarantine_group.command("release")
@click.argument("flow")
@click.argument("offset", type=int)
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@click.option("--reason", default="", help="Why it should be released.")
@pass_state
def q_release(st: CliState, flow: str, offset: int, principal: str, reason: str) -> None:
    """Release a held record through the flow's transforms (needs an approval)."""
    held = _quarantine(st, flow).release(offset, principal=principal, reason=reason)
    click.echo(f"released record {held.offset} of {flow}")


@quarantine_group.command("discard")
@click.argument("flow")
@click.argument("offset", type=int)
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@click.option("--reason", required=True, help="Why it stays held.")
@pass_state
def q_discard(st: CliState, flow: str, offset: int, principal: str, reason: str) -> None:
    """Mark a held record reviewed and never to be released."""
    held = _quarantine(st, flow).discard(offset, principal=principal, reason=reason)
    click.echo(f"discarded record {held.offset} of {flow}")


# -- approvals -------------------------------------------------------------------------------
@click.group("approvals")
def approvals_group() -> None:
    """Approve or deny flows and quarantine releases."""


@approvals_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include approved and denied requests.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def a_list(st: CliState, show_all: bool, as_json: bool) -> None:
    """Pending approval requests."""
    store = _flows_api().open_approvals(st.workspace())
    for r in store.list(status=None if show_all else "pending"):
        if as_json:
            click.echo(orjson.dumps(r.to_dict()).decode())
        else:
            click.echo(
                f"{r.id} [{r.status}] {r.kind} {r.subject} ({r.target[:16]}) by "
                f"{r.requester}: {len(r.approvers)}/{r.required} approvals — {r.reason}"
            )


@approvals_group.command("request")
@click.argument("flow")
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@click.option("--reason", default="")
@click.option("--json", "as_json", is_flag=True)
@pass_state
def a_request(st: CliState, flow: str, principal: str, reason: str, as_json: bool) -> None:
    """Ask for approval of FLOW's current definition."""
    req = _flows_api().request_flow_approval(
        st.workspace(), flow, requester=principal, reason=reason
    )
    if as_json:
        click.echo(orjson.dumps(req.to_dict()).decode())
    else:
        click.echo(f"request {req.id} [{req.status}]: {req.describe_needs()}")


@approvals_group.command("approve")
@click.argument("request_id")
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@click.option("--comment", default="")
@pass_state
def a_approve(st: CliState, request_id: str, principal: str, comment: str) -> None:
    """Approve a request (not your own; you must hold its zone)."""
    r = (
        _flows_api()
        .open_approvals(st.workspace())
        .approve(request_id, approver=principal, comment=comment)
    )
    click.echo(f"{r.id}: {len(r.approvers)}/{r.required} approvals, {r.status}")


@approvals_group.command("deny")
@click.argument("request_id")
@click.option("--as", "principal", required=True, metavar="PRINCIPAL")
@click.option("--comment", default="")
@pass_state
def a_deny(st: CliState, request_id: str, principal: str, comment: str) -> None:
    """Deny a request."""
    r = (
        _flows_api()
        .open_approvals(st.workspace())
        .deny(request_id, approver=principal, comment=comment)
    )
    click.echo(f"{r.id}: {r.status}")


# -- watermark -------------------------------------------------------------------------------
@click.group("watermark")
def watermark_group() -> None:
    """Leak attribution."""


@watermark_group.command("identify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@pass_state
def w_identify(st: CliState, file: Path, as_json: bool) -> None:
    """Tell which flow and destination a leaked extract (JSON lines) came from."""
    records = []
    for n, line in enumerate(file.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            click.echo(f"line {n}: not JSON, skipped", err=True)
            continue
        # Accept both plain values and `consume --json` envelopes.
        records.append(doc.get("value", doc) if isinstance(doc, dict) else doc)
    results = _flows_api().identify_leak(st.workspace(), records)
    best = results[0] if results else None
    for a in results:
        if as_json:
            click.echo(
                orjson.dumps(
                    {
                        "source": a.label,
                        "matched": a.matched,
                        "candidates": a.candidates,
                        "ratio": round(a.ratio, 4),
                        "identified": a.identified,
                    }
                ).decode()
            )
        else:
            click.echo(
                f"{a.label}: {a.matched}/{a.candidates} marked values"
                + ("  ← identified" if a.identified else "")
            )
    if best is None or not best.identified:
        raise TrustzonesError("no flow's watermark was found in the extract")


# -- generate --------------------------------------------------------------------------------
@click.command("generate")
@click.argument("topic")
@click.option("--count", "-n", default=100, show_default=True)
@click.option(
    "--as",
    "principal",
    metavar="PRINCIPAL",
    help="Produce as this principal (without it, print JSON lines to stdout).",
)
@click.option("--seed", type=int, help="Random seed for reproducible data.")
@click.option(
    "--leak-rate",
    default=0.05,
    show_default=True,
    help="Share of free-text fields that hide a card number or an SSN.",
)
@pass_state
def generate(
    st: CliState, topic: str, count: int, principal: str | None, seed: int | None, leak_rate: float
) -> None:
    """Realistic events valid for TOPIC's schema (for demos, tests and load)."""
    api = _flows_api()
    ws = st.workspace()
    events = api.generate_events(ws.config, topic, count, seed=seed, leak_rate=leak_rate)
    if principal is None:
        for e in events:
            sys.stdout.write(orjson.dumps(e).decode() + "\n")
        return
    keys = [api.event_key(ws.config, topic, e) for e in events]
    res = ws.produce(topic, [orjson.dumps(e) for e in events], principal=principal, keys=keys)
    for rej in res.rejected:
        click.echo(f"refused: {rej}", err=True)
    click.echo(f"generated {len(res.accepted)} record(s) into {topic}", err=True)
    if res.rejected:
        raise click.exceptions.Exit(1)


COMMANDS = [flows_group, quarantine_group, approvals_group, watermark_group, generate]
