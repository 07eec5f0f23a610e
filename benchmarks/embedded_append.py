"""Embedded backend throughput against plain sqlite3 doing the same work in the same run.

Append: N records of ~500 bytes, in batches, through ``EmbeddedBackend.produce`` versus
``executemany`` of the same rows into an equivalent table (same pragmas, same batch size,
one transaction per batch). Consume: reading them all back through ``fetch`` versus a plain
``SELECT``. Prints records/s and the ratio (ours / plain).

    python benchmarks/embedded_append.py [--records 200000] [--batch 1000] [--sync FULL]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from trustzones.streams import EmbeddedBackend, NewRecord


def _value(i: int) -> bytes:
    body = f'{{"event_id":"ev-{i}","session_id":"s-{i % 997}","page":"/p/{i % 113}",'
    return (body + '"pad":"' + "x" * (480 - len(body)) + '"}').encode()


def plain(path: Path, values: list[bytes], batch: int, sync: str) -> tuple[float, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute(
        'CREATE TABLE records (topic TEXT, partition INTEGER, "offset" INTEGER, key BLOB, '
        'value BLOB, headers BLOB, ts INTEGER, PRIMARY KEY (topic, partition, "offset"))'
    )
    t0 = time.perf_counter()
    off = 0
    now = int(time.time() * 1000)
    for i in range(0, len(values), batch):
        chunk = values[i : i + batch]
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO records VALUES (?,?,?,?,?,?,?)",
            [("t", 0, off + j, None, v, None, now) for j, v in enumerate(chunk)],
        )
        db.execute("COMMIT")
        off += len(chunk)
    t_append = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    pos = 0
    while True:
        rows = db.execute(
            'SELECT "offset", key, value, headers, ts FROM records WHERE topic=? AND '
            'partition=? AND "offset">=? ORDER BY "offset" LIMIT ?',
            ("t", 0, pos, batch),
        ).fetchall()
        if not rows:
            break
        n += len(rows)
        pos = rows[-1][0] + 1
    t_read = time.perf_counter() - t0
    assert n == len(values)
    db.close()
    return t_append, t_read


def ours(path: Path, values: list[bytes], batch: int, sync: str) -> tuple[float, float]:
    with EmbeddedBackend("bench", path, synchronous=sync) as b:  # type: ignore[arg-type]
        b.ensure_topic("t", partitions=1)
        t0 = time.perf_counter()
        for i in range(0, len(values), batch):
            b.produce("t", [NewRecord(value=v, partition=0) for v in values[i : i + batch]])
        t_append = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        c = b.consumer("t", start="earliest")
        while True:
            got = c.poll(batch)
            if not got:
                break
            n += len(got)
        t_read = time.perf_counter() - t0
        assert n == len(values)
    return t_append, t_read


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    values = [_value(i) for i in range(a.records)]
    best: dict[str, list[float]] = {"plain": [1e9, 1e9], "ours": [1e9, 1e9]}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            for name, fn in (("plain", plain), ("ours", ours)):
                p = Path(d) / f"{name}-{r}.db"
                ta, tr = fn(p, values, a.batch, a.sync)
                best[name] = [min(best[name][0], ta), min(best[name][1], tr)]
                for f in Path(d).glob(f"{name}-{r}.db*"):
                    os.unlink(f)
    n = a.records
    print(
        f"embedded backend vs plain sqlite3 — {n} records of {len(values[0])} B, "
        f"batches of {a.batch}, synchronous={a.sync}, best of {a.rounds}"
    )
    for i, what in enumerate(("append", "consume")):
        o, p = n / best["ours"][i], n / best["plain"][i]
        print(
            f"  {what:8s} ours {o:>10,.0f} rec/s   plain sqlite3 {p:>10,.0f} rec/s   "
            f"ratio {o / p:.2f}"
        )


if __name__ == "__main__":
    main()
