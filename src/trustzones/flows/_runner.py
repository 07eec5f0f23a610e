"""The flow runtime: consume → sanitise → watermark → enforce → scan → produce.

A flow is the only way data moves down. It runs as its service principal with source-zone
rights and, per batch:

1. reads records from the source topic, starting at the position stored **in the
   destination zone** (so the position and the output commit together);
2. decides each record: decode, apply the field transforms, keep only what the destination
   schema declares (when ``drop_unlisted``), watermark, validate against the destination
   schema, refuse any field classified above the destination zone, DLP-scan the whole output
   (exactly the bytes that will be written) and apply the flow's DLP action (``quarantine`` /
   ``redact`` / ``block``), add lineage headers; the batch's new vault tokens are committed
   before anything that carries them is written (see :meth:`FlowRunner.decide_many`);
3. appends one ``flow_transfer`` audit event per record read, when the source zone audits
   per message (before anything takes effect: a failure to audit stops the batch);
4. writes the refused records to the flow's quarantine topic in the **source** zone, in one
   source transaction that also records how far quarantining has got;
5. writes the delivered records to the destination, in one destination transaction that also
   stores the new source position.

Exactly-once: the two zones are separate files (or clusters), so no transaction spans both.
Step 4 commits before step 5. After a crash between them, the batch is read again from the
destination position; records below the quarantine position are not quarantined twice, and
the deliverable ones are written now (decisions are deterministic for one flow definition:
a value's vault token, once committed, never changes).
Every source record therefore ends up exactly once in the destination or the quarantine.

Between batches a runner carries its positions, its zones' backends and a reader that goes on
from those positions (on Kafka a consumer that prefetches while a batch is processed); any
failure drops them, and the next batch starts again from the stored positions.

:meth:`FlowRunner.step` does one batch, steps 1-5. :meth:`FlowRunner.run` overlaps two where
that pays (a zone on Kafka; on the embedded backend the same loop writes inline): a writer
thread does steps 3-5 of batch ``n`` while the calling thread does steps 1-2 of batch
``n + 1``. Batches are still written one at a time, in source order, steps 3-5 in order, and
each zone's backend is used by one thread at a time, so the protocol above is unchanged.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, cast

import orjson

from trustzones.audit.events import AuditEvent, CanonicalEvent, flow_transfer, flow_transfers
from trustzones.audit.log import AuditLog
from trustzones.config.model import FlowSpec
from trustzones.config.schema import SchemaField
from trustzones.dlp import Finding, Scanner
from trustzones.dlp.transforms import Transformer, TransformPlan
from trustzones.dlp.vault import ProvisionalToken, TokenVault
from trustzones.errors import FlowError, RecordRejected, TransformError
from trustzones.flows._paths import KeepChecked, closed_leaf_paths, leaves, leaves_ok
from trustzones.flows._watermark import Watermarker
from trustzones.streams import Backend, NewRecord, Record
from trustzones.streams.base import UNDECRYPTABLE_HEADERS, Consumer
from trustzones.zone import Workspace
from trustzones.zone._ingress import MAX_DEPTH

__all__ = ["FlowBlocked", "FlowRunner", "FlowStats", "Outcome", "quarantine_topic"]

_log = logging.getLogger(__name__)


#: How often a batch re-transforms records whose provisional tokens were replaced before it
#: lets the vault's batch end decide (fail closed). One round is the rule: replacements are
#: checked tokens, so a second round only follows a replacement the record's scan flags.
_SETTLE_ROUNDS = 3
#: The longest thread switch interval while :meth:`FlowRunner.run` runs, in seconds.
_SWITCH_INTERVAL = 0.001


class FlowBlocked(FlowError):
    """The flow's DLP action is ``block`` and a record tripped it; the flow has stopped."""


def _close(reader: Consumer) -> None:
    """Release a reader's connection (a Kafka consumer has one; the generic one has none)."""
    close = getattr(reader, "close", None)
    if close is not None:
        close()


UNDECRYPTABLE_REASON = "source record could not be decrypted (the reason is in the audit log)"


def quarantine_topic(flow: FlowSpec) -> str:
    return flow.quarantine_topic or f"tz.quarantine.{flow.name}"


def position_key(zone: str, topic: str) -> str:
    """How a flow names its source topic in the destination's offset store.

    A legal Kafka topic name (the Kafka backend keeps foreign offsets against an anchor topic
    named after it). Topic names are unique across zones, so the pair cannot collide.
    """
    return f"{zone}.{topic}"


@dataclass(slots=True)
class Outcome:
    kind: Literal["deliver", "quarantine"]
    value: bytes = b""
    reason: str = ""
    findings: Sequence[dict[str, Any]] = ()  # a shared empty default: one made per record
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


@dataclass(slots=True)
class _Batch:
    """A decided batch, ready to be written (steps 3-5 of the module doc)."""

    stats: FlowStats
    #: The audit events carried to this batch (see :meth:`FlowRunner._deferring`): the
    #: rights checks since the last batch and this batch's summary.
    carried: list[AuditEvent]
    #: Per-record events (canonical already for the SQLite audit log, see
    #: :meth:`FlowRunner._transfer_events`); appended with ``carried``, in one transaction.
    events: list[AuditEvent] | list[CanonicalEvent]
    quarantined: list[NewRecord]
    delivered: list[NewRecord]
    #: The source position once written, and the quarantine position.
    positions: dict[int, int]
    quarantine_positions: dict[int, int]
    #: The record that blocked the flow (the batch ends with it).
    blocked: Record | None
    #: Set once its events are in the audit log (step 3).
    audited: bool = False


class _InlineExecutor(Executor):
    """Runs each submitted call at once, on the calling thread (see ``_overlap_pays``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # raised by result(), as a pool thread's would be
            done.set_exception(exc)
        return done


class FlowRunner:
    """Runs one flow. ``transformer`` applies the field transforms (bound to the source
    zone's keys and token vault ``vault``); :func:`trustzones.flows.open_flow` builds a
    ready one. Without ``vault`` every new token is checked on its own when it is made.

    Scale-out: set ``partitions`` to a fixed subset of the source partitions before running,
    and run one process per disjoint subset (for example instance ``i`` of ``n`` takes
    ``range(i, count, n)``). Each subset gets its own transactional ids, so the instances do
    not fence each other, and a restarted instance fences its own zombie.
    """

    partitions: tuple[int, ...] | None = None
    #: Audit events recorded on the running thread (rights checks, withheld source records)
    #: that the next batch appends together with its own, before it writes anything.
    _carry: list[AuditEvent] | None = None
    _cursor: tuple[dict[int, int], dict[int, int]] | None = None  # (position, quarantine position)
    _reader: Consumer | None = None  # reads on from the position of ``_cursor``
    _zones: tuple[Backend, Backend] | None = None  # (source, destination) while carried

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
        vault: TokenVault | None = None,
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
        self._vault = vault
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
        self._fine: set[str] = set()  # the cached paths without a problem
        self._levels = {name: i for i, name in enumerate(c.classifications)}
        self._src_default = c.zone_of(self.source_topic).classification
        self._dst_default = c.zone_of(self.dest_topic).classification
        self._drop_unlisted = self.spec.drop_unlisted
        self._keep = KeepChecked(self._allowed, self._path_problem, MAX_DEPTH)
        self._audit_each = c.zones[self.source_zone].controls.audit_level == "per-message"
        #: Hand each batch's records to the producers before its audit append (see
        #: :meth:`_write_batch_shipping_early`): where both zones are on Kafka, whose
        #: producers send in the background. An embedded transaction writes its file at once
        #: and would only hold the zone's write lock longer.
        self._ship_early = all(
            c.zones[z].backend.type != "embedded" for z in (self.source_zone, self.dest_zone)
        )
        # The lineage headers that do not change from record to record, encoded once.
        self._lineage_head = (
            ("tz.source.zone", self.source_zone.encode()),
            ("tz.source.topic", self.source_topic.encode()),
        )
        self._lineage_tail = (("tz.flow", flow.encode()), ("tz.policy", self.policy.encode()))
        # A record that the destination schema accepts needs no walk of its leaves when the
        # schema names every leaf a valid record can have and none of those has a problem,
        # but for objects that are leaves only when empty (``card: {}``): those few are
        # looked up in each record (see :meth:`_schema_decides`).
        self._closed_ok = False
        self._if_not_empty: tuple[tuple[str, ...], ...] = ()
        closed = closed_leaf_paths(self._dest_validator.schema, MAX_DEPTH)
        if closed is not None:
            refused = [p for p, only_empty in closed.items() if self._path_problem(p)]
            if all(closed[p] and "[" not in p for p in refused):
                self._closed_ok = True
                self._if_not_empty = tuple(tuple(p.split(".")) for p in refused)

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
        stored = self.dest_backend().committed_offsets(self.group, self.position_key)
        return self._positions(stored, self._source_partitions(self.ws.backend(self.source_zone)))

    def _source_partitions(self, src: Backend) -> tuple[int, ...]:
        """The source partitions this runner reads (a fixed subset, or all of them)."""
        if self.partitions is not None:
            return self.partitions
        return tuple(range(src.partition_count(self.source_topic)))

    @staticmethod
    def _positions(stored: dict[int, int], parts: tuple[int, ...]) -> dict[int, int]:
        """Per partition read: the stored position, or the start."""
        return {p: stored.get(p, 0) for p in parts}

    def _txn_id(self) -> str:
        """This instance's transactional id: one per fixed partition subset."""
        if self.partitions is None:
            return self.group
        return f"{self.group}.p{'-'.join(str(p) for p in sorted(self.partitions))}"

    def lag(self) -> int:
        ends = self.ws.backend(self.source_zone).end_offsets(self.source_topic)
        # The positions this runner carries are the stored ones (it stored them last).
        pos = self._cursor[0] if self._cursor is not None else self.positions()
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
            if problem is None:
                self._fine.add(spath)
        return problem

    def _prepare(self, value: bytes) -> Outcome | tuple[Any, bytes]:
        """Decode, transform, watermark and enforce the destination: the output and its
        bytes, or an Outcome when refused.

        The watermark goes on before the checks and the scan, so they see exactly the bytes
        that will be written (it only rewrites the tail of hex values, keeping their length).
        """
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return Outcome("quarantine", reason="source record is not valid JSON")
        if type(doc) is not dict:
            return Outcome("quarantine", reason="source record is not a JSON object")
        try:
            out = self._transformer.apply_record(doc, self._plan)
        except TransformError as exc:
            return Outcome("quarantine", reason=f"transform failed: {exc}")
        # Destination enforcement (invariant 3, at run time). The usual case in one walk:
        # every leaf allowed, size, depth and schema as the destination's validator decides
        # them; any doubt takes the full path below, which alone says why a record is refused.
        # With ``drop_unlisted`` the leaves are checked in the walk that drops the unlisted
        # fields, before the watermark: it only rewrites hex strings as hex strings of the
        # same length, so the checked shape, paths and types are those written.
        fits: bool | None = None
        if self._drop_unlisted:
            out, fits = self._keep(out)
        if self._watermarker is not None:
            self._watermarker.mark(out)
        body = orjson.dumps(out)
        if fits is None:
            fits = self._schema_decides(out) or leaves_ok(
                out, self._path_problem, MAX_DEPTH, self._fine
            )
        if fits and self._dest_validator.accepts(out, len(body)):
            return out, body
        for spath, cpath in leaves(out):
            problem = self._path_problem(spath)
            if problem is not None:
                return Outcome("quarantine", reason=f"field {cpath} {problem}")
        try:
            self._dest_validator.check(body)
        except RecordRejected as rej:
            where = f" at {rej.path}" if rej.path else ""
            return Outcome(
                "quarantine", reason=f"output breaks the destination schema{where}: {rej.reason}"
            )
        return out, body

    def _schema_decides(self, out: Any) -> bool:
        """Whether the destination schema's verdict on ``out`` is also the leaf check's: the
        schema is closed (see ``__init__``) and none of the objects that would be refused
        as empty leaves is empty in ``out``."""
        if not self._closed_ok:
            return False
        for keys in self._if_not_empty:
            node = out
            for k in keys:
                if type(node) is not dict or k not in node:
                    break
                node = node[k]
            else:
                if node == {} or node == []:
                    return False
        return True

    def _finish(self, out: Any, body: bytes, scanned: list[Finding]) -> Outcome:
        dlp = self.spec.dlp
        findings = [
            f
            for f in scanned
            if f.confidence >= dlp.min_confidence and f.type not in dlp.allow_types
        ]
        if not findings:
            return Outcome("deliver", value=body)
        if dlp.action == "redact" and self._redactor is not None:
            out = self._redactor(out, findings)
            return Outcome("deliver", value=orjson.dumps(out), redacted=len(findings))
        types = ", ".join(sorted({f.type for f in findings}))
        return Outcome(
            "quarantine",
            reason=f"DLP found {types} in the output",
            findings=[{"type": f.type, "path": f.path} for f in findings],
        )

    def decide_many(self, values: Sequence[bytes], *, scan: bool = True) -> list[Outcome]:
        """What happens to each source record. No I/O but the token vault.

        The DLP scan runs once over the whole batch (one pass of the compiled engine).
        ``scan=False`` skips only the DLP scan (a release a human approved); the destination
        schema and classification checks always apply.

        The new tokens of the batch are stored in one vault transaction, committed here,
        before any record that carries one can be written (steps 4 and 5 come after this).
        When scanning, they are provisional (see :meth:`TokenVault.provisional_batch`): the
        scan of the output checks them where they are written, instead of a scan of each
        token on its own first; a token in a record that has findings is checked alone, and
        the records that received a replaced token are transformed and scanned again.
        """
        prepare = self._prepare
        vault = self._vault
        if vault is None or not scan:
            with self._transformer.batch():
                prepared = [prepare(v) for v in values]
            return self._outcomes(prepared, self._scan(prepared) if scan else None)
        with vault.provisional_batch() as tokens, self._transformer.batch():
            take = tokens.take
            prepared = []
            carried: list[tuple[ProvisionalToken, ...]] = []
            for v in values:
                prepared.append(prepare(v))
                carried.append(take())
            found = self._scan(prepared)
            redo: Sequence[int] = range(len(values))
            for _ in range(_SETTLE_ROUNDS):
                confirmed = {t for i in redo if carried[i] and found[i] == [] for t in carried[i]}
                replaced = tokens.settle(confirmed)
                if not replaced:
                    break
                redo = [i for i, c in enumerate(carried) if c and not replaced.isdisjoint(c)]
                for i in redo:
                    prepared[i] = prepare(values[i])
                    carried[i] = take()
                again = self._scan([prepared[i] for i in redo])
                for i, f in zip(redo, again, strict=True):
                    found[i] = f
            # Leaving the block settles whatever is left, and fails closed if a token
            # already in a record had to be replaced.
        return self._outcomes(prepared, found)

    def _scan(self, prepared: list[Outcome | tuple[Any, bytes]]) -> list[list[Finding] | None]:
        """The scanner's findings for each prepared output (None for a refused record)."""
        ready = [p[0] for p in prepared if type(p) is tuple]
        scans = iter(self._scanner.scan_records(ready) if ready else ())
        return [next(scans) if type(p) is tuple else None for p in prepared]

    def _outcomes(
        self,
        prepared: list[Outcome | tuple[Any, bytes]],
        found: list[list[Finding] | None] | None,
    ) -> list[Outcome]:
        finish = self._finish
        outcomes: list[Outcome] = []
        for i, p in enumerate(prepared):
            if type(p) is not tuple:
                outcomes.append(cast(Outcome, p))
                continue
            f = found[i] if found is not None else None
            # No findings (the usual case): deliver the bytes already made.
            outcomes.append(finish(p[0], p[1], f) if f else Outcome("deliver", p[1]))
        return outcomes

    def decide(self, value: bytes, *, scan: bool = True) -> Outcome:
        """:meth:`decide_many` for one record."""
        return self.decide_many([value], scan=scan)[0]

    # -- a batch --------------------------------------------------------------------------
    def step(self, max_records: int = 500) -> FlowStats:
        """Process up to ``max_records``; returns what happened. Raises FlowBlocked."""
        with self._deferring():
            src, dst, reader, pos, qpos = self._begin()
        b: _Batch | None = None
        try:
            with self._deferring():
                records = reader.poll(max_records)
            if not records:
                self._flush_carry()
                self._cursor = (pos, qpos)
                stats = FlowStats()
            else:
                b = self._decide_batch(records, pos, qpos)
                self._write_batch(b, src, dst)
                self._settle_writes(src, dst)
                stats = self._written(b)
        except BaseException:
            self._recarry([b])
            self._drop(reader)
            raise
        self._reader, self._zones = reader, (src, dst)
        return stats

    def _begin(self) -> tuple[Backend, Backend, Consumer, dict[int, int], dict[int, int]]:
        """Check the flow's rights, then take what the runner carries (see the module doc):
        (source, destination, reader, position, quarantine position)."""
        self.ws.authorize(self.spec.principal, "read", self.source_topic)
        self.ws.authorize(self.spec.principal, "write", self.dest_topic)
        cursor, reader, zones = self._cursor, self._reader, self._zones
        self._cursor = self._reader = self._zones = None
        if cursor is None or zones is None:
            zones = (self.ws.backend(self.source_zone), self.dest_backend())
        src, dst = zones
        if cursor is None:
            if reader is not None:
                _close(reader)
                reader = None
            cursor = self._fence_and_read(src, dst)
        pos, qpos = cursor
        if reader is None:
            reader = src.consumer(self.source_topic, start="earliest", partitions=tuple(pos))
            reader.start_at(pos)
        return src, dst, reader, pos, qpos

    def _fence_and_read(self, src: Backend, dst: Backend) -> tuple[dict[int, int], dict[int, int]]:
        """In each zone, fence a crashed predecessor, then read where it got to: (position,
        quarantine position).

        Starting our transactional ids aborts a predecessor's open transactions, whose
        pending offsets would otherwise hold the reads back (Kafka answers
        UNSTABLE_OFFSET_COMMIT until they time out); on the embedded backend the empty
        transactions cost nothing. The two zones' steps do not depend on each other: when
        the zones are two backends and one of them is on Kafka, the source's run on a thread
        of its own while this thread does the destination's, so their round trips overlap
        (between two local Kafka clusters, a flow's start-up took 0.51-0.55 s instead of
        0.57-0.72 s, three runs each). Each zone's backend is still used by one thread at a
        time.
        """

        def source() -> tuple[tuple[int, ...], dict[int, int]]:
            with src.transaction(f"{self._txn_id()}.quarantine"):
                pass
            parts = self._source_partitions(src)
            return parts, src.committed_offsets(self.qgroup, self.source_topic)

        def destination() -> dict[int, int]:
            with dst.transaction(self._txn_id()):
                pass
            return dst.committed_offsets(self.group, self.position_key)

        if src is dst or not self._overlap_start():
            parts, qpos = source()
            stored = destination()
        else:
            with ThreadPoolExecutor(1, thread_name_prefix=f"tz-flow-{self.name}-src") as pool:
                from_source = pool.submit(source)
                try:
                    stored = destination()
                except BaseException:
                    # exception() waits for the source's steps: that zone is idle before this
                    # raises (as it is once the pool's block ends).
                    failed_too = from_source.exception()
                    if failed_too is not None:
                        _log.warning(
                            "flow %r: the source zone failed too while starting: %s",
                            self.name,
                            failed_too,
                        )
                    raise
                parts, qpos = from_source.result()
        return self._positions(stored, parts), qpos

    def _drop(self, reader: Consumer | None) -> None:
        """Forget what the runner carries: the next batch starts from the stored positions.
        The carried audit events are appended now (if that fails too, the error that made
        the runner drop its state is the one raised)."""
        self._cursor = self._reader = self._zones = None
        if reader is not None:
            _close(reader)
        carried = len(self._carry or ())
        try:
            self._flush_carry()
        except Exception:  # already failing: say so, and raise the first error
            _log.exception(
                "flow %r: %d audit events (rights checks, batch summaries) could not be "
                "recorded while the runner stopped on an error",
                self.name,
                carried,
            )

    @contextmanager
    def _deferring(self) -> Iterator[None]:
        """Carry the audit events recorded in the block on to the next batch's append (one
        durable transaction a batch instead of one per event). If the block raises, its
        events and those carried so far are appended at once (the workspace's deferred
        block appends what is left in its list)."""
        with self.ws.audit.deferred() as pending:
            try:
                yield
            except BaseException:
                pending[:0] = self._take_carry()
                raise
            if pending:
                if self._carry is None:
                    self._carry = []
                self._carry += pending
                pending.clear()

    def _recarry(self, batches: Sequence[_Batch | None]) -> None:
        """Carry again the events of decided batches that never reached the audit log (the
        rights checks they carry did happen); :meth:`_drop` then appends them."""
        lost: dict[int, _Batch] = {id(b): b for b in batches if b is not None and not b.audited}
        again = [e for b in lost.values() for e in b.carried]
        if again:
            self._carry = again + (self._carry or [])

    def _take_carry(self) -> list[AuditEvent]:
        carry, self._carry = self._carry, None
        return carry or []

    def _flush_carry(self) -> None:
        """Append the carried audit events now (there is no batch to carry them)."""
        carry = self._take_carry()
        if carry:
            self.ws.audit.log().append_many(carry)

    def _decide_batch(
        self, records: list[Record], pos: dict[int, int], qpos: dict[int, int]
    ) -> _Batch:
        """Steps 2 and the making of 3-5: the outcomes, the records to write, the events."""
        stats = FlowStats()
        delivered: list[NewRecord] = []
        quarantined: list[NewRecord] = []
        new_pos = dict(pos)
        blocked: Record | None = None
        done: list[tuple[Record, Outcome]] = []
        head, tail = self._lineage_head, self._lineage_tail
        block = self.spec.dlp.action == "block"
        outcomes = self.decide_many([r.value for r in records])
        for i, r in enumerate(records):
            # A stand-in for a record the backend could not open (see streams.base.withhold):
            # the empty value together with exactly the stand-in's headers, so that a producer
            # cannot divert a good record by adding the header.
            if not r.value and r.headers == UNDECRYPTABLE_HEADERS:
                outcomes[i] = Outcome("quarantine", reason=UNDECRYPTABLE_REASON)
        for r, o in zip(records, outcomes, strict=True):
            done.append((r, o))
            new_pos[r.partition] = r.offset + 1
            if o.kind == "deliver":
                lineage = (
                    *head,
                    ("tz.source.partition", str(r.partition).encode()),
                    ("tz.source.offset", str(r.offset).encode()),
                    *tail,
                )
                delivered.append(NewRecord(o.value, r.key, lineage))
                stats.redacted += o.redacted
                continue
            stats.quarantined += 1
            if r.offset >= qpos.get(r.partition, 0):
                quarantined.append(self._quarantine_record(r, o))
            if block and o.findings:
                blocked = r
                break
        stats.read = len(done)
        stats.delivered = len(delivered)
        stats.batches = 1
        # The batch's summary is recorded with its per-message events, before it is written
        # (as they are): a batch that then fails to write has an attempt on record.
        with self._deferring():
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
        return _Batch(
            stats=stats,
            carried=self._take_carry(),  # the rights checks and the summary
            events=self._transfer_events(done),
            quarantined=quarantined,
            delivered=delivered,
            positions=new_pos,
            quarantine_positions={**qpos, **new_pos} if quarantined else qpos,
            blocked=blocked,
        )

    def _write_batch(self, b: _Batch, src: Backend, dst: Backend) -> None:
        """Steps 3-5, in this order; the first failure stops the rest.

        The transactions' writes become readable when :meth:`_settle_writes` runs (at the
        end of a step or run), not after each batch: nothing here reads them back.
        """
        if self._ship_early and src is not dst:
            self._write_batch_shipping_early(b, src, dst)
            return
        # Step 3: audit before anything takes effect (a failure to record stops the batch).
        self._audit_batch(b)
        # Step 4: quarantine (source zone) first, with its progress.
        if b.quarantined:
            with src.transaction(f"{self._txn_id()}.quarantine", visible=False) as tx:
                tx.produce(self.quarantine_topic, b.quarantined)
                tx.store_offsets(self.qgroup, self.source_topic, b.positions)
        # Step 5: output and source position together (destination zone).
        with dst.transaction(self._txn_id(), visible=False) as tx:
            if b.delivered:
                tx.produce(self.dest_topic, b.delivered)
            tx.store_offsets(self.group, self.position_key, b.positions)

    def _write_batch_shipping_early(self, b: _Batch, src: Backend, dst: Backend) -> None:
        """:meth:`_write_batch` for Kafka zones: the same steps taking effect in the same
        order, with the records handed to the producers first, so that they travel to the
        brokers while the audit append runs. Records of an open transaction take no effect
        (read_committed readers never see them, and a failure aborts them): the audit is
        still durable before either transaction commits, and the quarantine transaction
        still commits before the output's (which carries the source position)."""
        with dst.transaction(self._txn_id(), visible=False) as out:
            if b.delivered:
                out.produce(self.dest_topic, b.delivered)
            if b.quarantined:
                with src.transaction(f"{self._txn_id()}.quarantine", visible=False) as tx:
                    tx.produce(self.quarantine_topic, b.quarantined)
                    self._audit_batch(b)  # step 3
                    tx.store_offsets(self.qgroup, self.source_topic, b.positions)
                # step 4 committed (leaving the block); step 5 commits next
            else:
                self._audit_batch(b)  # step 3
            out.store_offsets(self.group, self.position_key, b.positions)

    def _audit_batch(self, b: _Batch) -> None:
        """Step 3: append the batch's events (a failure to record stops the batch)."""
        if b.carried or b.events:
            log = self.ws.audit.log()
            if isinstance(log, AuditLog):
                log.append_many([*b.carried, *b.events])
            else:
                models = (e.event() if isinstance(e, CanonicalEvent) else e for e in b.events)
                log.append_many([*b.carried, *models])
            b.audited = True

    @staticmethod
    def _settle_writes(src: Backend, dst: Backend) -> None:
        """Wait until the batches written so far can be read (see :meth:`_write_batch`)."""
        src.await_visible()
        if dst is not src:
            dst.await_visible()

    def _written(self, b: _Batch) -> FlowStats:
        """Carry a written batch's positions forward; report it; stop if it blocked."""
        self._cursor = (b.positions, b.quarantine_positions)
        stats = b.stats
        if b.blocked is not None:
            # The reader has gone past the blocked record: start again from the positions.
            self._cursor = None
            raise FlowBlocked(
                f"flow {self.name!r} blocked: DLP found sensitive data in the output of "
                f"{self.source_topic} partition {b.blocked.partition} offset "
                f"{b.blocked.offset}; the record is held in {self.quarantine_topic}. Review it "
                f"with `trustzones quarantine list {self.name}`, fix the flow, and run it again."
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
        """Drain the source (``once``) or keep following it until ``should_stop()``.

        While it runs (both undone when it returns):

        - the objects alive when it started (configuration, schemas, compiled plans, caches)
          are left out of garbage collection (:func:`gc.freeze`, unless the process had
          frozen objects itself): each batch allocates and frees many short-lived objects,
          and full collections would otherwise walk all of them again and again;
        - the interpreter's thread switch interval is at most 1 ms
          (:func:`sys.setswitchinterval`): a thread that gives up the GIL for a system call
          (the writer thread's SQLite or Kafka calls) waits for the busy other thread to
          hand it back, up to a whole interval (5 ms by default) per call.
        """
        with self._deferring():
            self.prepare()
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, _SWITCH_INTERVAL))
        try:
            return self._run(once, batch, idle_sleep, on_progress, should_stop)
        finally:
            sys.setswitchinterval(interval)
            if freeze:
                gc.unfreeze()

    def _run(
        self,
        once: bool,
        batch: int,
        idle_sleep: float,
        on_progress: Callable[[FlowStats], None] | None,
        should_stop: Callable[[], bool],
    ) -> FlowStats:
        """The batches of :meth:`run`, two at a time: while a writer thread writes batch
        ``n`` (steps 3-5, in order), this thread decides batch ``n + 1`` (steps 1-2: no I/O
        but the token vault). Batches are written one after the other in source order, and
        each zone's backend is used by one thread at a time: this thread reads the next batch
        only while the writer is idle. A failure of either stops both, and the runner starts
        again from the stored positions (as after a crash)."""
        total = FlowStats()
        with self._deferring():
            src, dst, reader, pos, qpos = self._begin()
        held: _Batch | None = None  # decided, not yet written
        nxt: _Batch | None = None
        pool: Executor = (
            ThreadPoolExecutor(1, thread_name_prefix=f"tz-flow-{self.name}")
            if self._overlap_pays()
            else _InlineExecutor()
        )
        with pool as writer:
            try:
                checked = True  # _begin checked the flow's rights
                while not should_stop():
                    with self._deferring():
                        if not checked:
                            self.ws.authorize(self.spec.principal, "read", self.source_topic)
                            self.ws.authorize(self.spec.principal, "write", self.dest_topic)
                        checked = False
                        records = reader.poll(batch)
                    if not records:
                        self._flush_carry()
                    writing = (
                        None if held is None else writer.submit(self._write_batch, held, src, dst)
                    )
                    try:
                        if records:
                            nxt = self._decide_batch(records, pos, qpos)
                            pos, qpos = nxt.positions, nxt.quarantine_positions
                        else:
                            nxt = None
                    finally:
                        if writing is not None:
                            wait([writing])  # the writer is idle again from here on
                    if writing is not None:
                        assert held is not None
                        writing.result()
                        total.add(self._written(held))
                        if on_progress:
                            total.lag = self.lag()
                            on_progress(total)
                    held = nxt
                    if held is not None and held.blocked is not None:
                        break  # nothing after the blocked record is read
                    if held is None and not records:
                        self._settle_writes(src, dst)  # caught up: all written is readable
                        total.lag = self.lag()
                        if on_progress:
                            on_progress(total)
                        if once:
                            break
                        time.sleep(idle_sleep)
                if held is not None:
                    self._write_batch(held, src, dst)
                self._settle_writes(src, dst)
                if held is not None:
                    total.add(self._written(held))
                self._flush_carry()  # stopped before a batch took them
            except BaseException:
                self._recarry([held, nxt])
                self._drop(reader)
                raise
        self._reader, self._zones = reader, (src, dst)
        total.lag = self.lag()
        return total

    def _overlap_start(self) -> bool:
        """Whether :meth:`_fence_and_read` runs the two zones' steps side by side: when
        either zone is on Kafka, where each step is a few round trips to its brokers."""
        zones = self.ws.config.zones
        return any(zones[z].backend.type != "embedded" for z in (self.source_zone, self.dest_zone))

    def _overlap_pays(self) -> bool:
        """Whether :meth:`_run` writes on a thread of its own: only when a zone it writes to
        is on Kafka, where the writer mostly waits for the brokers without the GIL. On the
        embedded backend both threads need the GIL nearly all the time, and each SQLite call
        of the writer gives it up and waits to get it back, so overlapping slows both
        (benchmarks/flows.py ran 10-25% slower with the writer thread than without)."""
        c = self.ws.config
        backends = [c.zones[self.source_zone].backend, c.zones[self.dest_zone].backend]
        return any(b.type != "embedded" for b in (*backends, c.file.audit.backend))

    # -- helpers --------------------------------------------------------------------------
    def _lineage(self, r: Record) -> tuple[tuple[str, bytes], ...]:
        return (
            *self._lineage_head,
            ("tz.source.partition", str(r.partition).encode()),
            ("tz.source.offset", str(r.offset).encode()),
            *self._lineage_tail,
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

    def _transfer_events(
        self, done: list[tuple[Record, Outcome]]
    ) -> list[AuditEvent] | list[CanonicalEvent]:
        """One ``flow_transfer`` event per record read, where the source zone audits per
        message (none elsewhere); appended in one ``append_many`` call (step 3). For the
        SQLite audit log they are made canonical here, in one batch (the fields the records
        share are checked once); other logs take the event models."""
        if not self._audit_each or not done:
            return []
        if isinstance(self.ws.audit.log(), AuditLog):
            return flow_transfers(
                [
                    (r.partition, r.offset, r.value, "allow", None)
                    if o.kind == "deliver"
                    else (r.partition, r.offset, r.value, "quarantine", o.reason[:200])
                    for r, o in done
                ],
                flow=self.name,
                principal=self.spec.principal,
                source_zone=self.source_zone,
                source_topic=self.source_topic,
                destination_zone=self.dest_zone,
                destination_topic=self.dest_topic,
            )
        event = partial(
            flow_transfer,
            flow=self.name,
            principal=self.spec.principal,
            source_zone=self.source_zone,
            source_topic=self.source_topic,
            destination_zone=self.dest_zone,
            destination_topic=self.dest_topic,
        )
        return [
            event(
                source_partition=r.partition,
                source_offset=r.offset,
                outcome="allow",
                content=r.value,
            )
            if o.kind == "deliver"
            else event(
                source_partition=r.partition,
                source_offset=r.offset,
                outcome="quarantine",
                content=r.value,
                reason=o.reason[:200],
            )
            for r, o in done
        ]

    def _emit(self, action: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(action, data)
