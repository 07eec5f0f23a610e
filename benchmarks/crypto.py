"""Envelope encryption throughput against bare AES-GCM, measured in the same run.

Encrypts and decrypts 1 KiB records with ``ZoneCipher`` (cached data keys, local keystore,
SQLite key table) and with ``cryptography``'s ``AESGCM`` alone, and prints records/s
(encrypt + decrypt of one record) and their ratio. The machine is shared, so the contenders
alternate on small chunks of records (ABBA order) and each total is the sum over all chunks:
a load spike hits all of them alike.

Baselines:

* ``bare AESGCM``: what a program encrypting records with ``AESGCM`` and no key management
  does: a random 96-bit nonce per record, stored in front of the ciphertext, sliced off to
  decrypt. The target is ZoneCipher / bare AESGCM >= 0.8.
* ``AESGCM calls only``: the two calls and nothing else (counter nonce kept aside, nothing
  stored): a lower bound no real program reaches, printed for honesty.

Run: ``python benchmarks/crypto.py [--records N] [--rounds R] [--chunk C]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustzones.keys import LocalKeystore, MasterKey, SqliteKeyTable, ZoneCipher

RECORD_BYTES = 1024
Runner = Callable[[list[bytes], list[bytes]], float]


def make_bare() -> Runner:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    enc, dec, urandom = aead.encrypt, aead.decrypt, os.urandom

    def bare(records: list[bytes], aads: list[bytes]) -> float:
        start = time.perf_counter()
        for rec, aad in zip(records, aads, strict=True):
            nonce = urandom(12)
            blob = nonce + enc(nonce, rec, aad)
            dec(blob[:12], blob[12:], aad)
        return time.perf_counter() - start

    return bare


def make_calls_only() -> Runner:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    enc, dec = aead.encrypt, aead.decrypt

    def calls_only(records: list[bytes], aads: list[bytes]) -> float:
        start = time.perf_counter()
        for i, (rec, aad) in enumerate(zip(records, aads, strict=True)):
            nonce = i.to_bytes(12, "big")
            dec(nonce, enc(nonce, rec, aad), aad)
        return time.perf_counter() - start

    return calls_only


def make_zone(workdir: Path) -> Runner:
    keystore = LocalKeystore(workdir / "keys", master_key=MasterKey.generate())
    keystore.create_kek("bench")
    table = SqliteKeyTable(workdir / "bench.keys.sqlite")
    cipher = ZoneCipher("bench", keystore=keystore, table=table, audit=lambda event: None)
    cipher.open(cipher.seal(b"warm up: creates and caches the data key", aad=b""), aad=b"")

    def zone(records: list[bytes], aads: list[bytes]) -> float:
        seal, open_ = cipher.seal, cipher.open
        start = time.perf_counter()
        for rec, aad in zip(records, aads, strict=True):
            open_(seal(rec, aad=aad), aad=aad)
        return time.perf_counter() - start

    return zone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="records per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over all records")
    parser.add_argument("--chunk", type=int, default=500, help="records per alternation")
    args = parser.parse_args()

    records = [os.urandom(RECORD_BYTES) for _ in range(args.records)]
    aads = [f"bench/orders/{i % 12}/{i}".encode() for i in range(args.records)]
    with tempfile.TemporaryDirectory() as tmp:
        runners = {"bare": make_bare(), "calls": make_calls_only(), "zone": make_zone(Path(tmp))}
        totals = dict.fromkeys(runners, 0.0)
        order = list(runners)
        for _ in range(args.rounds):
            for start in range(0, args.records, args.chunk):
                recs = records[start : start + args.chunk]
                ads = aads[start : start + args.chunk]
                for name in order:
                    totals[name] += runners[name](recs, ads)
                order.reverse()  # ABC CBA ...: no contender always runs first
    n = args.records * args.rounds
    rate = {name: n / t for name, t in totals.items()}
    print(
        f"1 KiB records, encrypt + decrypt, {n:,} records each, alternating chunks of {args.chunk}"
    )
    print(f"  bare AESGCM (random nonce, stored)  {rate['bare']:>10,.0f} records/s  baseline")
    print(f"  AESGCM calls only (lower bound)     {rate['calls']:>10,.0f} records/s")
    print(f"  ZoneCipher (cached data keys)       {rate['zone']:>10,.0f} records/s")
    ratio = rate["zone"] / rate["bare"]
    print(f"  ratio ZoneCipher / bare AESGCM        {ratio:.2f}  (target >= 0.80)")
    print(f"  ratio ZoneCipher / AESGCM calls only  {rate['zone'] / rate['calls']:.2f}")


if __name__ == "__main__":
    main()
