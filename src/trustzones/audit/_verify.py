"""``verify_log``: recompute the audit log from its stored events and check every signature.

Steps (numbered in the code): (1) the signed head and the stored tree state agree; (2) every
stored checkpoint is signed by the log's key, in order and within the head; (3) checkpoints
kept elsewhere (``trusted``) are still extended by the log; (4) every entry is reread and
rehashed, the tree rebuilt, and each signed root and saved subtree compared as its size is
reached; (5) consecutive checkpoints pass RFC 9162 consistency proofs. The first failure
raises :class:`~trustzones.audit.LogTampered` naming the entry or checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from trustzones.audit import _store
from trustzones.audit._errors import LogTampered, ProofInvalid
from trustzones.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleProofError,
    consistency_proof,
    verify_consistency,
)
from trustzones.audit.notes import Checkpoint, NoteVerifier
from trustzones.errors import AuditError

__all__ = ["VerifyReport", "verify_log"]

_sha256 = hashlib.sha256
_LEAF = b"\x00"
_NODE = b"\x01"


def _frontier(size: int, blob: bytes) -> CompactRange:
    return CompactRange(size, [blob[i : i + 32] for i in range(0, len(blob), 32)])


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify_log` checked."""

    origin: str
    tree_size: int
    root_hash: bytes
    checkpoints: int
    trusted_checkpoints: int


@dataclass(slots=True)
class _Claim:
    """A signed statement "the first ``size`` entries hash to ``root``"."""

    label: str
    size: int
    root: bytes
    checkpoint: int | str


def _tampered(message: str, **where: Any) -> LogTampered:
    return LogTampered(f"audit log verification failed: {message}", **where)


def verify_log(
    path: str | os.PathLike[str],
    verifier: NoteVerifier,
    *,
    trusted: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Recompute the whole log and check it against every signature; raise ``LogTampered``.

    ``trusted`` are checkpoint notes kept outside the log (published earlier); the log must
    extend each of them. ``progress(done, total)`` is called after every 8,192 entries.
    """
    path = Path(path)
    con = _store.connect(path, read_only=True, busy_timeout_s=30.0)
    try:
        con.execute("BEGIN")  # one consistent snapshot, even while appenders write
        return _verify(con, path, verifier, trusted, progress)
    except sqlite3.DatabaseError as exc:
        raise _tampered(f"the database {path} cannot be read ({exc})") from exc
    finally:
        con.close()


def _verify(
    con: sqlite3.Connection,
    path: Path,
    verifier: NoteVerifier,
    trusted: Sequence[str],
    progress: Callable[[int, int], None] | None,
) -> VerifyReport:
    # 1. The signed head: signature, origin, and agreement with the stored tree state.
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    origin = meta.get("origin")
    if origin != verifier.name:
        raise _tampered(
            f"the log's origin is {origin!r} but the public key is for {verifier.name!r}: "
            "check --public-key, or the meta table was altered"
        )
    state = con.execute("SELECT tree_size, frontier, head FROM state").fetchone()
    if state is None:
        raise _tampered("the signed head is missing", checkpoint="head")
    try:
        head = Checkpoint.open(str(state[2]), verifier)
    except ProofInvalid as exc:
        raise _tampered(f"the signed head: {exc}", checkpoint="head") from exc
    try:
        frontier_root = _frontier(int(state[0]), bytes(state[1])).root()
    except ValueError:
        frontier_root = b""
    if head.origin != origin or head.size != int(state[0]) or head.root_hash != frontier_root:
        raise _tampered("the stored tree state does not match the signed head", checkpoint="head")
    claims = [_Claim("the signed head", head.size, head.root_hash, "head")]

    # 2. Every stored checkpoint: signature, origin, order, and within the head.
    stored: list[_Claim] = []
    last_size = 0
    for seq, size, note in con.execute("SELECT seq, tree_size, note FROM checkpoints ORDER BY seq"):
        try:
            cp = Checkpoint.open(str(note), verifier)
        except ProofInvalid as exc:
            raise _tampered(f"checkpoint {seq}: {exc}", checkpoint=int(seq)) from exc
        if cp.origin != origin or cp.size != int(size):
            raise _tampered(
                f"checkpoint {seq} is a checkpoint of another log or size (replaced?)",
                checkpoint=int(seq),
            )
        if cp.size <= last_size or cp.size > head.size:
            raise _tampered(
                f"checkpoint {seq} (tree size {cp.size}) is out of order with the checkpoints "
                f"before it or beyond the signed head (size {head.size})",
                checkpoint=int(seq),
            )
        last_size = cp.size
        stored.append(_Claim(f"checkpoint {seq}", cp.size, cp.root_hash, int(seq)))
    claims += stored

    # 3. Checkpoints the caller kept elsewhere: the log must still extend each of them.
    for n, note in enumerate(trusted):
        try:
            cp = Checkpoint.open(note, verifier)
        except ProofInvalid as exc:
            raise ProofInvalid(f"trusted checkpoint {n + 1}: {exc}") from exc
        if cp.origin != origin:
            raise ProofInvalid(f"trusted checkpoint {n + 1} is for the log {cp.origin!r}")
        if cp.size > head.size:
            raise _tampered(
                f"the log has {head.size} entries but a trusted checkpoint covers {cp.size}: "
                "it was truncated or rolled back",
                checkpoint=f"trusted {n + 1}",
            )
        claims.append(_Claim(f"trusted checkpoint {n + 1}", cp.size, cp.root_hash, "trusted"))

    # 4. Recompute every leaf and the tree, comparing with each claim as its size is reached.
    _recompute(con, head.size, claims, progress)

    # 5. Consecutive checkpoints (and the head) must be consistent: check the RFC 9162 proofs
    #    a witness would check. The leaves and saved nodes were verified in step 4.
    subtrees = _store.StoreSubtrees(con, head.size)
    chain = [*stored, claims[0]]
    for old, new in itertools.pairwise(chain):
        try:
            proof = consistency_proof(subtrees, old.size, new.size)
            verify_consistency(old.size, new.size, proof, old.root, new.root)
        except (MerkleProofError, AuditError) as exc:  # step 4 passing implies this passes
            raise _tampered(
                f"{old.label} and {new.label} are not consistent: {exc}",
                checkpoint=new.checkpoint,
            ) from exc
    return VerifyReport(origin, head.size, head.root_hash, len(stored), len(trusted))


# One JSON parse per entry: json_extract with several paths returns them as one JSON array,
# which json_array() of the columns must equal (both are minified by SQLite the same way).
# Layout 2 keeps (principal, zone, action, decision) in ``facets``; an event whose facet row
# is missing joins to NULLs and disagrees.
_COLUMNS_DISAGREE = """
SELECT e.leaf_index, e.event_id FROM events AS e LEFT JOIN facets AS f ON f.id = e.facet
WHERE json_extract(e.body, '$.id', '$.time', '$.data.principal', '$.data.zone',
                   '$.data.action', '$.data.decision')
   IS NOT json_array(e.event_id, e.time, f.principal, f.zone, f.action, f.decision)
ORDER BY e.leaf_index LIMIT 1
"""
_COLUMNS_DISAGREE_V1 = """
SELECT leaf_index, event_id FROM events
WHERE json_extract(body, '$.id', '$.time', '$.data.principal', '$.data.zone', '$.data.action',
                   '$.data.decision')
   IS NOT json_array(event_id, time, principal, zone, action, decision)
ORDER BY leaf_index LIMIT 1
"""


_CHUNK_LEVEL = 13
_CHUNK = 1 << _CHUNK_LEVEL


def _first_column_mismatch(con: sqlite3.Connection) -> tuple[int, str | None]:
    """The first entry whose search columns disagree with its body, or ``(-1, None)``.

    The columns are copies of body fields made at append time; SQLite compares them with
    the JSON in C, which is faster than parsing every body in Python.
    """
    query = _COLUMNS_DISAGREE if _store.layout(con) == 2 else _COLUMNS_DISAGREE_V1
    try:
        row = con.execute(query).fetchone()
    except sqlite3.OperationalError as exc:
        if "JSON" not in str(exc):  # a table or column is gone: nothing to compare with
            raise _tampered(f"the search columns cannot be read ({exc})") from exc
        # A body that is not JSON at all: find it the slow way.
        for index, body in con.execute("SELECT leaf_index, body FROM events ORDER BY leaf_index"):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return int(index), _event_id_at(con, int(index))
        return -1, None
    return (int(row[0]), str(row[1])) if row is not None else (-1, None)


def _recompute(
    con: sqlite3.Connection,
    total: int,
    claims: list[_Claim],
    progress: Callable[[int, int], None] | None,
) -> None:
    """Rebuild the tree from the stored bodies and check it against every claim and saved node.

    Entries are processed in aligned chunks of 8,192: each chunk's leaf hashes and subtrees are
    computed level by level, then its root joins the compact range of the chunks before it.
    Checks are ordered as if entries were appended one by one, so the error names the first
    entry (or the first signed tree head) that is wrong.
    """
    by_size: dict[int, list[_Claim]] = {}
    for claim in claims:
        by_size.setdefault(claim.size, []).append(claim)
    for claim in by_size.pop(0, []):
        if claim.root != EMPTY_ROOT:
            raise _tampered(f"{claim.label} claims a non-empty root for an empty log")
    pending = sorted(by_size)  # claim sizes not reached yet
    saved = {
        (int(level), int(idx)): bytes(h)
        for level, idx, h in con.execute("SELECT level, idx, hash FROM nodes")
    }
    bad_columns, bad_columns_id = _first_column_mismatch(con)

    sha = _sha256
    stack: list[bytes] = []  # compact range over [0, size); size is a multiple of _CHUNK
    size = 0
    verified = 0  # every claim up to this size matched
    # Entries numbered 0..count-1 without gaps need no per-row index check (the common case).
    count, low, high = con.execute(
        "SELECT count(*), min(leaf_index), max(leaf_index) FROM events"
    ).fetchone()
    numbered = count == 0 or (low == 0 and high == count - 1)
    cursor = con.execute(
        "SELECT leaf_index, leaf_hash, body FROM events ORDER BY leaf_index"
        if not numbered
        else "SELECT NULL, leaf_hash, body FROM events ORDER BY leaf_index"
    )
    while True:
        batch = cursor.fetchmany(_CHUNK)
        if not batch:
            break
        n = len(batch)
        # 4a-4c. Per-entry checks; find the first entry with a problem, if any.
        problem: LogTampered | None = None
        cut = n
        indices = [] if numbered else [row[0] for row in batch]
        if not numbered and indices != list(range(size, size + n)):
            cut = next(k for k in range(n) if indices[k] != size + k)
            problem = _tampered(
                f"entry {size + cut} is missing (deleted, or the entries were renumbered)",
                leaf_index=size + cut,
            )
        if size + cut > total:
            cut = total - size
            eid = _event_id_at(con, total)
            problem = _tampered(
                f"entry {total} (event id {eid}) is not covered by the signed head: it was added "
                "outside the audit log",
                leaf_index=total,
                event_id=eid,
            )
        leaves = [sha(_LEAF + row[2]).digest() for row in batch[:cut]]
        stored = [row[1] for row in batch[:cut]]
        if leaves != stored:
            k = next(k for k in range(cut) if leaves[k] != stored[k])
            cut = k
            eid = _event_id_at(con, size + k)
            problem = _tampered(
                f"entry {size + k} (event id {eid}) was changed: its body no longer matches the "
                "leaf hash recorded when it was appended",
                leaf_index=size + k,
                event_id=eid,
            )
        if size <= bad_columns < size + cut:
            cut = bad_columns - size
            problem = _tampered(
                f"entry {bad_columns} (event id {bad_columns_id}): its search columns or body "
                "were changed (they no longer agree)",
                leaf_index=bad_columns,
                event_id=bad_columns_id,
            )
        del leaves[cut:]

        # 4d. Subtrees of the good prefix, level by level; saved big subtrees must match.
        levels = [leaves]
        level_hashes = leaves
        # (position, order, what): a check made after entry ``position - 1`` was appended;
        # order 0 = saved subtree mismatch, 1 = signed root mismatch, 2 = signed root matched.
        failures: list[tuple[int, int, Any]] = []
        level = 0
        while len(level_hashes) > 1:
            level_hashes = [
                sha(_NODE + level_hashes[j] + level_hashes[j + 1]).digest()
                for j in range(0, len(level_hashes) - 1, 2)
            ]
            level += 1
            levels.append(level_hashes)
            if level >= _store.NODE_LEVEL:
                first = size >> level
                for j, h in enumerate(level_hashes):
                    if saved.pop((level, first + j), None) != h:
                        lo = (first + j) << level
                        failures.append((lo + (1 << level), 0, (lo, level)))
                        break
        # The chunk's root joins the compact range (only a full chunk can carry upwards).
        if cut == _CHUNK:
            new_stack = stack.copy()  # the claims below still need the range before the chunk
            h, i, level = levels[_CHUNK_LEVEL][0], size >> _CHUNK_LEVEL, _CHUNK_LEVEL
            while i & 1:
                h = sha(_NODE + new_stack.pop() + h).digest()
                level += 1
                i >>= 1
                if saved.pop((level, i), None) != h:
                    failures.append((size + cut, 0, (i << level, level)))
                    break
            new_stack.append(h)
        else:
            new_stack = [*stack, *_prefix_nodes(levels, cut)]

        # 4e. Signed roots of sizes that end in this chunk.
        while pending and pending[0] <= size + cut:
            end = pending.pop(0)
            nodes = [*stack, *_prefix_nodes(levels, end - size)]
            root = nodes[-1]
            for left in reversed(nodes[:-1]):
                root = sha(_NODE + left + root).digest()
            bad = [claim for claim in by_size[end] if claim.root != root]
            failures.append((end, 1, bad[0]) if bad else (end, 2, None))

        # Report the earliest failure, as appending one entry at a time would have.
        for position, order, what in sorted(failures, key=lambda f: (f[0], f[1])):
            if order == 2:
                verified = position
            elif order == 0:
                lo, level = what
                raise _tampered(
                    f"entries {max(lo, verified)} to {lo + (1 << level) - 1} do not match the "
                    "subtree hash saved when they were appended: one of them was changed, "
                    "removed, reordered or inserted",
                    leaf_index=max(lo, verified),
                )
            else:
                raise _tampered(
                    f"{what.label} (tree size {what.size}) does not match the stored entries: an "
                    f"entry in {verified} to {position - 1} was changed, removed, reordered or "
                    "inserted",
                    checkpoint=what.checkpoint,
                    leaf_index=verified,
                )
        if problem is not None:
            raise problem
        stack = new_stack
        size += cut
        if progress is not None:
            progress(size, total)
    if size < total:
        raise _tampered(
            f"entries {size} to {total - 1} are missing: the signed head covers {total} "
            f"entries but only {size} are stored (the log was truncated)",
            leaf_index=size,
            checkpoint="head",
        )
    if saved:
        level, idx = min(saved, key=lambda k: k[1] << k[0])
        raise _tampered(
            f"a saved subtree hash (level {level}, index {idx}) covers entries that do not exist",
            leaf_index=idx << level,
        )


def _prefix_nodes(levels: list[list[bytes]], count: int) -> list[bytes]:
    """The perfect subtrees covering the first ``count`` leaves of a chunk, largest first."""
    nodes = []
    offset = 0
    for level in range(len(levels) - 1, -1, -1):
        if count >> level & 1:
            nodes.append(levels[level][offset >> level])
            offset += 1 << level
    return nodes


def _event_id_at(con: sqlite3.Connection, index: int) -> str | None:
    row = con.execute("SELECT event_id FROM events WHERE leaf_index = ?", (index,)).fetchone()
    return None if row is None else str(row[0])
