"""What a new token costs as the token vault grows, against plain SQLite writes in the same run.

A flow that tokenises card numbers stores one sealed row per new card in its source zone's
vault, and that row must be durable before any record carrying the token is written. This
fills a vault the way a flow does (provisional batches of ``--batch`` new values, each
settled and committed at once) and, at each size in ``--sizes``, measures the CPU per new
token over the next ``--sample`` tokens. Two baselines get the same rows (same sizes, same
pragmas, same batches, one transaction each), made beforehand:

- append-only: a table with no index, what the durable write alone costs;
- indexed: the vault's own table (a key on the token for ``detokenize``, one on the value's
  fingerprint for ``tokenize``, both random), what SQLite alone costs for the vault's rows.

The vault's figure adds making the token and the fingerprint and sealing the value.

    python benchmarks/vault.py [--sizes 20000,100000,400000] [--sample 10000] [--batch 500]

Also printed: a value that has its token already, from the in-memory cache.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from trustzones._sqlite import insert_rows
from trustzones.dlp import TokenVault, aesgcm_cipher

INDEX_KEY = b"benchmark index key, not a secret"


def tokenize(vault: TokenVault, value: str) -> str:
    return vault.tokenize(value, domain="card", index_key=INDEX_KEY, format="preserve", keep_last=4)


def card_numbers(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"4{rng.randrange(10**15):015d}" for _ in range(n)]


def fill(vault: TokenVault, values: list[str], batch: int) -> None:
    """Tokenise ``values`` as a flow does: provisional batches, settled whole."""
    for i in range(0, len(values), batch):
        with vault.provisional_batch() as tokens:
            for v in values[i : i + batch]:
                tokenize(vault, v)
            tokens.settle(set(tokens.take()))


def plain_rows(db: sqlite3.Connection, rows: list[tuple[object, ...]], batch: int) -> None:
    for i in range(0, len(rows), batch):
        db.execute("BEGIN IMMEDIATE")
        insert_rows(db, "INSERT OR IGNORE INTO tokens", 5, rows[i : i + batch])
        db.execute("COMMIT")


def plain_db(path: Path, *, indexed: bool) -> sqlite3.Connection:
    """A table of the vault's columns (and, ``indexed``, its keys), with the vault's pragmas."""
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=FULL",
        "cache_size=-65536",
        "wal_autocheckpoint=10000",
    ):
        db.execute(f"PRAGMA {pragma}")
    keys = ", PRIMARY KEY (domain, token), UNIQUE (domain, fingerprint)" if indexed else ""
    db.execute(
        "CREATE TABLE tokens (domain TEXT NOT NULL, token TEXT NOT NULL, fingerprint BLOB NOT "
        f"NULL, sealed BLOB NOT NULL, created_at REAL NOT NULL{keys})"
    )
    return db


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,100000,400000")
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    cipher = aesgcm_cipher(bytes(32))
    values = card_numbers(sizes[-1] + a.sample, seed=7)
    # The baseline's rows: the shape and sizes of the vault's (a 16-digit token, a 32-byte
    # fingerprint, the sealed 16-digit value).
    rows: list[tuple[object, ...]] = [
        (
            "card",
            v[::-1],
            bytearray(os.urandom(32)),
            bytearray(cipher.seal(v.encode(), b"aad")),
            time.time(),
        )
        for v in values
    ]
    print(
        f"token vault: new format-preserving tokens in provisional batches of {a.batch}, "
        f"CPU per token over {a.sample:,} new tokens at each size (synchronous=FULL, WAL)"
    )
    print(
        f"{'tokens stored':>14}  {'vault':>9}  {'indexed':>9}  {'append-only':>11}  "
        f"{'vault / append-only':>19}  {'indexed / append-only':>21}"
    )
    with tempfile.TemporaryDirectory() as d:
        vault = TokenVault(Path(d) / "vault.sqlite3", cipher=cipher)
        indexed = plain_db(Path(d) / "indexed.sqlite3", indexed=True)
        plain = plain_db(Path(d) / "plain.sqlite3", indexed=False)
        done = 0
        for size in sizes:
            fill(vault, values[done:size], a.batch)
            plain_rows(indexed, rows[done:size], a.batch)
            plain_rows(plain, rows[done:size], a.batch)
            sample = values[size : size + a.sample]
            c0 = time.process_time()
            fill(vault, sample, a.batch)
            c1 = time.process_time()
            plain_rows(indexed, rows[size : size + a.sample], a.batch)
            c2 = time.process_time()
            plain_rows(plain, rows[size : size + a.sample], a.batch)
            c3 = time.process_time()
            done = size + a.sample
            ours, idx, base = (
                (t1 - t0) / len(sample) * 1e6 for t0, t1 in ((c0, c1), (c1, c2), (c2, c3))
            )
            print(
                f"{size:>14,}  {ours:>6.1f} us  {idx:>6.1f} us  {base:>8.1f} us  "
                f"{ours / base:>19.2f}  {idx / base:>21.2f}"
            )
        # A value with a token already: the LRU cache answers.
        known = values[done - 1000 : done]
        c0 = time.process_time()
        for _ in range(20):
            for v in known:
                tokenize(vault, v)
        per = (time.process_time() - c0) / (20 * len(known)) * 1e6
        print(f"a value with a token already (cache): {per:.2f} us")
        vault.close()
        indexed.close()
        plain.close()


if __name__ == "__main__":
    main()
