"""Core commands: init, validate, zones, produce, consume."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import click
import orjson
from rich.console import Console
from rich.table import Table

from trustzones.cli._context import CliState, pass_state
from trustzones.config import CONFIG_FILENAME, Config
from trustzones.errors import ConfigError, TrustzonesError
from trustzones.zone import Workspace

EXAMPLES = ("ecommerce",)


def _copy_tree(src: Any, dst: Path) -> list[Path]:
    written = []
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            written += _copy_tree(entry, target)
        elif entry.name.endswith((".yaml", ".json", ".md")):
            target.write_bytes(entry.read_bytes())
            written.append(target)
    return written


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--example",
    type=click.Choice(EXAMPLES),
    default="ecommerce",
    show_default=True,
    help="Which example workspace to write.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing trustzones.yaml.")
def init(directory: Path, example: str, force: bool) -> None:
    """Write a ready workspace (config, schemas, data directories) into DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / CONFIG_FILENAME
    if cfg.exists() and not force:
        raise TrustzonesError(
            f"{cfg} already exists; use --force to overwrite it, or choose another directory."
        )
    src = resources.files("trustzones.config").joinpath("examples", example)
    written = _copy_tree(src, directory)
    config = Config.from_yaml(cfg)
    with Workspace(config) as ws:
        written += ws.audit.provision()
        written += ws.keys.provision()
        written += ws.access.provision_example_credentials()
        ws.ensure_topics()
    from trustzones.cli import _hooks

    for hook in _hooks.INIT_HOOKS:
        written += hook(config)
    click.echo(f"wrote the {example} workspace to {directory.resolve()}", err=True)
    for w in written:
        click.echo(f"  {w}", err=True)


@click.command()
@pass_state
def validate(st: CliState) -> None:
    """Check trustzones.yaml: references, clearances, flows, write-down. Lists every problem."""
    c = st.config()
    click.echo(
        f"{st.path}: valid — {len(c.zones)} zones, {len(c.topics)} topics, "
        f"{len(c.principals)} principals, {len(c.grants)} grants, {len(c.flows)} flows "
        f"(policy version {c.policy_version})"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per zone.")
@pass_state
def zones(st: CliState, as_json: bool) -> None:
    """A table of the zones, their topics and controls."""
    c = st.config()
    rows: list[dict[str, Any]] = []
    for z in sorted(c.zones.values(), key=lambda z: -c.level(z.classification)):
        topics = [t.name for t in c.topics.values() if t.zone == z.name]
        ctl = z.controls
        rows.append(
            {
                "zone": z.name,
                "classification": z.classification,
                "backend": z.backend.type,
                "topics": topics,
                "auth_methods": list(ctl.auth_methods),
                "mfa_required": ctl.mfa_required,
                "jit_required": ctl.jit_required,
                "approvals": ctl.approvals.count,
                "audit_level": ctl.audit_level,
                "encryption_at_rest": ctl.encryption_at_rest,
                "rate_limit": ctl.rate_limit.records_per_second if ctl.rate_limit else None,
            }
        )
    if as_json:
        for r in rows:
            click.echo(orjson.dumps(r).decode())
        return
    table = Table(title=f"zones of {c.file.name}")
    for col in (
        "zone",
        "class",
        "backend",
        "topics",
        "auth",
        "MFA",
        "JIT",
        "approvals",
        "audit",
        "at rest",
        "rate/s",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["zone"],
            r["classification"],
            r["backend"],
            "\n".join(r["topics"]),
            ", ".join(r["auth_methods"]),
            "yes" if r["mfa_required"] else "no",
            "yes" if r["jit_required"] else "no",
            str(r["approvals"]),
            r["audit_level"],
            "AES-256-GCM" if r["encryption_at_rest"] else "none",
            "-" if r["rate_limit"] is None else f"{r['rate_limit']:g}",
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _dig(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict):
            return None
        doc = doc.get(part)
    return doc


@click.command()
@click.argument("topic")
@click.argument("file", required=False, type=click.File("rb"), default="-")
@click.option(
    "--as", "principal", required=True, metavar="PRINCIPAL", help="Produce as this principal."
)
@click.option("--key-field", metavar="PATH", help="Key records by this field (dot path).")
@click.option("--batch", default=1000, show_default=True, help="Records per atomic batch.")
@pass_state
def produce(
    st: CliState, topic: str, file: Any, principal: str, key_field: str | None, batch: int
) -> None:
    """Produce JSON lines from FILE (default: stdin) to TOPIC.

    Each line is checked (size, JSON, schema); refused lines are reported on stderr with their
    line number, field and reason, and nothing of them is stored. Exit 1 if any was refused.
    """
    ws = st.workspace()
    ws.authorize(principal, "write", topic)
    total = refused = 0
    lines: list[bytes] = []
    numbers: list[int] = []

    def flush() -> None:
        nonlocal total, refused
        if not lines:
            return
        keys = None
        if key_field:
            keys = []
            for raw in lines:
                try:
                    k = _dig(orjson.loads(raw), key_field)
                except orjson.JSONDecodeError:
                    k = None
                keys.append(None if k is None else str(k).encode())
        res = ws.produce(topic, lines, principal=principal, keys=keys)
        total += len(res.accepted)
        for rej in res.rejected:
            refused += 1
            where = f"line {numbers[rej.index or 0]}"
            field = f", field {rej.path}" if rej.path else ""
            click.echo(f"refused {where}{field}: {rej.reason}", err=True)
        lines.clear()
        numbers.clear()

    for n, raw in enumerate(file, start=1):
        raw = raw.strip()
        if not raw:
            continue
        lines.append(raw)
        numbers.append(n)
        if len(lines) >= batch:
            flush()
    flush()
    click.echo(
        f"produced {total} record(s) to {topic}" + (f"; refused {refused}" if refused else ""),
        err=True,
    )
    if refused:
        raise click.exceptions.Exit(1)


def _decode(b: bytes | None) -> Any:
    if b is None:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.hex()


def _print_record(r: Any, as_json: bool, out: TextIO) -> None:
    if as_json:
        try:
            value: Any = orjson.loads(r.value)
        except orjson.JSONDecodeError:
            value = _decode(r.value)
        doc = {
            "topic": r.topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": _decode(r.key),
            "value": value,
            "headers": {k: _decode(v) for k, v in r.headers},
            "timestamp": r.timestamp_ms,
        }
        out.write(orjson.dumps(doc).decode() + "\n")
    else:
        out.write(r.value.decode(errors="replace") + "\n")


@click.command()
@click.argument("topic")
@click.option(
    "--as", "principal", required=True, metavar="PRINCIPAL", help="Consume as this principal."
)
@click.option("--group", metavar="GROUP", help="Consumer group (commits its position).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record.")
@click.option("--follow", is_flag=True, help="Keep waiting for new records (Ctrl-C stops).")
@click.option("--max", "max_records", type=int, help="Stop after this many records.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per record with partition, offset, key, value, headers.",
)
@pass_state
def consume(
    st: CliState,
    topic: str,
    principal: str,
    group: str | None,
    from_beginning: bool,
    follow: bool,
    max_records: int | None,
    as_json: bool,
) -> None:
    """Print records of TOPIC. Without --follow, stops at the end of the topic."""
    ws = st.workspace()
    start = "earliest" if from_beginning else ("committed" if group else "latest")
    c = ws.consumer(topic, principal=principal, group=group, start=start)  # type: ignore[arg-type]
    out = sys.stdout
    n = 0
    import time

    try:
        while True:
            batch = c.poll(500 if max_records is None else min(500, max_records - n))
            for r in batch:
                _print_record(r, as_json, out)
            n += len(batch)
            out.flush()
            if max_records is not None and n >= max_records:
                break
            if not batch:
                if not follow:
                    break
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        c.commit()


COMMANDS = [init, validate, zones, produce, consume]

__all__ = ["COMMANDS", "ConfigError"]
