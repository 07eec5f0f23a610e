"""``trustzones demo``: the seed's e-commerce story, end to end, on the embedded backend."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from trustzones.cli._core import init
from trustzones.config import Config
from trustzones.errors import AccessDenied, ApprovalRequired
from trustzones.zone import Workspace

FLOW = "payments-to-analytics"


def _show(out: Console, title: str, doc: Any) -> None:
    out.print(f"[bold]{title}[/]")
    out.print_json(orjson.dumps(doc).decode())


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the demo workspace [default: a new temporary directory].",
)
@click.option("--payments", default=500, show_default=True, help="Card payments to generate.")
@click.option("--clicks", default=1000, show_default=True, help="Page views to generate.")
@click.option("--seed", default=7, show_default=True, help="Random seed of the generated data.")
def demo(directory: Path | None, payments: int, clicks: int, seed: int) -> None:
    """Run the e-commerce trust-zone story on the embedded backend (no server needed)."""
    from trustzones import flows

    out = Console(highlight=False)
    d = directory or Path(tempfile.mkdtemp(prefix="trustzones-demo-"))
    click.get_current_context().invoke(init, directory=d, example="ecommerce", force=True)
    config = Config.from_yaml(d / "trustzones.yaml")
    with Workspace(config) as ws:
        out.rule("1. producers write realistic traffic into their own zones")
        pay = flows.generate_events(
            config, "payments.transactions", payments, seed=seed, leak_rate=0.03
        )
        pay[1]["note"] = f"customer asked us to keep card {pay[1]['card']['number']} on file"
        r = ws.produce(
            "payments.transactions",
            [orjson.dumps(p) for p in pay],
            principal="payments-service",
            keys=[flows.event_key(config, "payments.transactions", p) for p in pay],
        )
        out.print(
            f"payments-service    → payments.transactions  (restricted): "
            f"{len(r.accepted)} card payments"
        )
        clk = flows.generate_events(config, "analytics.clickstream", clicks, seed=seed + 1)
        r = ws.produce(
            "analytics.clickstream", [orjson.dumps(c) for c in clk], principal="clickstream-service"
        )
        out.print(
            f"clickstream-service → analytics.clickstream (public):     "
            f"{len(r.accepted)} page views"
        )
        stray = dict(clk[0], card=pay[0]["card"]["number"])
        r = ws.produce(
            "analytics.clickstream", [orjson.dumps(stray)], principal="clickstream-service"
        )
        for rej in r.rejected:
            out.print(f"[yellow]refused at the analytics zone's door[/]: {rej}")

        out.rule("2. the flow down to analytics must be approved first")
        runner = flows.open_flow(ws, FLOW)
        try:
            flows.require_approved(ws, runner)
        except ApprovalRequired as exc:
            out.print(f"[yellow]not yet[/]: {exc}")
        store = flows.open_approvals(ws)
        (req,) = [q for q in store.list() if q.subject == FLOW]
        try:
            store.approve(req.id, approver="marketing-analyst")
        except AccessDenied as exc:
            out.print(f"[red]refused[/]: {exc}")
        store.approve(req.id, approver="security-officer")
        store.close()
        out.print(
            f"security-officer approved request {req.id}: definition {config.flow_hash(FLOW)[:12]}"
        )
        flows.require_approved(ws, runner)

        out.rule("3. the flow sanitises payments on their way down")
        stats = runner.run(once=True)
        src = ws.backend("payments").fetch("payments.transactions", 0, 0, max_records=1)[0]
        dst_zone = ws.backend("analytics")
        sample = None
        for p in range(dst_zone.partition_count("analytics.transactions")):
            for rec in dst_zone.fetch("analytics.transactions", p, 0, max_records=500):
                if (
                    rec.header("tz.source.offset") == str(src.offset).encode()
                    and rec.header("tz.source.partition") == str(src.partition).encode()
                ):
                    sample = rec
        _show(out, "in the payments zone (restricted):", orjson.loads(src.value))
        if sample is not None:
            _show(
                out, "in the analytics zone, after the flow (public):", orjson.loads(sample.value)
            )
            out.print(
                "lineage: "
                + ", ".join(f"{k}={v.decode()}" for k, v in sample.headers if k.startswith("tz."))
            )

        out.rule("4. what DLP held back, in the payments zone's quarantine")
        try:
            flows.open_quarantine(ws, FLOW).list(principal="security-officer")
        except AccessDenied as exc:
            out.print(f"[yellow]not yet[/]: {exc}")
        _jit(ws, out)
        q = flows.open_quarantine(ws, FLOW)
        held = q.list(principal="security-officer")
        reasons = Counter(h.reason for h in held)
        for h in held[:5]:
            kinds = ", ".join(f"{f['type']} at {f['path']}" for f in h.findings)
            out.print(f"  source {h.source_partition}:{h.source_offset} — {h.reason} ({kinds})")
        if len(held) > 5:
            out.print(f"  ... and {len(held) - 5} more")

        out.rule("5. the marketing analyst reads the sanitised data ...")
        n = sum(
            len(b)
            for b in iter(
                ws.consumer(
                    "analytics.transactions", principal="marketing-analyst", start="earliest"
                ).poll,
                [],
            )
        )
        out.print(f"marketing-analyst read {n} sanitised payments from analytics.transactions")
        out.print("... and is refused the payments zone:")
        try:
            ws.consumer("payments.transactions", principal="marketing-analyst")
        except AccessDenied as exc:
            out.print(f"[red]denied[/]: {exc}")
        else:  # pragma: no cover - a security bug
            raise click.ClickException("the analyst was allowed into the payments zone")
        audit_line = _audit(ws)

    out.rule("summary")
    t = Table(show_header=True)
    t.add_column("what")
    t.add_column("count", justify="right")
    t.add_column("where / why")
    t.add_row("card payments produced", str(payments), "payments zone (restricted, encrypted)")
    t.add_row(
        "moved down, sanitised",
        str(stats.delivered),
        "analytics.transactions: card tokenised, CVV/expiry/name suppressed, e-mail "
        "hashed, age/ZIP/birth date generalised",
    )
    for reason, count in reasons.items():
        t.add_row("held back", str(count), reason)
    t.add_row("page views", str(clicks), "analytics.clickstream")
    out.print(t)
    if audit_line:
        out.print(audit_line)
    out.print(f"workspace: {d}  (try `cd {d} && trustzones zones`)")


def _jit(ws: Workspace, out: Console) -> None:
    """The security officer gets just-in-time read access to payments, approved by the CISO."""
    from datetime import timedelta

    from trustzones.access import Resource

    store = ws.access.grants
    req = store.request(
        "security-officer",
        Resource("payments"),
        access=frozenset({"read"}),
        duration=timedelta(hours=1),
        reason="review the flow's quarantine",
        now=ws.clock(),
    )
    try:
        store.approve(req.id, approver="security-officer", now=ws.clock())
    except AccessDenied as exc:
        out.print(f"[red]refused[/]: {exc}")
    req = store.approve(req.id, approver="ciso", now=ws.clock())
    out.print(f"ciso approved just-in-time access {req.id} → grant {req.grant_id}, 1 hour")


def _audit(ws: Workspace) -> str:
    """Verify the audit zone end to end, as `trustzones audit verify` does."""
    from trustzones.audit import NoteVerifier, verify_log

    ws.audit.close()
    report = verify_log(ws.audit.db, NoteVerifier.from_file(ws.audit.public_key_path))
    return (
        f"audit zone: {report.tree_size} events recorded, Merkle root "
        f"{report.root_hash.hex()[:16]}…, every signature verified "
        "(`trustzones audit verify`)"
    )


COMMANDS = [demo]
