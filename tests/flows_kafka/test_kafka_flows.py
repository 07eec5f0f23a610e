"""Flows on Kafka: exactly-once across SIGKILLs (between two clusters and within one), and
scale-out by static partition subsets. Verified with plain read_committed consumers."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from kafka_fixtures import Layout, approve, connection, kafka_zones
from trustzones.flows import event_key, generate_events
from trustzones.zone import Workspace
from workspace_helpers import kill_at_random

pytestmark = pytest.mark.kafka

FLOW = "payments-to-analytics"
QUARANTINE = "tz.quarantine.payments-to-analytics"
RUNNER = r"""
import sys
from trustzones.flows import open_flow
from trustzones.zone import Workspace
with Workspace.open() as ws:
    r = open_flow(ws, "payments-to-analytics")
    if len(sys.argv) > 2:
        r.partitions = tuple(int(p) for p in sys.argv[2].split(","))
    r.prepare()
    while True:
        s = r.step(int(sys.argv[1]))
        print(s.read, flush=True)
        if s.read == 0:
            break
"""

# ``run``: a writer thread writes each batch while the next is decided; it reports after each
# batch it has written.
PIPELINED = r"""
import sys
from trustzones.flows import open_flow
from trustzones.zone import Workspace
with Workspace.open() as ws:
    r = open_flow(ws, "payments-to-analytics")
    r.run(once=True, batch=int(sys.argv[1]), on_progress=lambda s: print(s.read, flush=True))
    print("done", flush=True)
"""


def read_committed(cluster: Any, topic: str) -> list[Any]:
    """Every committed record of ``topic`` (full Kafka name), read by a plain client."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    conf = connection(cluster).client_config("test-reader")
    md = AdminClient(conf).list_topics(topic=topic, timeout=20)
    parts = sorted(md.topics[topic].partitions)
    consumer = Consumer(
        {
            **conf,
            "group.id": "test-reader",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(at_end) < len(parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is None:
                out.append(msg)
            elif err.code() == err._PARTITION_EOF:
                at_end.add(msg.partition())
            else:
                raise AssertionError(err)
    finally:
        consumer.close()
    return out


def origins(msgs: list[Any], zone: str, topic: str) -> Counter[tuple[bytes, bytes]]:
    """Source positions named by the lineage headers, opened with the zone's keys (the
    zones are encrypted at rest: the broker holds sealed envelopes only)."""
    from trustzones.streams import Record

    with Workspace.open() as ws:
        backend: Any = ws.backend(zone)
        records = [
            backend.unseal(Record(topic, m.partition(), m.offset(), m.key(), m.value(), (), 0))
            for m in msgs
        ]
    return Counter((r.header("tz.source.partition"), r.header("tz.source.offset")) for r in records)


def _start(cwd: Path, batch: int, partitions: str | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", RUNNER, str(batch)] + ([partitions] if partitions else [])
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, text=True)


def _run_and_kill(cwd: Path, rng: random.Random, batch: int, runner: str = RUNNER) -> bool:
    """SIGKILL the runner at a random moment after its first batch; True if it had finished."""
    return kill_at_random([sys.executable, "-c", runner, str(batch)], cwd, rng)


def _setup(
    workspace_dir: Path,
    clusters: list[Any],
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    layout: Layout,
    count: int,
) -> tuple[dict[str, dict[str, Any]], set[tuple[bytes, bytes]]]:
    backends = kafka_zones(workspace_dir, clusters, monkeypatch, layout=layout, prefix=prefix)
    with Workspace.open() as ws:
        ws.ensure_topics()
        approve(ws)
        events = generate_events(ws.config, "payments.transactions", count, seed=5, leak_rate=0.1)
        res = ws.produce(
            "payments.transactions",
            [orjson.dumps(e) for e in events],
            principal="payments-service",
            keys=[event_key(ws.config, "payments.transactions", e) for e in events],
        )
        assert len(res.accepted) == count
    source = {(str(p.partition).encode(), str(p.offset).encode()) for p in res.accepted}
    return backends, source


def _check_exactly_once(
    clusters: list[Any],
    backends: dict[str, dict[str, Any]],
    layout: Layout,
    source: set[tuple[bytes, bytes]],
    min_held: int = 20,
) -> None:
    dst_cluster = clusters[1] if layout == "dedicated" else clusters[0]
    delivered = origins(
        read_committed(dst_cluster, backends["analytics"]["prefix"] + "analytics.transactions"),
        "analytics",
        "analytics.transactions",
    )
    held = origins(
        read_committed(clusters[0], backends["payments"]["prefix"] + QUARANTINE),
        "payments",
        QUARANTINE,
    )
    assert max(delivered.values()) == 1, "a record was delivered twice"
    assert max(held.values()) == 1, "a record was quarantined twice"
    assert not set(delivered) & set(held), "a record was both delivered and quarantined"
    assert set(delivered) | set(held) == source, "a record was lost"
    assert len(held) > min_held  # ~10% of the events hide a card number or an SSN


@pytest.mark.parametrize(
    ("layout", "runner"),
    [("dedicated", RUNNER), ("virtual", RUNNER), ("dedicated", PIPELINED)],
    ids=["dedicated", "virtual", "dedicated-run"],
)
def test_sigkill_at_random_points_keeps_exactly_once_on_kafka(
    layout: Layout,
    runner: str,
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends, source = _setup(
        workspace_dir, kafka_clusters, kafka_prefix, monkeypatch, layout, 1200
    )
    rng = random.Random((7 if layout == "dedicated" else 8) + (runner is PIPELINED))
    kills = 0
    for _ in range(8):
        if _run_and_kill(workspace_dir, rng, batch=rng.choice((20, 50, 100)), runner=runner):
            break
        kills += 1
        if kills >= 4:
            break
    out = subprocess.run(
        [sys.executable, "-c", runner, "200"],
        cwd=workspace_dir,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    assert out.stdout.splitlines()[-1] in ("0", "done")  # it ran to the end
    assert kills >= 3, "the flow finished before it could be killed often enough"
    _check_exactly_once(kafka_clusters, backends, layout, source)


def test_two_flow_processes_split_the_partitions(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends, source = _setup(
        workspace_dir, kafka_clusters, kafka_prefix, monkeypatch, "dedicated", 600
    )
    procs = [_start(workspace_dir, 100, "0,2"), _start(workspace_dir, 100, "1")]
    reads = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0
        reads.append(sum(int(n) for n in stdout.split()))
    by_partition = Counter(p for p, _ in source)
    assert reads == [by_partition[b"0"] + by_partition[b"2"], by_partition[b"1"]]
    _check_exactly_once(kafka_clusters, backends, "dedicated", source)


def test_restart_fences_a_crashed_transaction_instead_of_waiting_for_its_timeout(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: a flow killed between sending its offsets and committing left them pending;
    the restarted flow read its position first and waited (UNSTABLE_OFFSET_COMMIT) until the
    broker's transaction timeout, longer than its own: it failed instead of resuming."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from trustzones.flows import open_flow

    backends, source = _setup(
        workspace_dir, kafka_clusters, kafka_prefix, monkeypatch, "dedicated", 90
    )
    with Workspace.open() as ws:
        assert open_flow(ws, FLOW).run(once=True, batch=30).read == 90
    # A zombie with the flow's transactional id: offsets sent, never committed or aborted.
    dst = backends["analytics"]["prefix"]
    conf = connection(kafka_clusters[1]).client_config("zombie")
    group = f"{dst}tz.flow.{FLOW}"
    meta = Consumer({**conf, "group.id": group}).consumer_group_metadata()
    zombie = Producer({**conf, "transactional.id": group, "transaction.timeout.ms": 120_000})
    zombie.init_transactions(20)
    zombie.begin_transaction()
    anchor = f"{dst}__tz-offsets.payments.payments.transactions"
    zombie.send_offsets_to_transaction([TopicPartition(anchor, 0, 1)], meta, 20)
    with Workspace.open() as ws:
        started = time.monotonic()
        stats = open_flow(ws, FLOW).run(once=True, batch=30)
        assert time.monotonic() - started < 20
        assert stats.read == 0  # resumed where the committed position was, not at offset 1
    _check_exactly_once(kafka_clusters, backends, "dedicated", source, min_held=3)


def test_a_batch_whose_audit_append_fails_takes_no_effect_on_kafka(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between Kafka zones a batch's records go to the producers before its audit append
    (they travel while it runs): a failed append must still leave no trace of the batch,
    output or quarantine, and the next run must move every record exactly once."""
    from trustzones.audit.events import CanonicalEvent
    from trustzones.flows import open_flow
    from trustzones.streams._kafka import _KafkaTransaction

    backends, source = _setup(
        workspace_dir, kafka_clusters, kafka_prefix, monkeypatch, "dedicated", 80
    )
    steps: list[str] = []
    real_produce = _KafkaTransaction.produce

    def produce(self: Any, topic: str, records: Any) -> None:
        steps.append(f"produce {topic}")
        real_produce(self, topic, records)

    def unrecordable(events: Any) -> Any:
        if not any(isinstance(e, CanonicalEvent) for e in events):
            return real_append(events)  # not a batch's transfers (a new data key's, say)
        steps.append("audit")
        raise OSError("the audit disk is full")

    monkeypatch.setattr(_KafkaTransaction, "produce", produce)
    with Workspace.open() as ws:
        runner = open_flow(ws, FLOW)
        assert runner._ship_early
        real_append = ws.audit.log().append_many
        monkeypatch.setattr(ws.audit.log(), "append_many", unrecordable)
        with pytest.raises(OSError, match="audit disk is full"):
            runner.run(once=True, batch=80)
    # The first batch's records were with the producers when its append failed (the
    # reader may hand over fewer than 80 records, with or without one to quarantine).
    first = steps[: steps.index("audit")]
    assert first[0] == "produce analytics.transactions"
    assert first[1:] in ([], [f"produce {QUARANTINE}"])
    prefix = backends["analytics"]["prefix"]
    assert read_committed(kafka_clusters[1], prefix + "analytics.transactions") == []
    assert read_committed(kafka_clusters[0], backends["payments"]["prefix"] + QUARANTINE) == []
    with Workspace.open() as ws:
        assert open_flow(ws, FLOW).run(once=True, batch=80).read == 80
    _check_exactly_once(kafka_clusters, backends, "dedicated", source, min_held=1)
