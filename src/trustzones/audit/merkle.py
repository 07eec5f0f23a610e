"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, proofs and their verifiers.

Leaves are hashed as ``SHA-256(0x00 || data)``, interior nodes as
``SHA-256(0x01 || left || right)``, and a tree of ``n`` leaves splits at the largest power of
two below ``n`` (RFC 9162 section 2.1.1). Proofs are lists of 32-byte hashes in the order the
RFC gives them (from the leaf upwards).

Example::

    from trustzones.audit.merkle import (
        CompactRange, inclusion_proof, leaf_hash, range_hash, verify_inclusion,
    )

    leaves = [leaf_hash(bytes([i])) for i in range(5)]
    tree = CompactRange()
    for h in leaves:
        tree.append(h)
    proof = inclusion_proof(lambda lo, hi: range_hash(leaves, lo, hi), 2, 5)
    verify_inclusion(leaves[2], 2, 5, proof, tree.root())  # raises if the proof is wrong

``CompactRange`` keeps only the roots of the perfect subtrees of the current tree (at most
64 hashes), so appending costs O(log n) time and memory however long the log grows.

The proof *generators* here take a ``subtree`` callback that returns the hash of the leaves
``[lo, hi)`` for the aligned ranges the proof needs; a store answers it from saved node hashes
so that a proof costs O(log n) look-ups. The *verifiers* are RFC 9162 sections 2.1.3.2 and
2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from itertools import count, repeat
from typing import Any

from trustzones.audit import _native
from trustzones.audit._errors import ProofInvalid

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() for the empty tree (RFC 9162 section 2.1.1)."""

_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256

_UNREPORTED = 64  # CompactRange.extend's min_level when no completed subtree is wanted

SubtreeHash = Callable[[int, int], bytes]
"""``subtree(lo, hi)`` returns MTH(D[lo:hi]) for the ranges a proof asks for."""


class MerkleProofError(ProofInvalid):
    """A proof does not verify, or its arguments are impossible. The message says which."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: ``SHA-256(0x00 || data)``."""
    return _sha256(_LEAF + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_hash(leaf_hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH of the leaves ``leaf_hashes[lo:hi]``, given their leaf hashes (O(hi - lo))."""
    if lo == hi:
        return EMPTY_ROOT
    # A compact range over the slice computes the same hash as the recursive definition
    # (the RFC tree over a slice is the tree of its perfect subtrees folded right to left).
    acc = CompactRange()
    acc.extend(leaf_hashes[lo:hi], _UNREPORTED)
    return acc.root()


def root_hash(leaf_hashes: Iterable[bytes]) -> bytes:
    """The root hash of the tree over the given leaf hashes."""
    acc = CompactRange()
    acc.extend(list(leaf_hashes), _UNREPORTED)
    return acc.root()


class CompactRange:
    """The frontier of a Merkle tree: the roots of its perfect subtrees, largest first.

    ``size`` has one bit set per stored hash; appending a leaf merges equal-sized subtrees
    like a binary counter carries, so each append costs O(log n) hashes amortised O(1).
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError(f"tree size must be >= 0, got {size}")
        if len(hashes) != size.bit_count():
            raise ValueError(
                f"a tree of {size} leaves has {size.bit_count()} frontier hashes, got {len(hashes)}"
            )
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("every frontier hash must be 32 bytes")
        self._size = size
        self._hashes = list(hashes)

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The perfect subtree roots, left (largest) to right (smallest)."""
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append a leaf hash; return the perfect subtrees it completed as (level, index, hash).

        Level 0 (the leaf itself) is not listed; a subtree at ``level`` with ``index`` covers
        leaves ``[index << level, (index + 1) << level)``.
        """
        completed: list[tuple[int, int, bytes]] = []
        h = leaf
        i = self._size
        level = 0
        stack = self._hashes
        while i & 1:
            h = _sha256(_NODE + stack.pop() + h).digest()
            level += 1
            i >>= 1
            completed.append((level, i, h))
        stack.append(h)
        self._size += 1
        return completed

    def extend(
        self, leaves: Sequence[bytes | bytearray], min_level: int = 1, *, native: bool = False
    ) -> list[tuple[int, int, bytes]]:
        """Append many leaf hashes at once; return the perfect subtrees they completed at
        ``min_level`` or above as (level, index, hash), level by level.

        The same tree as :meth:`append` for each leaf (the tests hold the two to each other),
        computed a level at a time: each level's new nodes are hashed in pairs in one pass,
        instead of a carry loop per leaf. ``native`` lets the native core do it when it is
        installed: the writer's path only. Verifying and proving stay in Python, so that a
        check of what was written never shares the code that wrote it.
        """
        core = _native.native if native else None
        if core is not None and type(leaves) is list:
            done = core.compact_extend(self._hashes, self._size, leaves, min_level)
            if done is not None:  # None: a hash that is not 32 bytes (the loop below takes it)
                self._hashes, nodes = done
                self._size += len(leaves)
                return nodes
        completed: list[tuple[int, int, bytes]] = []
        if not leaves:
            return completed
        stack = self._hashes
        sha = _sha256
        node = _NODE
        # ``level`` holds the nodes of this level that are not in the old frontier, indices
        # ``first`` to ``end - 1`` (``end`` is the new size at this level). A new node whose
        # left sibling is the old frontier's node at this level (``first`` odd) pairs with it;
        # an unpaired last node is the new frontier's node at this level.
        level: list[Any] = list(leaves)  # bytes or bytearray leaves, then bytes nodes
        first = self._size
        end = first + len(level)
        height = 0
        kept: list[bytes] = []  # the new frontier below the first level left untouched
        while level:
            if first & 1:
                level.insert(0, stack.pop())  # the smallest old frontier node is at this level
                first -= 1
            if len(level) & 1:
                kept.append(bytes(level.pop()))
            level = [sha(node + level[j] + level[j + 1]).digest() for j in range(0, len(level), 2)]
            height += 1
            first >>= 1
            if height >= min_level:
                completed.extend(zip(repeat(height), count(first), level))
        # The old frontier's nodes above the levels reached are unchanged (the new size has
        # the same high bits); the new ones go below them, largest first.
        stack.extend(reversed(kept))
        self._size = end
        return completed

    def root(self) -> bytes:
        """MTH of all leaves appended so far."""
        stack = self._hashes
        if not stack:
            return EMPTY_ROOT
        h = stack[-1]
        for left in reversed(stack[:-1]):
            h = _sha256(_NODE + left + h).digest()
        return h

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise MerkleProofError(f"{name} must be {HASH_SIZE} bytes, got {len(value)}")


def inclusion_proof(subtree: SubtreeHash, index: int, size: int) -> list[bytes]:
    """The RFC 9162 inclusion path of leaf ``index`` in the tree of ``size`` leaves.

    Computed from the bits of ``index`` and ``size - 1`` rather than by the RFC's recursion:
    below the level where the paths to ``index`` and to the last leaf part, every sibling is
    the neighbour subtree at that level (cut off at ``size`` when it sticks out on the
    right); above it, only the levels where ``index`` sits in a right child have a sibling,
    the complete subtree on its left.
    """
    if not 0 <= index < size:
        raise MerkleProofError(f"leaf index {index} is outside a tree of size {size}")
    return _path_from(subtree, index, 0, size)


def _path_from(subtree: SubtreeHash, node: int, level: int, size: int) -> list[bytes]:
    """Siblings of subtree ``(level, node)`` up to the root of a tree of ``size`` leaves."""
    last = size - 1
    fork = (node << level ^ last).bit_length()  # level where the paths part (0 if equal)
    path = []
    for lvl in range(level, fork):
        sib = (node >> (lvl - level)) ^ 1
        lo = sib << lvl
        hi = min((sib + 1) << lvl, size)
        path.append(subtree(lo, hi))
    idx = node >> (max(fork, level) - level)
    for lvl in range(max(fork, level), size.bit_length()):
        if idx & 1:
            lo = (idx - 1) << lvl
            path.append(subtree(lo, lo + (1 << lvl)))
        idx >>= 1
    return path


def consistency_proof(subtree: SubtreeHash, old_size: int, new_size: int) -> list[bytes]:
    """The RFC 9162 consistency proof between trees of ``old_size`` and ``new_size`` leaves.

    The proof is the path from the rightmost perfect subtree of the old tree up to the new
    root, preceded by that subtree's own hash unless it is the whole old tree (then the
    verifier already holds it as the old root).
    """
    if not 0 < old_size <= new_size:
        raise MerkleProofError(
            f"a consistency proof needs 0 < old size <= new size, got {old_size} and {new_size}"
        )
    if old_size == new_size:
        return []
    level = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    node = (old_size - 1) >> level
    path = _path_from(subtree, node, level, new_size)
    if old_size == 1 << level:
        return path
    start = node << level
    return [subtree(start, old_size), *path]


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof (RFC 9162 section 2.1.3.2); raise ``MerkleProofError`` if bad."""
    _check_hash("leaf hash", leaf)
    _check_hash("root hash", root)
    # 1. Compare leaf_index against tree_size: the leaf must be in the tree.
    if not 0 <= index < size:
        raise MerkleProofError(f"leaf index {index} is outside a tree of size {size}")
    # 2. fn = leaf_index, sn = tree_size - 1.   3. r = hash.
    fn, sn, r = index, size - 1, leaf
    # 4. Walk the path from the leaf upwards.
    for i, p in enumerate(proof):
        _check_hash(f"proof hash {i}", p)
        # 4a. A path longer than the tree is tall is wrong.
        if sn == 0:
            raise MerkleProofError(f"the proof has {len(proof)} hashes, more than the tree needs")
        # 4b. p is a left sibling when fn is odd or fn is the last node of its level.
        if fn & 1 or fn == sn:
            r = _sha256(_NODE + p + r).digest()
            if not fn & 1:
                # Skip the levels where this node has no right sibling.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(_NODE + r + p).digest()
        # 4c. One level up.
        fn >>= 1
        sn >>= 1
    # 5. The walk must reach the root and produce the expected hash.
    if sn != 0:
        raise MerkleProofError(f"the proof has {len(proof)} hashes, fewer than the tree needs")
    if r != root:
        raise MerkleProofError("the inclusion proof does not lead to the expected root hash")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check a consistency proof (RFC 9162 section 2.1.4.2); raise ``MerkleProofError`` if bad.

    A proof from the empty tree is refused as meaningless (every tree extends it), like
    transparency-dev/merkle does; equal sizes need an empty proof and equal roots.
    """
    # Roots of the wrong length are not refused up front: they can never equal a computed
    # hash, and equal sizes compare the roots as given (as transparency-dev/merkle does).
    if old_size > new_size:
        raise MerkleProofError(f"old tree size {old_size} is larger than new size {new_size}")
    if old_size == 0:
        raise MerkleProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        if proof:
            raise MerkleProofError("trees of equal size need an empty consistency proof")
        if old_root != new_root:
            raise MerkleProofError("trees of equal size have different root hashes")
        return
    # 1. An empty path cannot prove anything between different sizes.
    if not proof:
        raise MerkleProofError("the consistency proof is empty")
    for i, p in enumerate(proof):
        _check_hash(f"proof hash {i}", p)
    path = list(proof)
    # 2. If first is an exact power of two, its root is the first node of the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. Skip the levels where the old tree's last node is a right child.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first node of the path.
    fr = sr = path[0]
    # 6. Walk the rest of the path.
    for c in path[1:]:
        # 6a. A path longer than the tree is tall is wrong.
        if sn == 0:
            raise MerkleProofError(f"the proof has {len(proof)} hashes, more than the tree needs")
        # 6b. c is a left sibling of both paths ...
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE + c + fr).digest()
            sr = _sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            # ... or a right sibling that only the new tree has.
            sr = _sha256(_NODE + sr + c).digest()
        # 6c. One level up.
        fn >>= 1
        sn >>= 1
    # 7. Both roots must come out, and the walk must end at the top.
    if sn != 0:
        raise MerkleProofError(f"the proof has {len(proof)} hashes, fewer than the tree needs")
    if fr != old_root:
        raise MerkleProofError("the consistency proof does not lead to the old root hash")
    if sr != new_root:
        raise MerkleProofError("the consistency proof does not lead to the new root hash")
