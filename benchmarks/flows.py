"""Sanitising flow throughput on the embedded backend, against a plain copy in the same run.

Both move the same 20,000 generated card payments (~450 B of JSON) from the payments zone to the
analytics zone file, batch by batch, each batch in one destination transaction that also
stores the source position, with both zones encrypted at rest:

- plain copy: consume → produce, nothing else;
- sanitising flow: consume → decode → transforms (tokenise, hash, mask, generalise,
  suppress) → destination schema and classification checks → DLP scan of the whole output →
  watermark → quarantine or produce, with lineage headers.

    python benchmarks/flows.py [--records 20000] [--batch 500] [--returning 0] [--rounds 1]
        [--phases]

Every generated payment carries a new card number by default, so that each record costs the
flow a new token in the vault (its worst case). ``--returning 0.6`` makes that share of the
payments come from returning customers: the card and customer of a random earlier payment.
``--rounds 5`` repeats the whole measurement in fresh workspaces, the copy and the flow taking
turns to go first, and prints the median ratios: on a shared machine one round's ratio can be
a quarter off.

``--phases`` also prints where each record's CPU time goes (microseconds of this process's CPU
per record read, by step; nested steps are inside their parents). The timers wrap methods, so
they add a little to every figure: use the plain run for the throughput and the ratio.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml

from trustzones.audit import AuditLog
from trustzones.cli import main as cli
from trustzones.dlp.transforms import Transformer
from trustzones.dlp.vault import TokenVault
from trustzones.errors import ApprovalRequired
from trustzones.flows import (
    event_key,
    generate_events,
    open_approvals,
    open_flow,
    require_approved,
)
from trustzones.flows._runner import FlowRunner, FlowStats
from trustzones.streams import NewRecord
from trustzones.streams._embedded import EmbeddedBackend, _EmbeddedTransaction
from trustzones.zone import Workspace

FLOW = "payments-to-analytics"


def plain_copy(ws: Workspace, batch: int) -> int:
    src = ws.backend("payments")
    dst = ws.backend("analytics", acting_for="payments")
    dst.ensure_topic("bench.copy", partitions=3)
    moved = 0
    for p in range(src.partition_count("payments.transactions")):
        off = 0
        while True:
            got = src.fetch("payments.transactions", p, off, max_records=batch)
            if not got:
                break
            with dst.transaction("bench.copy") as tx:
                tx.produce("bench.copy", [NewRecord(value=r.value, key=r.key) for r in got])
                tx.store_offsets(
                    "bench.copy", "payments/payments.transactions", {p: got[-1].offset + 1}
                )
            off = got[-1].offset + 1
            moved += len(got)
    return moved


def returning(events: list[dict[str, Any]], share: float) -> None:
    """Give ``share`` of the events (after the first) the card and customer of an earlier
    one, in place (seeded: every run gets the same stream)."""
    rng = random.Random(11)
    for i in range(1, len(events)):
        if rng.random() < share:
            earlier = events[rng.randrange(i)]
            events[i]["card"] = dict(earlier["card"])
            events[i]["customer"] = dict(earlier["customer"])


#: The steps ``--phases`` times: (label, class, method), parents before their parts.
PHASES: list[tuple[str, type, str]] = [
    ("read (fetch, open at-rest envelopes)", EmbeddedBackend, "fetch"),
    ("decide a batch", FlowRunner, "_decide_batch"),
    ("  decide_many", FlowRunner, "decide_many"),
    ("    per record: decode, transform, cut, check, encode", FlowRunner, "_prepare"),
    ("      transforms", Transformer, "apply_record"),
    ("        tokenize", TokenVault, "tokenize"),
    ("    DLP scan of the outputs", FlowRunner, "_scan"),
    ("    settle provisional tokens", TokenVault, "_settle"),
    ("    commit the token vault", TokenVault, "_end_batch"),
    ("  per-record audit events", FlowRunner, "_transfer_events"),
    ("write a batch (audit, quarantine, output)", FlowRunner, "_write_batch"),
    ("  audit append", AuditLog, "append_many"),
    ("  produce in a transaction (seal, insert)", _EmbeddedTransaction, "produce"),
]


@contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Add each PHASES step's CPU seconds to ``spent`` while the block runs."""
    saved = []
    for label, cls, name in PHASES:
        fn = cls.__dict__[name]
        saved.append((cls, name, fn))

        def timed(*a: Any, __fn: Callable[..., Any] = fn, __label: str = label, **k: Any) -> Any:
            t = time.process_time()
            try:
                return __fn(*a, **k)
            finally:
                spent[__label] += time.process_time() - t

        setattr(cls, name, functools.wraps(fn)(timed))
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def print_phases(title: str, spent: dict[str, float], records: int, cpu: float) -> None:
    print(f"  {title}: {cpu / records * 1e6:.1f} us of CPU per record, of which")
    for label, _cls, _name in PHASES:
        if label in spent:
            print(f"    {spent[label] / records * 1e6:7.1f} us  {label}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--phases", action="store_true", help="also time the steps of each record")
    ap.add_argument(
        "--returning",
        type=float,
        default=0.0,
        help="share of payments with the card and customer of an earlier one (default 0)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat copy and flow in fresh workspaces, alternating which goes first, and "
        "print the median ratios (the machine's speed drifts)",
    )
    a = ap.parse_args()
    spent_copy: dict[str, float] = defaultdict(float)
    spent_flow: dict[str, float] = defaultdict(float)
    results = [one_round(a, spent_copy, spent_flow, flow_first=r % 2 == 1) for r in range(a.rounds)]
    cards = "every card new" if not a.returning else f"{a.returning:.0%} returning customers"
    print(
        f"flows on the embedded backend — {a.records} records of ~{results[0].size:.0f} B, "
        f"batches of {a.batch}, both zones encrypted at rest, {cards}"
    )
    for n, r in enumerate(results, 1):
        if a.rounds > 1:
            print(f"round {n} ({'flow' if n % 2 == 0 else 'copy'} first)")
        print(f"  plain copy (consume → produce)   {r.copy_rate:>10,.0f} records/s")
        print(
            f"  sanitising flow                  {r.flow_rate:>10,.0f} records/s   "
            f"({r.stats.delivered} delivered, {r.stats.quarantined} quarantined)"
        )
        print(f"  ratio flow / plain copy          {r.ratio:.2f}  (target >= 0.50)")
        print(
            f"  per CPU second: copy {r.cpu_copy:,.0f}, flow {r.cpu_flow:,.0f} records/s, "
            f"ratio {r.cpu_ratio:.2f} (this process's CPU time: the same on a busy machine)"
        )
    if a.rounds > 1:

        def median(values: Iterator[float]) -> float:
            return statistics.median(values)

        print(
            f"median of {a.rounds} rounds: ratio {median(r.ratio for r in results):.2f}, per CPU "
            f"second {median(r.cpu_ratio for r in results):.2f} (copy "
            f"{median(r.cpu_copy for r in results):,.0f}, flow "
            f"{median(r.cpu_flow for r in results):,.0f} records per CPU second)"
        )
    if a.phases:
        copied = sum(r.copied for r in results)
        read = sum(r.stats.read for r in results)
        print("where the CPU goes (timers on: every figure a little higher than without)")
        print_phases("plain copy", spent_copy, copied, sum(r.c_copy for r in results))
        print_phases("sanitising flow", spent_flow, read, sum(r.c_flow for r in results))


@dataclass(frozen=True)
class Round:
    size: float  # mean record size
    copied: int
    t_copy: float  # wall seconds
    c_copy: float  # CPU seconds of this process
    stats: FlowStats
    t_flow: float
    c_flow: float

    @property
    def copy_rate(self) -> float:
        return self.copied / self.t_copy

    @property
    def flow_rate(self) -> float:
        return self.stats.read / self.t_flow

    @property
    def ratio(self) -> float:
        return self.flow_rate / self.copy_rate

    @property
    def cpu_copy(self) -> float:
        return self.copied / self.c_copy

    @property
    def cpu_flow(self) -> float:
        return self.stats.read / self.c_flow

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_flow / self.cpu_copy


T = TypeVar("T")


def timed(spent: dict[str, float] | None, fn: Callable[[], T]) -> tuple[T, float, float]:
    """``fn()``, its wall seconds and this process's CPU seconds (with the ``--phases``
    timers adding to ``spent`` when it is given)."""
    with timed_phases(spent) if spent is not None else _untimed():
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - t0, time.process_time() - c0


def one_round(
    a: argparse.Namespace,
    spent_copy: dict[str, float],
    spent_flow: dict[str, float],
    *,
    flow_first: bool,
) -> Round:
    """Load a fresh workspace, then time the plain copy and the flow over the same records."""
    with tempfile.TemporaryDirectory() as d:
        ws_dir = Path(d) / "ws"
        assert cli(["init", str(ws_dir)]) == 0
        path = ws_dir / "trustzones.yaml"
        doc = yaml.safe_load(path.read_text())
        for zone in doc["zones"]:
            # Loading the data is not measured: the zone's ingress rate limit would refuse it.
            zone.get("controls", {}).pop("rate_limit", None)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        with Workspace.open(path) as ws:
            events = generate_events(
                ws.config, "payments.transactions", a.records, seed=3, leak_rate=0.02
            )
            returning(events, a.returning)
            values = [orjson.dumps(e) for e in events]
            size = sum(map(len, values)) / len(values)
            for i in range(0, len(values), 5000):
                chunk = events[i : i + 5000]
                ws.produce(
                    "payments.transactions",
                    values[i : i + 5000],
                    principal="payments-service",
                    keys=[event_key(ws.config, "payments.transactions", e) for e in chunk],
                )
            store = open_approvals(ws)
            runner = open_flow(ws, FLOW)
            try:
                require_approved(ws, runner)
            except ApprovalRequired:
                (req,) = store.list()
                store.approve(req.id, approver="security-officer")

            def copy() -> tuple[int, float, float]:
                return timed(spent_copy if a.phases else None, lambda: plain_copy(ws, a.batch))

            def flow() -> tuple[FlowStats, float, float]:
                return timed(
                    spent_flow if a.phases else None,
                    lambda: runner.run(once=True, batch=a.batch),
                )

            if flow_first:
                stats, t_flow, c_flow = flow()
                copied, t_copy, c_copy = copy()
            else:
                copied, t_copy, c_copy = copy()
                stats, t_flow, c_flow = flow()
    assert copied == a.records and stats.read == a.records
    return Round(size, copied, t_copy, c_copy, stats, t_flow, c_flow)


@contextmanager
def _untimed() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
