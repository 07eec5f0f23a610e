"""Sanitising flow throughput on the embedded backend, against a plain copy in the same run.

Both move the same 20,000 generated card payments (~450 B of JSON) from the payments zone to the
analytics zone file, batch by batch, each batch in one destination transaction that also
stores the source position, with both zones encrypted at rest:

- plain copy: consume → produce, nothing else;
- sanitising flow: consume → decode → transforms (tokenise, hash, mask, generalise,
  suppress) → destination schema and classification checks → DLP scan of the whole output →
  watermark → quarantine or produce, with lineage headers.

    python benchmarks/flows.py [--records 20000] [--batch 500] [--returning 0] [--phases]

Every generated payment carries a new card number by default, so that each record costs the
flow a new token in the vault (its worst case). ``--returning 0.6`` makes that share of the
payments come from returning customers: the card and customer of a random earlier payment.

``--phases`` also prints where each record's CPU time goes (microseconds of this process's CPU
per record read, by step; nested steps are inside their parents). The timers wrap methods, so
they add a little to every figure: use the plain run for the throughput and the ratio.
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from trustzones.flows._runner import FlowRunner
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
    a = ap.parse_args()
    spent_copy: dict[str, float] = defaultdict(float)
    spent_flow: dict[str, float] = defaultdict(float)
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

            with timed_phases(spent_copy) if a.phases else _untimed():
                t0, c0 = time.perf_counter(), time.process_time()
                copied = plain_copy(ws, a.batch)
                t_copy, c_copy = time.perf_counter() - t0, time.process_time() - c0

            with timed_phases(spent_flow) if a.phases else _untimed():
                t0, c0 = time.perf_counter(), time.process_time()
                stats = runner.run(once=True, batch=a.batch)
                t_flow, c_flow = time.perf_counter() - t0, time.process_time() - c0
    assert copied == a.records and stats.read == a.records
    copy_rate, flow_rate = copied / t_copy, stats.read / t_flow
    cards = "every card new" if not a.returning else f"{a.returning:.0%} returning customers"
    print(
        f"flows on the embedded backend — {a.records} records of ~{size:.0f} B, "
        f"batches of {a.batch}, both zones encrypted at rest, {cards}"
    )
    print(f"  plain copy (consume → produce)   {copy_rate:>10,.0f} records/s")
    print(
        f"  sanitising flow                  {flow_rate:>10,.0f} records/s   "
        f"({stats.delivered} delivered, {stats.quarantined} quarantined)"
    )
    print(f"  ratio flow / plain copy          {flow_rate / copy_rate:.2f}  (target >= 0.50)")
    cpu_copy, cpu_flow = copied / c_copy, stats.read / c_flow
    print(
        f"  per CPU second: copy {cpu_copy:,.0f}, flow {cpu_flow:,.0f} records/s, "
        f"ratio {cpu_flow / cpu_copy:.2f} (this process's CPU time: the same on a busy machine)"
    )
    if a.phases:
        print("where the CPU goes (timers on: every figure a little higher than without)")
        print_phases("plain copy", spent_copy, copied, c_copy)
        print_phases("sanitising flow", spent_flow, stats.read, c_flow)


@contextmanager
def _untimed() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
