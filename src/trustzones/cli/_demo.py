"""``trustzones demo``: the e-commerce story of the seed, end to end, on the embedded backend."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import orjson
from rich.console import Console

from trustzones.cli._core import init
from trustzones.config import Config
from trustzones.errors import AccessDenied
from trustzones.zone import Workspace

PAYMENTS = [
    {
        "transaction_id": "tx-1001",
        "timestamp": "2026-11-28T09:00:01Z",
        "amount": 42.5,
        "currency": "EUR",
        "merchant": {"id": "m-7", "name": "Book Nook", "category": "books"},
        "card": {"number": "4111 1111 1111 1111", "brand": "visa", "expiry": "12/28", "cvv": "123"},
        "customer": {
            "id": "c-1",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "age": 36,
            "zip": "94107",
            "country": "US",
        },
        "channel": "web",
        "note": "gift wrap please",
    },
    {
        "transaction_id": "tx-1002",
        "timestamp": "2026-11-28T09:00:03Z",
        "amount": 9.99,
        "currency": "USD",
        "card": {"number": "5555-5555-5555-4444", "brand": "mastercard"},
        "customer": {
            "id": "c-2",
            "name": "Alan Turing",
            "email": "alan@example.org",
            "age": 41,
            "zip": "10001",
            "country": "US",
        },
        "channel": "mobile",
    },
]
CLICKS = [
    {
        "event_id": f"ev-{i}",
        "timestamp": f"2026-11-28T09:00:{i:02d}Z",
        "session_id": "s-42",
        "page": page,
        "device": "mobile",
        "country": "US",
    }
    for i, page in enumerate(["/", "/books", "/books/42", "/cart", "/checkout"])
]


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the demo workspace [default: a new temporary directory].",
)
def demo(directory: Path | None) -> None:
    """Run the e-commerce trust-zone story on the embedded backend (no server needed)."""
    out = Console(highlight=False)
    d = directory or Path(tempfile.mkdtemp(prefix="trustzones-demo-"))
    ctx = click.get_current_context()
    ctx.invoke(init, directory=d, example="ecommerce", force=True)
    config = Config.from_yaml(d / "trustzones.yaml")
    with Workspace(config) as ws:
        out.rule("1. producers write to their own zones")
        r = ws.produce(
            "payments.transactions",
            [orjson.dumps(p) for p in PAYMENTS],
            principal="payments-service",
            keys=[p["customer"]["id"].encode() for p in PAYMENTS],
        )  # type: ignore[index]
        out.print(
            f"payments-service → payments.transactions (restricted): "
            f"{len(r.accepted)} card payments stored"
        )
        r = ws.produce(
            "analytics.clickstream",
            [orjson.dumps(c) for c in CLICKS],
            principal="clickstream-service",
        )
        out.print(
            f"clickstream-service → analytics.clickstream (public): "
            f"{len(r.accepted)} page views stored"
        )
        bad = dict(CLICKS[0], card="4111111111111111")
        r = ws.produce(
            "analytics.clickstream", [orjson.dumps(bad)], principal="clickstream-service"
        )
        for rej in r.rejected:
            out.print(f"[yellow]refused at ingress[/]: {rej}")

        out.rule("2. the marketing analyst reads the public zone")
        views = list(
            ws.consumer("analytics.clickstream", principal="marketing-analyst", start="earliest")
        )
        out.print(f"marketing-analyst read {len(views)} page views from analytics.clickstream")

        out.rule("3. ... and is refused the payments zone")
        try:
            ws.consumer("payments.transactions", principal="marketing-analyst")
        except AccessDenied as exc:
            out.print(f"[red]denied[/]: {exc}")
        else:  # pragma: no cover - would be a security bug
            raise click.ClickException("the analyst was allowed into the payments zone")
    out.rule("summary")
    out.print(f"workspace: {d}")


COMMANDS = [demo]
