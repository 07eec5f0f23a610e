"""The sanitising flow written with Quix Streams, for ``benchmarks/kafka_flows.py``.

Runs in its own virtualenv (Quix Streams pins an older confluent-kafka than trustzones), so it
uses only Quix, orjson and the standard library. Exactly-once: a ``KafkaReplicatorSource``
copies the source topic from the source cluster into the application's cluster (the
destination), and the application processes it with ``processing_guarantee="exactly-once"``.

The transforms mirror the example flow ``payments-to-analytics``: keyed tokenisation of the
card number (last 4 kept, format kept), suppression of CVV, expiry and name, keyed hash of the
casefolded e-mail (16 hex), phone mask, age to a decade, ZIP to 3 digits, birth date to the
year; then a regex DLP scan of the output (Luhn-checked card numbers, US SSNs, e-mail
addresses) that routes a record with findings to a quarantine topic.

    QUIX_SRC_PASSWORD=... QUIX_DST_PASSWORD=... python scripts/quix_bench.py SETTINGS.json

SETTINGS.json: {"src": {"bootstrap", "username"}, "dst": {...}, "topic", "out", "quarantine",
"count", "name"}. Prints one JSON line: records, seconds (first record → stopped), total.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
import time
from typing import Any

from quixstreams import Application
from quixstreams.internal_producer import InternalProducer
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.sources.core.kafka import KafkaReplicatorSource

KEY = b"quix-bench-key"
CARD = re.compile(rb"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
SSN = re.compile(rb"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def tokenize(number: str) -> str:
    digits = [c for c in number if c.isdigit()]
    mac = hmac.new(KEY, "".join(digits).encode(), hashlib.sha256).digest()
    fresh = [str(b % 10) for b in mac]
    out, i, keep_from = [], 0, len(digits) - 4
    for c in number:
        if c.isdigit():
            out.append(c if i >= keep_from else fresh[i % len(fresh)])
            i += 1
        else:
            out.append(c)
    return "".join(out)


def sanitise(doc: dict[str, Any]) -> dict[str, Any]:
    card = doc.get("card")
    if isinstance(card, dict):
        if isinstance(card.get("number"), str):
            card["number"] = tokenize(card["number"])
        card.pop("cvv", None)
        card.pop("expiry", None)
    cust = doc.get("customer")
    if isinstance(cust, dict):
        cust.pop("name", None)
        if isinstance(cust.get("email"), str):
            e = cust["email"].casefold().encode()
            cust["email"] = hmac.new(KEY, e, hashlib.sha256).hexdigest()[:16]
        if isinstance(cust.get("phone"), str):
            p = cust["phone"]
            cust["phone"] = "*" * (len(p) - 2) + p[-2:]
        if isinstance(cust.get("age"), int):
            lo = cust["age"] // 10 * 10
            cust["age"] = f"{lo}-{lo + 9}"
        if isinstance(cust.get("zip"), str):
            cust["zip"] = cust["zip"][:3]
        if isinstance(cust.get("birth_date"), str):
            cust["birth_date"] = cust["birth_date"][:4]
    out = json.dumps(doc).encode()
    found = any(luhn(re.sub(rb"\D", b"", m.group()).decode()) for m in CARD.finditer(out))
    found = found or bool(SSN.search(out)) or bool(EMAIL.search(out))
    return {"q": found, "doc": doc}


def conn(side: dict[str, Any], env: str) -> ConnectionConfig:
    return ConnectionConfig(
        bootstrap_servers=side["bootstrap"],
        security_protocol="sasl_plaintext",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username=side["username"],
        sasl_password=os.environ[env],
    )


def main() -> None:
    with open(sys.argv[1]) as fh:
        s = json.load(fh)
    count = int(s["count"])
    app = Application(
        broker_address=conn(s["dst"], "QUIX_DST_PASSWORD"),
        consumer_group=f"{s['name']}-app",
        processing_guarantee="exactly-once",
        auto_offset_reset="earliest",
        loglevel=os.environ.get("QUIX_LOGLEVEL", "WARNING"),
        state_dir=s.get("state_dir", "state"),
    )
    if s.get("replicate", True):
        # Quix Streams 3.28.1 registers every source with a non-transactional producer, while
        # KafkaReplicatorSource under exactly-once begins transactions on it, so the source fails
        # at once ("Producer must be initialized with `transactional=True`"). Give the source a
        # transactional producer with its own transactional id (its offsets go into the same
        # destination-cluster transaction as its records, which is the pattern we compare with).
        make_producer = app._get_internal_producer

        def source_producer(on_error: Any = None, transactional: bool | None = None) -> Any:
            if transactional is False:
                cfg = app.config
                return InternalProducer(
                    broker_address=cfg.broker_address,
                    extra_config={
                        **cfg.producer_extra_config,
                        "transactional.id": f"{s['name']}-source-txn",
                    },
                    flush_timeout=cfg.flush_timeout,
                    on_error=on_error,
                    transactional=True,
                )
            return make_producer(on_error=on_error, transactional=transactional)

        app._get_internal_producer = source_producer  # type: ignore[method-assign]
        source = KafkaReplicatorSource(
            name=f"{s['name']}-rep",
            app_config=app.config,
            topic=s["topic"],
            broker_address=conn(s["src"], "QUIX_SRC_PASSWORD"),
            auto_offset_reset="earliest",
        )
        stream = app.dataframe(source=source)
    else:
        # The records were copied into the destination cluster beforehand (untimed): Quix
        # reads and writes one cluster, exactly-once.
        stream = app.dataframe(app.topic(s["topic"], value_deserializer="json"))
    seen = {"n": 0, "first": 0.0}

    def counted(doc: dict[str, Any]) -> dict[str, Any]:
        if seen["n"] == 0:
            seen["first"] = time.perf_counter()
        seen["n"] += 1
        if seen["n"] >= count:
            app.stop()
        return sanitise(doc)

    sdf = stream.apply(counted)
    out = app.topic(s["out"], value_serializer="json")
    quarantine = app.topic(s["quarantine"], value_serializer="json")
    sdf.filter(lambda v: not v["q"]).apply(lambda v: v["doc"]).to_topic(out)
    sdf.filter(lambda v: v["q"]).apply(lambda v: v["doc"]).to_topic(quarantine)
    t0 = time.perf_counter()
    app.run()
    t1 = time.perf_counter()
    print(json.dumps({"records": seen["n"], "seconds": t1 - seen["first"], "total": t1 - t0}))


if __name__ == "__main__":
    main()
