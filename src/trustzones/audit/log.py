"""The audit zone: an append-only, Merkle-hashed, signed log of audit events in SQLite.

Example::

    from trustzones.audit import AuditLog, AuditReader, NoteSigner, verify_log
    from trustzones.audit.events import access_decision

    signer = NoteSigner.generate("audit.example/main")
    with AuditLog.open("audit.db", signer=signer) as log:
        index = log.append(access_decision(
            principal="alice", action="read", resource="topic/payments",
            zone="restricted", decision="deny", reason="no live grant",
        ))
    report = verify_log("audit.db", signer.verifier())
    reader = AuditReader("audit.db", principal="carol", authorize=lambda who, op: True)
    proof = reader.prove(reader.tail(1)[0].event.id)    # check with check_proof()

Writers and readers are separate: :class:`AuditLog` can only append (there is no update or
delete anywhere in the API) and :class:`AuditReader` asks its ``authorize`` callback
(the auditor-role check, owned by the access part) before every read.

Every append is one ``BEGIN IMMEDIATE`` transaction that reads the tree state, extends it and
writes the events, the new tree state and a newly signed head together, so several processes
may append to one file at once without ever forking the log, and a crash leaves either all of
an append or none of it. Appends cost O(log n) time and memory: only the compact-range frontier
(at most 64 hashes) is read and written. An ``AuditLog`` may be shared by threads: appends that
arrive while another is being written are queued and written together in the next transaction
(group commit), each batch still atomic and in call order; every caller returns only once its
own events are durable, and if that transaction fails every caller in it raises.

Every process that appends needs the signing key, because every append signs the new head
(nothing appended through this API is ever unsigned).

What ``verify_log`` catches: any change, removal, reordering or insertion of stored events, a
forged or replaced checkpoint or head, and inconsistent checkpoints. What it cannot catch
alone: someone with write access to the file rolling it back to an older state as a whole
(an older, validly signed head with everything after it removed). Publish checkpoints
(``trustzones audit checkpoint``) somewhere else and pass them back as ``trusted`` to catch that.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import functools
import hashlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import orjson
import rfc8785
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trustzones.audit import _native, _store
from trustzones.audit._errors import (
    AuditEventRejected,
    AuditKeyInvalid,
    LogTampered,
    ProofInvalid,
)
from trustzones.audit.events import (
    AuditData,
    AuditEvent,
    CanonicalEvent,
    _canonical_row,
    _utc_time,
    event_from_json,
)
from trustzones.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_inclusion,
)
from trustzones.audit.notes import Checkpoint, NoteSigner, NoteVerifier
from trustzones.errors import AccessDenied, AuditError

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "PROOF_FORMAT",
    "AuditLog",
    "AuditReader",
    "AuditorCheck",
    "InclusionProofBundle",
    "StoredEvent",
    "check_proof",
]

DEFAULT_CHECKPOINT_INTERVAL = 4096
PROOF_FORMAT = "trustzones-audit-inclusion-proof/v1"

AuditorCheck = Callable[[str, str], bool]
"""``authorize(principal, operation)``: True if ``principal`` may read the audit log.

``operation`` is ``"tail"``, ``"search"``, ``"get"``, ``"prove"`` or ``"consistency"``. Anything
else than ``True`` (including an exception) denies.
"""

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"


def _rollback(con: sqlite3.Connection) -> None:
    """Abort the open transaction (every early exit from a commit protocol comes here)."""
    # No transaction may be left to roll back (e.g. when COMMIT itself failed half-way).
    with contextlib.suppress(sqlite3.Error):
        con.execute("ROLLBACK")


_Facet = tuple[str, str, str, str]
"""An event's (principal, zone, action, decision): what searches filter on besides time."""

# Rows are inserted 50 to a statement: each statement executed costs a GIL round trip and
# SQLite's per-statement start and halt, which this spreads over 50 rows (68,800 instead of
# 75,200 instructions per appended event, callgrind, batches of 1,000).
#
# The leaf index is not bound: ``leaf_index`` is the table's rowid, which SQLite numbers on
# from the largest one (no look-up for a clash, no integer to bind; 560 fewer instructions
# a row). The transaction has checked that the largest is the last leaf before it inserts,
# and that the last row inserted got the last new leaf's index after (see _append_rows).
#
# ``OR FAIL``: a clash (a repeated event id) stops the statement and the whole transaction is
# rolled back, as with the default ``ABORT``; but ``ABORT`` must undo just the failing
# statement, so SQLite journals every page a multi-row statement touches to a temporary file
# first (~40 pages of 16 KiB and ~100 system calls per 1,000 events), which ``FAIL`` does
# not need.
_ROWS_PER_INSERT = 50
_COLUMNS = {
    2: "event_id, time, facet, leaf_hash, body",
    1: "event_id, time, principal, zone, action, decision, leaf_hash, body",
}


@functools.cache
def _insert_sql(layout: int, rows: int) -> str:
    columns = _COLUMNS[layout]
    row = "(" + ", ".join("?" * (columns.count(",") + 1)) + ")"
    return f"INSERT OR FAIL INTO events({columns}) VALUES " + ", ".join([row] * rows)  # noqa: S608


def _insert_events(con: sqlite3.Connection, layout: int, start: int, params: list[Any]) -> None:
    """Insert the rows whose values are laid out one after another in ``params``, in the
    order of ``_COLUMNS[layout]``; the first is leaf ``start``."""
    columns = _COLUMNS[layout].count(",") + 1
    if start == 0:  # SQLite numbers the first row of a table 1: the first leaf is given its 0
        con.execute(
            f"INSERT OR FAIL INTO events(leaf_index, {_COLUMNS[layout]}) "  # noqa: S608
            f"VALUES (0{', ?' * columns})",
            params[:columns],
        )
        params = params[columns:]
    width = columns * _ROWS_PER_INSERT
    full = len(params) - len(params) % width
    if full:
        con.executemany(
            _insert_sql(layout, _ROWS_PER_INSERT),
            [params[k : k + width] for k in range(0, full, width)],
        )
    if full < len(params):
        con.executemany(
            _insert_sql(layout, 1),
            [params[k : k + columns] for k in range(full, len(params), columns)],
        )


def _rows(
    events: Sequence[AuditEvent | CanonicalEvent],
    facet_ids: dict[_Facet, int],
    with_facets: bool,
) -> tuple[list[Any], bool]:
    """The values of the rows of ``events`` one after another, in the order of the file's
    ``events`` columns after the leaf index (``with_facets``: layout 2), and whether a facet
    without an id in ``facet_ids`` stands in for its id. Hashes and bodies are bound as
    ``bytearray``: the sqlite3 module binds it directly, where every ``bytes`` value first goes
    through its adapter look-up (two failed attribute look-ups, ~3,000 instructions; the copy
    costs less).

    The native core makes them in one call: a third less CPU per appended event (batches of
    1,000, measured alternating the two in one process) than the loop of :func:`_python_rows`,
    which stays the reference and takes every batch the native core declines (one with an
    event that is not plainly an ``AuditEvent`` or a ``CanonicalEvent``).
    """
    native = _native.native
    if native is not None:
        rows = native.audit_rows(
            events if type(events) is list else list(events),
            CanonicalEvent, AuditEvent, AuditData, facet_ids, with_facets,
        )  # fmt: skip
        if rows is not None:
            return rows
    return _python_rows(events, facet_ids, with_facets)


def _python_rows(
    events: Sequence[AuditEvent | CanonicalEvent],
    facet_ids: dict[_Facet, int],
    with_facets: bool,
) -> tuple[list[Any], bool]:
    """:func:`_rows` in Python (the reference)."""
    params: list[Any] = []
    add = params.extend
    sha, blob, canonical = _sha256, bytearray, _canonical_row
    facet_id = facet_ids.get
    unresolved = False
    for event in events:
        if isinstance(event, CanonicalEvent):
            event_id, stamp, principal, zone, action, decision, body = event
        else:
            event_id, stamp, principal, zone, action, decision, body = canonical(event)
        leaf = blob(sha(_LEAF + body).digest())
        if with_facets:
            facet = (principal, zone, action, decision)
            fid = facet_id(facet)
            if fid is None:
                unresolved = True
                add((event_id, stamp, facet, leaf, blob(body)))
            else:
                add((event_id, stamp, fid, leaf, blob(body)))
        else:
            add((event_id, stamp, principal, zone, action, decision, leaf, blob(body)))
    return params, unresolved


def _frontier_blob(tree: CompactRange) -> bytes:
    return b"".join(tree.hashes)


def _frontier(size: int, blob: bytes) -> CompactRange:
    return CompactRange(size, [blob[i : i + 32] for i in range(0, len(blob), 32)])


class _Request:
    """One queued ``append_many``: its rows' values one after another (all but the leaf index,
    in the order of the file's ``events`` columns; see :meth:`AuditLog.append_many`), then its
    leaf indices or the error that stopped it."""

    __slots__ = ("columns", "count", "done", "error", "params", "unresolved", "written")

    def __init__(self, params: list[Any], columns: int, unresolved: bool) -> None:
        self.params = params
        self.columns = columns
        self.count = len(params) // columns
        self.unresolved = unresolved  # a facet not known yet stands in place of its id
        self.done = False
        self.written: range | None = None
        self.error: BaseException | None = None

    def succeed(self, written: range) -> None:
        self.written, self.done = written, True

    def fail(self, error: BaseException) -> None:
        self.error, self.done = error, True

    def outcome(self) -> range:
        if self.error is not None:
            # Every caller of a failed group raises; each gets its own copy of the error.
            raise copy.copy(self.error) from self.error
        assert self.written is not None
        return self.written


class AuditLog:
    """The writer of the audit zone (the product's :class:`~trustzones.audit.AuditSink`).

    Open it with :meth:`open`. The signing key signs a new head after every append; the log's
    origin is the key's name and is fixed when the file is created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signer: NoteSigner,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
        busy_timeout_s: float = 30.0,
    ) -> None:
        if checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be at least 1")
        self.path = Path(path)
        self._signer = signer
        self._verifier = signer.verifier()
        self._interval = checkpoint_interval
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Request] = []
        self._closed = False
        self._writing = False  # a thread holds the connection (writing a group, or exclusive)
        self._trusted_head: str | None = None  # the last head this process checked or signed
        self._busy_timeout_s = busy_timeout_s
        self._layout = 2  # of the events table (see _store.layout), read by _initialise
        # Facet ids committed by this process: facets are append-only, so an id once committed
        # stays that facet's (a tampered facets table is verify_log's to report).
        self._facet_ids: dict[_Facet, int] = {}
        self._con = _store.connect(self.path, read_only=False, busy_timeout_s=busy_timeout_s)
        try:
            self._initialise()
        except BaseException:
            self._con.close()
            raise

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        signer: NoteSigner,
        checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
    ) -> AuditLog:
        """Open (creating if needed) the audit log at ``path``, signing with ``signer``."""
        return cls(path, signer=signer, checkpoint_interval=checkpoint_interval)

    @property
    def origin(self) -> str:
        return self._signer.name

    def _initialise(self) -> None:
        con = self._con
        self._begin_immediate()
        try:
            _store.create_schema(con)
            self._layout = _store.layout(con)
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                head = self._signer.sign(Checkpoint(self.origin, 0, EMPTY_ROOT).text())
                con.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [
                        ("schema", str(self._layout)),
                        ("origin", self.origin),
                        ("verifier_key", self._verifier.key_string),
                    ],
                )
                con.execute(
                    "INSERT INTO state(id, tree_size, frontier, head) VALUES (1, 0, ?, ?)",
                    (b"", head),
                )
            elif meta.get("verifier_key") != self._verifier.key_string:
                raise AuditKeyInvalid(
                    f"the audit log {self.path} is signed by the key {meta.get('verifier_key')}, "
                    f"not by the given key {self._verifier.key_string}: use the signing key it "
                    "was created with"
                )
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    # -- appending -----------------------------------------------------------------------

    def append(self, event: AuditEvent) -> int:
        """Append one event durably; return its leaf index.

        Concurrent calls from several threads share one transaction (group commit), and each
        returns only once its event is durable; if that transaction fails, every caller in it
        raises."""
        return self.append_many([event]).start

    def append_many(self, events: Sequence[AuditEvent | CanonicalEvent]) -> range:
        """Append events atomically and in order, in one transaction; return their leaf indices.

        A :class:`~trustzones.audit.events.CanonicalEvent` (from a batch constructor such as
        :func:`~trustzones.audit.events.flow_transfers`) is stored as it is, already canonical.
        """
        # 1. Serialise and hash outside any lock: it is the expensive part. Each row's values
        #    go one after another into one list, in the order of the ``events`` columns after
        #    the leaf index (which the transaction gives). Facet ids come from those this
        #    process has committed; a facet without one stands in its id's place until the
        #    transaction looks it up.
        with_facets = self._layout == 2
        params, unresolved = _rows(events, self._facet_ids, with_facets)
        if not params:
            raise ValueError("append_many needs at least one event")
        return self._submit(_Request(params, 5 if with_facets else 8, unresolved))

    def record(self, event: AuditEvent) -> None:
        """:class:`AuditSink` entry point: append one event (durable when this returns)."""
        self.append_many([event])

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        """:class:`AuditSink` entry point: append a batch atomically."""
        if events:
            self.append_many(events)

    # -- group commit ----------------------------------------------------------------------
    #
    # Appends queue up; whichever caller finds no write in progress becomes the leader, takes
    # everything queued and writes it in one transaction, then hands over. Each queued batch
    # stays atomic (it is all in one transaction) and in call order; each caller returns when
    # its own batch is durable, or raises if the transaction that carried it failed.

    def _submit(self, request: _Request) -> range:
        cond = self._cond
        with cond:
            if self._closed:
                raise AuditError(f"the audit log {self.path} is closed; nothing was appended")
            self._queue.append(request)
            while not request.done:
                if not self._writing:
                    self._writing = True
                    group, self._queue = self._queue, []
                    break
                cond.wait()
            else:
                return request.outcome()
        try:
            self._write_group(group)
        finally:
            with cond:
                self._writing = False
                for r in group:
                    if not r.done:  # the leader was interrupted: fail closed
                        r.fail(
                            AuditError(
                                f"appending to the audit log {self.path} was interrupted; "
                                "the events may not be recorded"
                            )
                        )
                cond.notify_all()
        return request.outcome()

    def _write_group(self, group: list[_Request]) -> None:
        if len(group) == 1:
            batch = group[0]
        else:
            batch = _Request(
                [v for r in group for v in r.params],
                group[0].columns,
                any(r.unresolved for r in group),
            )
        try:
            written = self._append_rows(batch)
        except AuditEventRejected as exc:
            if len(group) == 1:
                group[0].fail(exc)
                return
            # One batch clashes (a repeated event id): write the batches one by one, so that
            # only the offending one fails.
            for r in group:
                try:
                    r.succeed(self._append_rows(r))
                except Exception as one:
                    r.fail(one)
            return
        except Exception as exc:
            for r in group:
                r.fail(exc)
            return
        start = written.start
        for r in group:
            r.succeed(range(start, start + r.count))
            start += r.count

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the connection without appending (waits for the group being written)."""
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _append_rows(self, batch: _Request) -> range:
        con = self._con
        # 2. Take the write lock of the file: concurrent appenders queue up here, so each
        #    one extends the tree the previous one committed (no forks).
        self._begin_immediate()
        try:
            # 3. Read the tree state and refuse to extend a log whose state does not check out.
            tree, head = self._checked_state()
            start = tree.size
            # 4. Look up (or add) the facets that stand in for their ids; extend the compact
            #    range, keeping the big subtrees it completes.
            params, columns = batch.params, batch.columns
            added: dict[_Facet, int] = {}
            if batch.unresolved:
                params = params.copy()  # the request keeps its own (for a retry alone)
                facet_id = self._facet_id
                for k in range(2, len(params), columns):
                    value = params[k]
                    if isinstance(value, tuple):
                        fid = added.get(value)
                        if fid is None:
                            fid = added[value] = facet_id(value)
                        params[k] = fid
            nodes = tree.extend(params[columns - 2 :: columns], _store.NODE_LEVEL, native=True)
            size = tree.size
            # 5. Write events and nodes.
            _insert_events(con, self._layout, start, params)
            (last,) = con.execute("SELECT last_insert_rowid()").fetchone()
            if last != size - 1:  # never expected: the rowids did not follow the leaves
                raise AuditError(
                    f"appending to the audit log {self.path} failed: its rows were numbered "
                    f"up to {last}, not {size - 1}; nothing was appended"
                )
            if nodes:
                con.executemany("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)", nodes)
            # 6. Sign the new head and store it with the new frontier.
            head = self._signer.sign(Checkpoint(self.origin, size, tree.root()).text())
            con.execute(
                "UPDATE state SET tree_size = ?, frontier = ?, head = ? WHERE id = 1",
                (size, _frontier_blob(tree), head),
            )
            # 7. Keep a checkpoint each time the log crosses a multiple of the interval.
            if start // self._interval != size // self._interval:
                con.execute("INSERT INTO checkpoints(tree_size, note) VALUES (?, ?)", (size, head))
            # 8. Commit: everything above becomes visible and durable at once.
            con.execute("COMMIT")
        except BaseException as exc:
            _rollback(con)
            if isinstance(exc, sqlite3.IntegrityError) and "event_id" in str(exc):
                raise AuditEventRejected(
                    "audit event refused: an event with the same id is already in the log"
                ) from exc
            if isinstance(exc, sqlite3.Error):
                raise AuditError(f"appending to the audit log {self.path} failed: {exc}") from exc
            raise
        self._trusted_head = head
        self._facet_ids.update(added)  # committed: their ids are for good
        return range(start, size)

    def _begin_immediate(self) -> None:
        """``BEGIN IMMEDIATE``, retrying every fraction of a millisecond while another writer holds
        the lock. SQLite's own busy handler backs off to 100 ms sleeps, which lets a busy
        appender starve the others; short randomised retries keep the waiting fair."""
        con = self._con
        deadline = time.monotonic() + self._busy_timeout_s
        con.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    con.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise AuditError(f"cannot lock the audit log {self.path}: {exc}") from exc
                    if time.monotonic() > deadline:
                        raise AuditError(
                            f"the audit log {self.path} stayed locked by another writer for "
                            f"{self._busy_timeout_s:.0f} s; nothing was appended"
                        ) from exc
                    time.sleep(random.uniform(0.0001, 0.001))  # noqa: S311 - jitter, not a secret
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")

    def _facet_id(self, facet: _Facet) -> int:
        """The id of ``facet`` in ``facets``, adding it if it is new (inside the transaction)."""
        con = self._con
        row = con.execute(
            "SELECT id FROM facets WHERE principal = ? AND zone = ? AND action = ? "
            "AND decision = ?",
            facet,
        ).fetchone()
        if row is not None:
            return int(row[0])
        added = con.execute(
            "INSERT INTO facets(principal, zone, action, decision) VALUES (?, ?, ?, ?)", facet
        ).lastrowid
        assert added is not None
        return added

    def _checked_state(self) -> tuple[CompactRange, str]:
        """Read the tree state inside the write transaction and check it against the head."""
        row = self._con.execute("SELECT tree_size, frontier, head FROM state").fetchone()
        if row is None:
            raise LogTampered(
                f"the audit log {self.path} has lost its tree state; refusing to append. Run "
                "`trustzones audit verify`."
            )
        size, blob, head = int(row[0]), bytes(row[1]), str(row[2])
        problem = None
        try:
            tree = _frontier(size, blob)
            if head == self._trusted_head:  # signed or checked by this process already
                checkpoint = Checkpoint.parse(head[: head.rindex("\n\n") + 1])
            else:
                checkpoint = Checkpoint.open(head, self._verifier)
            if checkpoint.size != size or checkpoint.root_hash != tree.root():
                problem = "the tree state does not match the signed head"
        except (ValueError, ProofInvalid) as exc:
            problem = f"the tree state or signed head is invalid ({exc})"
        if problem is None:
            (last,) = self._con.execute("SELECT MAX(leaf_index) FROM events").fetchone()
            if (last if last is not None else -1) != size - 1:
                problem = f"it holds entries up to {last} but its signed head covers {size}"
        if problem is not None:
            raise LogTampered(
                f"refusing to append to the audit log {self.path}: {problem}. Run "
                "`trustzones audit verify` to find the first bad entry."
            )
        return tree, head

    # -- checkpoints ---------------------------------------------------------------------

    def head(self) -> str:
        """The current signed head: a checkpoint note covering the whole log."""
        with self._exclusive():
            (head,) = self._con.execute("SELECT head FROM state").fetchone()
        return str(head)

    def checkpoint(self) -> str:
        """Keep the current signed head as a checkpoint and return its note (to publish)."""
        with self._exclusive():
            con = self._con
            self._begin_immediate()
            try:
                tree, head = self._checked_state()
                if tree.size:
                    con.execute(
                        "INSERT OR IGNORE INTO checkpoints(tree_size, note) VALUES (?, ?)",
                        (tree.size, head),
                    )
                con.execute("COMMIT")
            except BaseException:
                _rollback(con)
                raise
            self._trusted_head = head
        return head

    def close(self) -> None:
        with self._exclusive():
            self._closed = True
            self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its leaf index and the event."""

    leaf_index: int
    event: AuditEvent


class InclusionProofBundle(BaseModel):
    """A self-contained proof that ``event`` is entry ``leaf_index`` of a signed log.

    Check it with :func:`check_proof` and the log's verifier key alone. Hashes are base64.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["trustzones-audit-inclusion-proof/v1"] = "trustzones-audit-inclusion-proof/v1"
    event: dict[str, Any]
    leaf_index: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    inclusion_path: list[str] = Field(max_length=64)
    checkpoint: str

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(), option=orjson.OPT_INDENT_2) + b"\n"


class AuditorGate:
    """What every audit reader shares: ``authorize(principal, operation)`` is asked before each
    read (anything but ``True`` raises :class:`~trustzones.errors.AccessDenied`), and stored
    bodies that are not valid events are reported as tampering."""

    def __init__(self, *, principal: str, authorize: AuditorCheck) -> None:
        self._principal = principal
        self._authorize = authorize

    def _check(self, operation: str) -> None:
        try:
            allowed = self._authorize(self._principal, operation) is True
        except Exception:  # fail closed: a broken check denies
            allowed = False
        if not allowed:
            raise AccessDenied(
                f"{self._principal!r} may not {operation} the audit log: reading it needs the "
                "auditor role"
            )

    @staticmethod
    def _stored(leaf_index: int, body: bytes) -> StoredEvent:
        try:
            return StoredEvent(leaf_index, event_from_json(body))
        except AuditEventRejected as exc:
            raise LogTampered(
                f"entry {leaf_index} of the audit log is not a valid event ({exc}); run "
                "`trustzones audit verify`",
                leaf_index=leaf_index,
            ) from exc


class AuditReader(AuditorGate):
    """Read access to the audit log, for auditors: tail, search, get, prove.

    Every call first asks ``authorize(principal, operation)``; anything but ``True`` raises
    :class:`~trustzones.errors.AccessDenied`. The database is opened read-only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        principal: str,
        authorize: AuditorCheck,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        super().__init__(principal=principal, authorize=authorize)
        self._busy = busy_timeout_s

    def _connect(self) -> sqlite3.Connection:
        return _store.connect(self.path, read_only=True, busy_timeout_s=self._busy)

    def tail(self, limit: int = 20) -> list[StoredEvent]:
        """The last ``limit`` events, oldest first."""
        self._check("tail")
        con = self._connect()
        try:
            rows = con.execute(
                "SELECT leaf_index, body FROM events ORDER BY leaf_index DESC LIMIT ?", (limit,)
            ).fetchall()
        finally:
            con.close()
        return [self._stored(int(i), bytes(b)) for i, b in reversed(rows)]

    def search(
        self,
        *,
        principal: str | None = None,
        zone: str | None = None,
        action: str | None = None,
        decision: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Events matching every given filter, oldest first; ``until`` is exclusive."""
        self._check("search")
        facet: list[str] = []
        args: list[str | int] = []
        for column, wanted in (
            ("principal", principal),
            ("zone", zone),
            ("action", action),
            ("decision", decision),
        ):
            if wanted is not None:
                facet.append(f"{column} = ?")
                args.append(wanted)
        when: list[str] = []
        for op, value in ((">=", since), ("<", until)):
            if value is not None:
                try:
                    args.append(str(_utc_time(value)))
                except ValueError as exc:
                    raise AuditError(f"search time {value!r}: {exc}") from exc
                when.append(f"time {op} ?")
        args.append(limit)
        con = self._connect()
        try:
            if facet and _store.layout(con) == 2:
                # The matching facets are looked up once; rows then compare one integer.
                clause = " AND ".join(facet)  # fixed column names and placeholders only
                facet = [f"facet IN (SELECT id FROM facets WHERE {clause})"]  # noqa: S608
            where = " AND ".join(facet + when)
            sql = "SELECT leaf_index, body FROM events"
            if where:
                sql += " WHERE " + where
            rows = con.execute(sql + " ORDER BY leaf_index LIMIT ?", args).fetchall()
        finally:
            con.close()
        return [self._stored(int(i), bytes(b)) for i, b in rows]

    def get(self, event_id: str) -> StoredEvent:
        """The event with id ``event_id``."""
        self._check("get")
        con = self._connect()
        try:
            row = con.execute(
                "SELECT leaf_index, body FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
        finally:
            con.close()
        if row is None:
            raise AuditError(f"no event with id {event_id!r} in the audit log {self.path}")
        return self._stored(int(row[0]), bytes(row[1]))

    def prove(self, event_id: str) -> InclusionProofBundle:
        """An inclusion proof of event ``event_id`` against the current signed head."""
        self._check("prove")
        con = self._connect()
        try:
            con.execute("BEGIN")  # one snapshot for the event, head and proof
            row = con.execute(
                "SELECT leaf_index, body FROM events WHERE event_id = ?", (event_id,)
            ).fetchone()
            if row is None:
                raise AuditError(f"no event with id {event_id!r} in the audit log {self.path}")
            index, body = int(row[0]), bytes(row[1])
            state = con.execute("SELECT tree_size, head FROM state").fetchone()
            if state is None or index >= int(state[0]):
                raise LogTampered(
                    f"entry {index} is not covered by the signed head; run "
                    "`trustzones audit verify`",
                    leaf_index=index,
                    event_id=event_id,
                )
            size, head = int(state[0]), str(state[1])
            path = inclusion_proof(_store.StoreSubtrees(con, size), index, size)
        finally:
            con.close()
        return InclusionProofBundle(
            event=orjson.loads(body),
            leaf_index=index,
            tree_size=size,
            inclusion_path=[base64.b64encode(h).decode() for h in path],
            checkpoint=head,
        )

    def consistency(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The RFC 9162 consistency proof from ``old_size`` to ``new_size`` (default: now)."""
        self._check("consistency")
        con = self._connect()
        try:
            con.execute("BEGIN")
            (size,) = con.execute("SELECT tree_size FROM state").fetchone()
            new = int(size) if new_size is None else new_size
            if new > int(size):
                raise AuditError(f"the audit log has only {size} entries, not {new}")
            try:
                return consistency_proof(_store.StoreSubtrees(con, new), old_size, new)
            except MerkleProofError as exc:
                raise AuditError(str(exc)) from exc
        finally:
            con.close()


def check_proof(bundle: bytes | str, verifier: NoteVerifier) -> AuditEvent:
    """Verify an inclusion proof bundle with the log's public key alone; return its event.

    Raises :class:`ProofInvalid` saying which check failed.
    """
    # 1. Parse the bundle.
    try:
        proof = InclusionProofBundle.model_validate_json(bundle)
    except ValidationError as exc:
        raise ProofInvalid(f"the proof is not a {PROOF_FORMAT} document") from exc
    # 2. The checkpoint must be signed by the log's key, and name this log.
    checkpoint = Checkpoint.open(proof.checkpoint, verifier)
    if checkpoint.origin != verifier.name:
        raise ProofInvalid(
            f"the checkpoint is for the log {checkpoint.origin!r}, not {verifier.name!r}"
        )
    if checkpoint.size != proof.tree_size:
        raise ProofInvalid(
            f"the proof is for a tree of {proof.tree_size} entries but its checkpoint "
            f"covers {checkpoint.size}"
        )
    # 3. Hash the event's RFC 8785 canonical form (a standard implementation, not ours).
    try:
        leaf = leaf_hash(rfc8785.dumps(proof.event))
        path = [base64.b64decode(h, validate=True) for h in proof.inclusion_path]
    except (rfc8785.CanonicalizationError, binascii.Error, ValueError) as exc:
        raise ProofInvalid("the proof's event or hashes are malformed") from exc
    # 4. Walk the inclusion path up to the signed root (RFC 9162 section 2.1.3.2).
    try:
        verify_inclusion(leaf, proof.leaf_index, proof.tree_size, path, checkpoint.root_hash)
    except MerkleProofError as exc:
        raise ProofInvalid(
            f"the event is not entry {proof.leaf_index} of the signed log: {exc}"
        ) from exc
    # 5. The proven event must also be a valid event.
    try:
        return event_from_json(orjson.dumps(proof.event))
    except AuditEventRejected as exc:
        raise ProofInvalid(f"the proven entry is not a valid audit event: {exc}") from exc
