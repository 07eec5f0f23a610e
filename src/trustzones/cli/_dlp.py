"""``trustzones dlp``: find sensitive data in files.

``trustzones dlp scan FILE`` reads JSON lines (``-`` for stdin) and reports every finding.
Exit status: 0 when the file was read completely and nothing was found; 3 when something
was found; 4 when some lines could not be read (each is reported on stderr with its line
number, and the scan goes on) — an incomplete scan is never reported as clean; 1 for a
handled error (the file cannot be opened, a bad option).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click
import orjson

from trustzones.dlp import ENTITY_TYPES, Finding, Scanner
from trustzones.errors import ConfigError, TrustzonesError

__all__ = ["EXIT_FINDINGS", "EXIT_UNREADABLE", "group"]

EXIT_FINDINGS = 3
EXIT_UNREADABLE = 4
_BATCH = 256


@click.group("dlp")
def group() -> None:
    """Find sensitive data (cards, SSNs, IBANs, contact details, secrets)."""


def _records(stream: BinaryIO, name: str, bad: list[int]) -> Iterator[tuple[int, object]]:
    for lineno, raw in enumerate(stream):
        line = raw.strip()
        if not line:
            continue
        try:
            yield lineno, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            # The message names the position only, never the line's content.
            click.echo(
                f"{name}:{lineno + 1}: skipped: not valid JSON ({exc.msg}, column {exc.colno})",
                err=True,
            )
            bad.append(lineno)


def _emit(lineno: int, findings: list[Finding], as_json: bool) -> None:
    for f in findings:
        if as_json:
            d: dict[str, object] = {
                "record": lineno,
                "path": f.path,
                "type": f.type,
                "start": f.start,
                "end": f.end,
                "confidence": f.confidence,
            }
            if f.in_key:
                d["in_key"] = True
            sys.stdout.buffer.write(orjson.dumps(d) + b"\n")
        else:
            where = f.path or "(top level)"
            key = " (in key)" if f.in_key else ""
            click.echo(
                f"record {lineno}  {where}{key}  {f.type}  [{f.start}, {f.end})  {f.confidence:.2f}"
            )


@group.command("scan")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='One JSON object per finding: {"record", "path", "type", "start", "end", ...}.',
)
@click.option(
    "--types",
    metavar="TYPE[,TYPE...]",
    help=f"Only these entity types (default: all of {', '.join(ENTITY_TYPES)}).",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Drop findings below this confidence.",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "native", "hyperscan", "python"]),
    default="auto",
    show_default=True,
    envvar="TRUSTZONES_DLP_ENGINE",
    help="Matching engine (all give the same findings); auto: native, else hyperscan, else python.",
)
def scan(file: Path, as_json: bool, types: str | None, min_confidence: float, engine: str) -> None:
    """Scan a JSON-lines FILE (one record per line; - reads stdin).

    Records are numbered from 0 by line. Offsets are in the field's string (or a number's
    decimal text), end exclusive. Exit status: 0 nothing found, 3 findings, 4 some lines
    unreadable, 1 error.
    """
    wanted = None
    if types:
        wanted = [t.strip().upper() for t in types.split(",") if t.strip()]
    try:
        scanner = Scanner(
            types=wanted,
            min_confidence=min_confidence,
            engine=engine,  # type: ignore[arg-type]
        )
    except ValueError as exc:
        raise ConfigError(f"--types: {exc}") from None
    name = "<stdin>" if str(file) == "-" else str(file)
    bad: list[int] = []
    counts: Counter[str] = Counter()
    n_records = 0
    try:
        stream: BinaryIO = sys.stdin.buffer if str(file) == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        raise TrustzonesError(f"cannot read {name}: {exc.strerror}; check the path") from None
    try:
        batch: list[tuple[int, object]] = []

        def flush() -> None:
            results = scanner.scan_records([obj for _, obj in batch])
            for (lineno, _), findings in zip(batch, results, strict=True):
                counts.update(f.type for f in findings)
                _emit(lineno, findings, as_json)
            batch.clear()

        for item in _records(stream, name, bad):
            batch.append(item)
            n_records += 1
            if len(batch) >= _BATCH:
                flush()
        if batch:
            flush()
    except OSError as exc:
        raise TrustzonesError(f"reading {name} failed: {exc.strerror}") from None
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    total = sum(counts.values())
    summary = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()))
    click.echo(
        f"scanned {n_records} record(s) from {name} with the {scanner.engine} engine: "
        f"{total} finding(s){f' ({summary})' if summary else ''}"
        f"{f'; {len(bad)} unreadable line(s)' if bad else ''}",
        err=True,
    )
    ctx = click.get_current_context()
    if bad:
        ctx.exit(EXIT_UNREADABLE)
    if total:
        ctx.exit(EXIT_FINDINGS)
