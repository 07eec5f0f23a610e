"""Sanitising flow throughput on the embedded backend, against a plain copy in the same run.

Both move the same 20,000 generated card payments (~450 B of JSON) from the payments zone to the
analytics zone file, batch by batch, each batch in one destination transaction that also
stores the source position, with both zones encrypted at rest:

- plain copy: consume → produce, nothing else;
- sanitising flow: consume → decode → transforms (tokenise, hash, mask, generalise,
  suppress) → destination schema and classification checks → DLP scan of the whole output →
  watermark → quarantine or produce, with lineage headers.

    python benchmarks/flows.py [--records 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from trustzones.cli import main as cli
from trustzones.errors import ApprovalRequired
from trustzones.flows import (
    event_key,
    generate_events,
    open_approvals,
    open_flow,
    require_approved,
)
from trustzones.streams import NewRecord
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
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

            t0, c0 = time.perf_counter(), time.process_time()
            copied = plain_copy(ws, a.batch)
            t_copy, c_copy = time.perf_counter() - t0, time.process_time() - c0

            t0, c0 = time.perf_counter(), time.process_time()
            stats = runner.run(once=True, batch=a.batch)
            t_flow, c_flow = time.perf_counter() - t0, time.process_time() - c0
    assert copied == a.records and stats.read == a.records
    copy_rate, flow_rate = copied / t_copy, stats.read / t_flow
    print(
        f"flows on the embedded backend — {a.records} records of ~{size:.0f} B, "
        f"batches of {a.batch}, both zones encrypted at rest"
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


if __name__ == "__main__":
    main()
