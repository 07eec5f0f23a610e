"""RFC 9162 hashing and proofs, against three independent references.

1. The RFC 6962 reference roots that certificate-transparency and transparency-dev/merkle
   publish for the eight leaf inputs below (``testonly/constants.go``).
2. ``pymerkle`` (RFC 9162 compatible roots and inclusion paths; its consistency proofs use
   their own format, so those are checked against the recursion instead).
3. A plain transcription of RFC 9162 section 2.1's recursive definitions (MTH, PATH,
   PROOF/SUBPROOF), kept deliberately naive here in the tests.

The transparency-dev/merkle JSON vectors (``testdata/inclusion``, ``testdata/consistency``,
including must-fail mutations) are read from ``$TRUSTZONES_MERKLE_VECTORS`` or from
``shared/vectors/transparency-dev-merkle/testdata`` beside the repository.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from trustzones.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

# -- 3. the RFC 9162 section 2.1 definitions, transcribed naively ---------------------------


def mth(data: list[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(data[:k]) + mth(data[k:])).digest()


def rfc_path(m: int, data: list[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*rfc_path(m, data[:k]), mth(data[k:])]
    return [*rfc_path(m - k, data[k:]), mth(data[:k])]


def rfc_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if b else [mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*rfc_subproof(m, data[:k], b), mth(data[k:])]
    return [*rfc_subproof(m - k, data[k:], False), mth(data[:k])]


def rfc_proof(m: int, data: list[bytes]) -> list[bytes]:
    return rfc_subproof(m, data, True)


def entries(n: int) -> list[bytes]:
    return [b"entry %d" % i for i in range(n)]


def subtrees(data: list[bytes]) -> Callable[[int, int], bytes]:
    leaves = [leaf_hash(d) for d in data]
    return lambda lo, hi: range_hash(leaves, lo, hi)


# -- 1. published reference roots ------------------------------------------------------------

# Leaf inputs and the root of the tree over the first n of them, n = 0..8 (RFC 6962 test data
# as published in transparency-dev/merkle testonly/constants.go).
REFERENCE_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]  # fmt: skip
REFERENCE_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


@pytest.mark.parametrize("n", range(9))
def test_reference_roots(n: int) -> None:
    leaves = [leaf_hash(d) for d in REFERENCE_LEAVES[:n]]
    assert root_hash(leaves).hex() == REFERENCE_ROOTS[n]
    assert mth(REFERENCE_LEAVES[:n]).hex() == REFERENCE_ROOTS[n]


def test_hash_prefixes() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


# -- compact range ---------------------------------------------------------------------------


def test_compact_range_matches_recursion_and_reports_completed_subtrees() -> None:
    data = entries(300)
    leaves = [leaf_hash(d) for d in data]
    tree = CompactRange()
    assert tree.root() == EMPTY_ROOT
    for n, h in enumerate(leaves, start=1):
        for level, index, sub in tree.append(h):
            lo, hi = index << level, (index + 1) << level
            assert hi == n
            assert sub == mth(data[lo:hi])
        assert tree.size == n
        assert len(tree.hashes) == n.bit_count()
        assert tree.root() == mth(data[:n])
    again = CompactRange(tree.size, tree.hashes)
    assert again.root() == tree.root()


@settings(max_examples=200, deadline=None)
@given(
    start=st.one_of(st.integers(0, 20), st.integers(0, 3000)),
    counts=st.lists(st.one_of(st.integers(0, 9), st.integers(0, 700)), min_size=1, max_size=4),
    min_level=st.sampled_from([1, 2, 8]),
    as_bytearray=st.booleans(),
)
def test_extend_is_append_leaf_by_leaf(
    start: int, counts: list[int], min_level: int, as_bytearray: bool
) -> None:
    # The batch update (level by level) against the reference (one leaf at a time): the same
    # frontier and root after every batch, and the same completed subtrees at min_level up.
    one, many = CompactRange(), CompactRange()
    for i in range(start):
        h = hashlib.sha256(b"%d" % i).digest()
        one.append(h)
        many.append(h)
    n = start
    for count in counts:
        batch = [hashlib.sha256(b"%d" % i).digest() for i in range(n, n + count)]
        expected = [c for h in batch for c in one.append(h) if c[0] >= min_level]
        got = many.extend([bytearray(h) for h in batch] if as_bytearray else batch, min_level)
        n += count
        assert sorted(got) == sorted(expected)
        assert len(got) == len(set(got))
        assert (many.size, many.hashes, many.root()) == (one.size, one.hashes, one.root())
        assert all(type(h) is bytes for h in many.hashes)
    assert many.root() == root_hash(hashlib.sha256(b"%d" % i).digest() for i in range(n))


def test_compact_range_rejects_a_frontier_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"has 2 frontier hashes"):
        CompactRange(3, [b"\x00" * 32])
    with pytest.raises(ValueError, match=r"32 bytes"):
        CompactRange(1, [b"\x00" * 31])


# -- 2. pymerkle as an oracle ----------------------------------------------------------------

ORACLE_SIZES = [*range(1, 70), 127, 128, 129, 255, 256, 257, 511, 1000, 1023, 1024, 1025, 2049]


def test_roots_and_inclusion_paths_match_pymerkle() -> None:
    data = entries(max(ORACLE_SIZES))
    leaves = [leaf_hash(d) for d in data]
    oracle = InmemoryTree()
    for d in data:
        oracle.append_entry(d)
    rng = random.Random(9162)
    checked = 0
    for n in ORACLE_SIZES:
        assert root_hash(leaves[:n]) == oracle.get_root(n), n
        indices = range(n) if n <= 70 else rng.sample(range(n), 25)
        for m in indices:
            ours = inclusion_proof(lambda lo, hi: range_hash(leaves, lo, hi), m, n)
            theirs = oracle.prove_inclusion(m + 1, n)  # pymerkle counts leaves from one
            assert theirs.path[0] == leaves[m]
            assert ours == theirs.path[1:], (m, n)
            verify_inclusion(leaves[m], m, n, ours, oracle.get_root(n))
            checked += 1
    assert checked > 2000


# -- 3. the RFC recursion ----------------------------------------------------------------------


def test_inclusion_proofs_match_rfc_recursion() -> None:
    for n in range(1, 80):
        data = entries(n)
        sub = subtrees(data)
        root = mth(data)
        for m in range(n):
            proof = inclusion_proof(sub, m, n)
            assert proof == rfc_path(m, data), (m, n)
            verify_inclusion(leaf_hash(data[m]), m, n, proof, root)


def test_consistency_proofs_match_rfc_recursion() -> None:
    for n in range(1, 65):
        data = entries(n)
        sub = subtrees(data)
        for m in range(1, n + 1):
            proof = consistency_proof(sub, m, n)
            assert proof == (rfc_proof(m, data) if m < n else []), (m, n)
            verify_consistency(m, n, proof, mth(data[:m]), mth(data))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5000).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n - 1))))
def test_consistency_proofs_for_larger_trees(sizes: tuple[int, int]) -> None:
    n, m = sizes
    data = entries(n)
    sub = subtrees(data)
    proof = consistency_proof(sub, m, n)
    old_root, new_root = sub(0, m), sub(0, n)
    verify_consistency(m, n, proof, old_root, new_root)
    if n <= 1200:  # the naive recursion is quadratic; compare where it is still quick
        assert proof == rfc_proof(m, data)


def mutations(proof: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    for i in range(len(proof)):
        flipped = bytearray(proof[i])
        flipped[i % 32] ^= 0x10
        out.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
        out.append(proof[:i] + proof[i + 1 :])
    out.append([*proof, proof[0] if proof else b"\x00" * 32])
    out.append([b"\x00" * 32, *proof])
    return out


def test_every_mutated_proof_is_rejected() -> None:
    for n in (1, 2, 3, 5, 8, 13, 64, 100):
        data = entries(n)
        sub = subtrees(data)
        root = sub(0, n)
        for m in range(n):
            proof = inclusion_proof(sub, m, n)
            for bad in mutations(proof):
                with pytest.raises(MerkleProofError):
                    verify_inclusion(leaf_hash(data[m]), m, n, bad, root)
            with pytest.raises(MerkleProofError):
                verify_inclusion(leaf_hash(b"other"), m, n, proof, root)
            if n > 1:
                with pytest.raises(MerkleProofError):
                    verify_inclusion(leaf_hash(data[m]), (m + 1) % n, n, proof, root)
        for m in range(1, n):
            proof = consistency_proof(sub, m, n)
            for bad in mutations(proof):
                with pytest.raises(MerkleProofError):
                    verify_consistency(m, n, bad, sub(0, m), root)
            with pytest.raises(MerkleProofError):
                verify_consistency(m, n, proof, sub(0, m), sub(0, n - 1) if n > 1 else root)
            with pytest.raises(MerkleProofError):
                verify_consistency(m, n, proof, leaf_hash(b"forged"), root)


def test_impossible_arguments_are_refused() -> None:
    sub = subtrees(entries(4))
    with pytest.raises(MerkleProofError, match=r"outside a tree of size 4"):
        inclusion_proof(sub, 4, 4)
    with pytest.raises(MerkleProofError, match=r"0 < old size <= new size"):
        consistency_proof(sub, 0, 4)
    with pytest.raises(MerkleProofError, match=r"0 < old size <= new size"):
        consistency_proof(sub, 3, 2)
    root = sub(0, 4)
    with pytest.raises(MerkleProofError, match=r"empty tree proves nothing"):
        verify_consistency(0, 4, [root], EMPTY_ROOT, root)
    with pytest.raises(MerkleProofError, match=r"32 bytes"):
        verify_inclusion(b"short", 0, 4, [], root)


# -- transparency-dev/merkle JSON vectors ------------------------------------------------------

_REPO = Path(__file__).resolve().parents[2]
_VECTOR_DIRS = [
    os.environ.get("TRUSTZONES_MERKLE_VECTORS", ""),
    str(_REPO.parent / "shared" / "vectors" / "transparency-dev-merkle" / "testdata"),
    "/work/shared/vectors/transparency-dev-merkle/testdata",
]
_MIRROR = Path("/work/.mirror/transparency-dev+merkle/repo")


def _load_vectors(kind: str) -> list[tuple[str, dict[str, object]]]:
    for d in _VECTOR_DIRS:
        root = Path(d) / kind if d else None
        if root is not None and root.is_dir():
            return [
                (str(p.relative_to(root)), json.loads(p.read_text()))
                for p in sorted(root.rglob("*.json"))
            ]
    if _MIRROR.is_dir():  # a fetched copy of the repository (git objects, no work tree)
        git = ["git", f"--git-dir={_MIRROR}"]
        names = subprocess.run(
            [*git, "ls-tree", "-r", "--name-only", "HEAD", f"testdata/{kind}"],
            check=True, capture_output=True, text=True,
        ).stdout.split()  # fmt: skip
        out = []
        for name in names:
            if name.endswith(".json"):
                text = subprocess.run(
                    [*git, "show", f"HEAD:{name}"], check=True, capture_output=True, text=True
                ).stdout
                out.append((name.removeprefix(f"testdata/{kind}/"), json.loads(text)))
        return out
    return []


def _b64(v: object) -> bytes:
    return base64.b64decode(str(v or ""))


def _b64list(v: object) -> list[bytes]:
    return [_b64(x) for x in (v or [])]  # type: ignore[attr-defined]


INCLUSION = _load_vectors("inclusion")
CONSISTENCY = _load_vectors("consistency")
_NO_VECTORS = (
    "transparency-dev/merkle testdata not found: set TRUSTZONES_MERKLE_VECTORS to its "
    "testdata/ directory or place it at shared/vectors/transparency-dev-merkle/testdata"
)


@pytest.mark.skipif(not INCLUSION, reason=_NO_VECTORS)
def test_transparency_dev_inclusion_vectors() -> None:
    failures = []
    for name, v in INCLUSION:
        try:
            verify_inclusion(
                _b64(v["leafHash"]),
                int(v["leafIdx"]),  # type: ignore[call-overload]
                int(v["treeSize"]),  # type: ignore[call-overload]
                _b64list(v["proof"]),
                _b64(v["root"]),
            )
            ok = True
        except MerkleProofError:
            ok = False
        if ok == bool(v["wantErr"]):
            failures.append(name)
    assert not failures, failures
    assert len(INCLUSION) > 60
    assert sum(1 for _, v in INCLUSION if v["wantErr"]) > 40  # the must-fail mutations ran


@pytest.mark.skipif(not CONSISTENCY, reason=_NO_VECTORS)
def test_transparency_dev_consistency_vectors() -> None:
    failures = []
    for name, v in CONSISTENCY:
        try:
            verify_consistency(
                int(v["size1"]),  # type: ignore[call-overload]
                int(v["size2"]),  # type: ignore[call-overload]
                _b64list(v["proof"]),
                _b64(v["root1"]),
                _b64(v["root2"]),
            )
            ok = True
        except MerkleProofError:
            ok = False
        if ok == bool(v["wantErr"]):
            failures.append(name)
    assert not failures, failures
    assert len(CONSISTENCY) > 60
    assert sum(1 for _, v in CONSISTENCY if v["wantErr"]) > 40


@pytest.mark.skipif(not INCLUSION or not CONSISTENCY, reason=_NO_VECTORS)
def test_our_proofs_reproduce_the_happy_path_vectors() -> None:
    # The vectors' tree is the 8 reference leaves; our generators must emit their proofs.
    sub = subtrees(REFERENCE_LEAVES)
    seen = 0
    for _, v in INCLUSION:
        if v["desc"] == "happy path" and int(v["treeSize"]) <= 8:  # type: ignore[call-overload]
            size = int(v["treeSize"])  # type: ignore[call-overload]
            assert _b64(v["root"]) == sub(0, size)
            proof = inclusion_proof(sub, int(v["leafIdx"]), size)  # type: ignore[call-overload]
            assert proof == _b64list(v["proof"])
            seen += 1
    for _, v in CONSISTENCY:
        if v["desc"] == "happy path" and int(v["size2"]) <= 8:  # type: ignore[call-overload]
            m, n = int(v["size1"]), int(v["size2"])  # type: ignore[call-overload]
            assert consistency_proof(sub, m, n) == _b64list(v["proof"])
            seen += 1
    assert seen >= 8
