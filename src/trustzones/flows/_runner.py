"""The flow runtime: consume → sanitise → enforce → scan → watermark → produce.

A flow is the only way data moves down. It runs as its service principal with source-zone
rights and, per batch:

1. reads records from the source topic, starting at the position stored **in the
   destination zone** (so the position and the output commit together);
2. decides each record: decode, apply the field transforms, keep only what the destination
   schema declares (when ``drop_unlisted``), validate against the destination schema, refuse
   any field classified above the destination zone, DLP-scan the whole output and apply the
   flow's DLP action (``quarantine`` / ``redact`` / ``block``), watermark, add lineage headers;
3. writes the refused records to the flow's quarantine topic in the **source** zone, in one
   source transaction that also records how far quarantining has got;
4. writes the delivered records to the destination, in one destination transaction that also
   stores the new source position.

Exactly-once: the two zones are separate files (or clusters), so no transaction spans both.
Step 3 commits before step 4. After a crash between them, the batch is read again from the
destination position; records below the quarantine position are not quarantined twice, and
the deliverable ones are written now (decisions are deterministic for one flow definition).
Every source record therefore ends up exactly once in the destination or the quarantine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from trustzones.config.model import FlowSpec
from trustzones.config.schema import SchemaField
from trustzones.dlp import Finding, Scanner
from trustzones.dlp.transforms import Transformer, TransformPlan
from trustzones.errors import FlowError, RecordRejected, TransformError
from trustzones.flows._paths import keep_only, leaves, leaves_ok
from trustzones.flows._watermark import Watermarker
from trustzones.streams import NewRecord, Record
from trustzones.zone import Workspace
from trustzones.zone._ingress import MAX_DEPTH

__all__ = ["FlowBlocked", "FlowRunner", "FlowStats", "Outcome", "quarantine_topic"]


class FlowBlocked(FlowError):
    """The flow's DLP action is ``block`` and a record tripped it; the flow has stopped."""


def quarantine_topic(flow: FlowSpec) -> str:
    return flow.quarantine_topic or f"tz.quarantine.{flow.name}"


def position_key(zone: str, topic: str) -> str:
    """How a flow names its source topic in the destination's offset store.

    A legal Kafka topic name (the Kafka backend keeps foreign offsets against an anchor topic
    named after it). Topic names are unique across zones, so the pair cannot collide.
    """
    return f"{zone}.{topic}"


@dataclass
class Outcome:
    kind: Literal["deliver", "quarantine"]
    value: bytes = b""
    reason: str = ""
    findings: list[dict[str, Any]] = field(default_factory=list)
    redacted: int = 0


@dataclass
class FlowStats:
    read: int = 0
    delivered: int = 0
    quarantined: int = 0
    redacted: int = 0
    batches: int = 0
    lag: int = 0

    def add(self, other: FlowStats) -> None:
        self.read += other.read
        self.delivered += other.delivered
        self.quarantined += other.quarantined
        self.redacted += other.redacted
        self.batches += other.batches
        self.lag = other.lag


class FlowRunner:
    """Runs one flow. ``transformer`` applies the field transforms (bound to the source
    zone's keys and token vault); :func:`trustzones.flows.open_flow` builds a ready one.

    Scale-out: set ``partitions`` to a fixed subset of the source partitions before running,
    and run one process per disjoint subset (for example instance ``i`` of ``n`` takes
    ``range(i, count, n)``). Each subset gets its own transactional ids, so the instances do
    not fence each other, and a restarted instance fences its own zombie.
    """

    partitions: tuple[int, ...] | None = None
    _cursor: tuple[dict[int, int], dict[int, int]] | None = None  # (position, quarantine position)

    def __init__(
        self,
        ws: Workspace,
        flow: str,
        *,
        transformer: Transformer,
        scanner: Scanner,
        watermarker: Watermarker | None = None,
        redactor: Callable[[Any, list[Finding]], Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        c = ws.config
        if flow not in c.flows:
            raise FlowError(f"no flow named {flow!r}; declared: {', '.join(sorted(c.flows))}")
        self.ws = ws
        self.spec = c.flows[flow]
        self.name = flow
        self.source_topic = self.spec.source
        self.dest_topic = self.spec.destination
        self.source_zone = c.topics[self.source_topic].zone
        self.dest_zone = c.topics[self.dest_topic].zone
        self.quarantine_topic = quarantine_topic(self.spec)
        self.group = f"tz.flow.{flow}"
        self.qgroup = f"tz.flow.{flow}.quarantine"
        self.position_key = position_key(self.source_zone, self.source_topic)
        self.policy = c.policy_version
        self._transformer = transformer
        self._plan = TransformPlan.compile(self.spec.transforms)
        self._transformed = tuple(self.spec.transforms)
        self._scanner = scanner
        self._watermarker = watermarker
        self._redactor = redactor
        self._on_event = on_event
        self._dest_level = c.zone_level(self.dest_zone)
        self._dest_fields: dict[str, SchemaField] = c.fields(self.dest_topic)
        self._src_fields: dict[str, SchemaField] = c.fields(self.source_topic)
        self._dest_validator = ws.validator(self.dest_topic)
        self._allowed = self._allowed_paths()
        self._path_cache: dict[str, str | None] = {}
        self._levels = {name: i for i, name in enumerate(c.classifications)}
        self._src_default = c.zone_of(self.source_topic).classification
        self._dst_default = c.zone_of(self.dest_topic).classification

    # -- setup ----------------------------------------------------------------------------
    def _allowed_paths(self) -> set[str]:
        out: set[str] = set()
        for p in self._dest_fields:
            out.add(p)
        return out

    def prepare(self) -> None:
        """Check rights and create the quarantine topic (idempotent)."""
        self.ws.authorize(self.spec.principal, "read", self.source_topic)
        self.ws.authorize(self.spec.principal, "write", self.dest_topic)
        src = self.ws.backend(self.source_zone)
        src.ensure_topic(self.quarantine_topic, partitions=1)
        src.ensure_topic(f"{self.quarantine_topic}.decisions", partitions=1)

    def dest_backend(self) -> Any:
        """The destination zone, opened for this flow: it may seal records there, not read."""
        return self.ws.backend(self.dest_zone, acting_for=self.source_zone)

    # -- positions ------------------------------------------------------------------------
    def positions(self) -> dict[int, int]:
        src = self.ws.backend(self.source_zone)
        dst = self.dest_backend()
        stored = dst.committed_offsets(self.group, self.position_key)
        parts = self.partitions
        if parts is None:
            parts = tuple(range(src.partition_count(self.source_topic)))
        return {p: stored.get(p, 0) for p in parts}

    def _txn_id(self) -> str:
        """This instance's transactional id: one per fixed partition subset."""
        if self.partitions is None:
            return self.group
        return f"{self.group}.p{'-'.join(str(p) for p in sorted(self.partitions))}"

    def lag(self) -> int:
        ends = self.ws.backend(self.source_zone).end_offsets(self.source_topic)
        pos = self.positions()
        return sum(max(0, ends.get(p, 0) - o) for p, o in pos.items())

    # -- one record -----------------------------------------------------------------------
    def _level(self, cls: str) -> int:
        return self._levels.get(cls, len(self._levels))  # unknown → above everything

    def _path_problem(self, spath: str) -> str | None:
        """Why a leaf at schema path ``spath`` may not be written down (cached per path)."""
        cache = self._path_cache
        if spath in cache:
            return cache[spath]
        problem = None
        df = self._dest_fields.get(spath)
        dcls = df.classification if df else self._dst_default
        if self._level(dcls) > self._dest_level:
            problem = f"is classified {dcls!r}, above destination zone {self.dest_zone!r}"
        elif not any(spath == t or spath.startswith((t + ".", t + "[")) for t in self._transformed):
            sf = self._src_fields.get(spath)
            scls = sf.classification if sf else self._src_default
            if self._level(scls) > self._dest_level:
                problem = f"({scls}) would be written down untransformed into {self.dest_zone!r}"
        if len(cache) < 10_000:
            cache[spath] = problem
        return problem

    def _prepare(self, value: bytes) -> Outcome | Any:
        """Decode, transform and enforce the destination; an Outcome when refused."""
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return Outcome("quarantine", reason="source record is not valid JSON")
        if not isinstance(doc, dict):
            return Outcome("quarantine", reason="source record is not a JSON object")
        try:
            out = self._transformer.apply_record(doc, self._plan)
        except TransformError as exc:
            return Outcome("quarantine", reason=f"transform failed: {exc}")
        if self.spec.drop_unlisted:
            out = keep_only(out, self._allowed)
        # Destination enforcement (invariant 3, at run time). The usual case in one walk:
        # every leaf allowed, size, depth and schema as the destination's validator decides
        # them, without decoding the output again; any doubt takes the full path below,
        # which alone says why a record is refused.
        if leaves_ok(out, self._path_problem, MAX_DEPTH) and self._dest_validator.accepts(
            out, len(orjson.dumps(out))
        ):
            return out
        for spath, cpath in leaves(out):
            problem = self._path_problem(spath)
            if problem is not None:
                return Outcome("quarantine", reason=f"field {cpath} {problem}")
        try:
            self._dest_validator.check(orjson.dumps(out))
        except RecordRejected as rej:
            where = f" at {rej.path}" if rej.path else ""
            return Outcome(
                "quarantine", reason=f"output breaks the destination schema{where}: {rej.reason}"
            )
        return out

    def _finish(self, out: Any, scanned: list[Finding]) -> Outcome:
        findings = [
            f
            for f in scanned
            if f.confidence >= self.spec.dlp.min_confidence
            and f.type not in self.spec.dlp.allow_types
        ]
        redacted = 0
        if findings:
            summary = [{"type": f.type, "path": f.path} for f in findings]
            if self.spec.dlp.action == "redact" and self._redactor is not None:
                out = self._redactor(out, findings)
                redacted = len(findings)
            else:
                types = ", ".join(sorted({f.type for f in findings}))
                return Outcome(
                    "quarantine", reason=f"DLP found {types} in the output", findings=summary
                )
        if self._watermarker is not None:
            self._watermarker.mark(out)
        return Outcome("deliver", value=orjson.dumps(out), redacted=redacted)

    def decide_many(self, values: list[bytes], *, scan: bool = True) -> list[Outcome]:
        """What happens to each source record. No I/O but the token vault.

        The DLP scan runs once over the whole batch (one pass of the compiled engine).
        ``scan=False`` skips only the DLP scan (a release a human approved); the destination
        schema and classification checks always apply.
        """
        # One vault transaction for the new tokens of the whole batch, committed here,
        # before any record that carries one can be written (step 4 comes after this).
        with self._transformer.batch():
            prepared = [self._prepare(v) for v in values]
        pending = [i for i, p in enumerate(prepared) if not isinstance(p, Outcome)]
        scans = (
            self._scanner.scan_records([prepared[i] for i in pending])
            if scan and pending
            else [[] for _ in pending]
        )
        outcomes: list[Outcome] = []
        found = dict(zip(pending, scans, strict=True))
        for i, p in enumerate(prepared):
            outcomes.append(p if isinstance(p, Outcome) else self._finish(p, found[i]))
        return outcomes

    def decide(self, value: bytes, *, scan: bool = True) -> Outcome:
        """:meth:`decide_many` for one record."""
        return self.decide_many([value], scan=scan)[0]

    # -- a batch --------------------------------------------------------------------------
    def step(self, max_records: int = 500) -> FlowStats:
        """Process up to ``max_records``; returns what happened. Raises FlowBlocked."""
        self.ws.authorize(self.spec.principal, "read", self.source_topic)
        self.ws.authorize(self.spec.principal, "write", self.dest_topic)
        src = self.ws.backend(self.source_zone)
        dst = self.dest_backend()
        # The stored positions are read once per runner, then carried forward from its own
        # commits (a remote offset store costs round trips per read); any failure drops them.
        cursor = self._cursor
        self._cursor = None
        if cursor is None:
            # Fence a crashed predecessor first: starting our transactional ids aborts its open
            # transactions, whose pending offsets would otherwise hold the reads below back
            # (Kafka answers UNSTABLE_OFFSET_COMMIT until they time out). Empty elsewhere.
            with src.transaction(f"{self._txn_id()}.quarantine"):
                pass
            with dst.transaction(self._txn_id()):
                pass
            cursor = (self.positions(), src.committed_offsets(self.qgroup, self.source_topic))
        pos, qpos = cursor
        records: list[Record] = []
        for p, at in pos.items():
            if len(records) >= max_records:
                break
            records += src.fetch(self.source_topic, p, at, max_records=max_records - len(records))
        stats = FlowStats()
        if not records:
            stats.lag = 0
            self._cursor = cursor
            return stats
        delivered: list[NewRecord] = []
        quarantined: list[NewRecord] = []
        new_pos = dict(pos)
        blocked: Record | None = None
        done: list[tuple[Record, Outcome]] = []
        for r, o in zip(records, self.decide_many([r.value for r in records]), strict=True):
            done.append((r, o))
            new_pos[r.partition] = r.offset + 1
            stats.read += 1
            if o.kind == "deliver":
                delivered.append(NewRecord(value=o.value, key=r.key, headers=self._lineage(r)))
                stats.redacted += o.redacted
                continue
            stats.quarantined += 1
            if r.offset >= qpos.get(r.partition, 0):
                quarantined.append(self._quarantine_record(r, o))
            if o.findings and self.spec.dlp.action == "block":
                blocked = r
                break
        # Audit before anything takes effect (a failure to record stops the batch).
        self._audit_transfers(done)
        # Step 3: quarantine (source zone) first, with its progress.
        if quarantined:
            with src.transaction(f"{self._txn_id()}.quarantine") as tx:
                tx.produce(self.quarantine_topic, quarantined)
                tx.store_offsets(self.qgroup, self.source_topic, new_pos)
            qpos = {**qpos, **new_pos}
        # Step 4: output and source position together (destination zone).
        with dst.transaction(self._txn_id()) as tx:
            if delivered:
                tx.produce(self.dest_topic, delivered)
            tx.store_offsets(self.group, self.position_key, new_pos)
        self._cursor = (new_pos, qpos)
        stats.delivered = len(delivered)
        stats.batches = 1
        self._emit(
            "flow.transfer",
            {
                "flow": self.name,
                "read": stats.read,
                "delivered": stats.delivered,
                "quarantined": stats.quarantined,
                "redacted": stats.redacted,
                "positions": new_pos,
            },
        )
        if blocked is not None:
            raise FlowBlocked(
                f"flow {self.name!r} blocked: DLP found sensitive data in the output of "
                f"{self.source_topic} partition {blocked.partition} offset {blocked.offset}; "
                f"the record is held in {self.quarantine_topic}. Review it with `trustzones "
                f"quarantine list {self.name}`, fix the flow, and run it again."
            )
        return stats

    def run(
        self,
        *,
        once: bool = True,
        batch: int = 500,
        idle_sleep: float = 0.25,
        on_progress: Callable[[FlowStats], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> FlowStats:
        """Drain the source (``once``) or keep following it until ``should_stop()``."""
        self.prepare()
        total = FlowStats()
        while not should_stop():
            s = self.step(batch)
            total.add(s)
            if s.read == 0:
                total.lag = self.lag()
                if on_progress:
                    on_progress(total)
                if once:
                    break
                time.sleep(idle_sleep)
                continue
            if on_progress:
                total.lag = self.lag()
                on_progress(total)
        total.lag = self.lag()
        return total

    # -- helpers --------------------------------------------------------------------------
    def _lineage(self, r: Record) -> tuple[tuple[str, bytes], ...]:
        return (
            ("tz.source.zone", self.source_zone.encode()),
            ("tz.source.topic", self.source_topic.encode()),
            ("tz.source.partition", str(r.partition).encode()),
            ("tz.source.offset", str(r.offset).encode()),
            ("tz.flow", self.name.encode()),
            ("tz.policy", self.policy.encode()),
        )

    def _quarantine_record(self, r: Record, o: Outcome) -> NewRecord:
        return NewRecord(
            value=r.value,
            key=r.key,
            headers=(
                *self._lineage(r),
                ("tz.reason", o.reason.encode()),
                ("tz.findings", orjson.dumps(o.findings)),
                ("tz.quarantined_at", str(int(time.time() * 1000)).encode()),
            ),
        )

    def _audit_transfers(self, done: list[tuple[Record, Outcome]]) -> None:
        """Per-record transfer events where the source zone audits per message."""
        zone = self.ws.config.zones[self.source_zone]
        if zone.controls.audit_level != "per-message" or not done:
            return
        from trustzones.audit.events import flow_transfer

        events = [
            flow_transfer(
                flow=self.name,
                principal=self.spec.principal,
                source_zone=self.source_zone,
                source_topic=self.source_topic,
                source_partition=r.partition,
                source_offset=r.offset,
                destination_zone=self.dest_zone,
                destination_topic=self.dest_topic,
                outcome="allow" if o.kind == "deliver" else "quarantine",
                content=r.value,
                reason=None if o.kind == "deliver" else o.reason[:200],
            )
            for r, o in done
        ]
        self.ws.audit.log().append_many(events)

    def _emit(self, action: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(action, data)
