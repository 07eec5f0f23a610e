"""Embedded backend specifics: crash safety, concurrent processes, encryption hook, rows of a
sealed zone that do not open (the tamper cases both backends share are in test_contract.py)."""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from zone_keys import ZoneKeys

from trustzones.errors import TransactionAborted, UnknownTopic
from trustzones.keys._errors import OPAQUE_MESSAGE
from trustzones.streams import EmbeddedBackend, NewRecord, _embedded
from trustzones.streams._embedded import (
    _CACHE_ENTRIES,
    _CACHE_LONGEST,
    _HeaderCodec,
    _pack_headers,
    _unpack_headers,
)

PRODUCER = r"""
import sys, orjson
from pathlib import Path
from trustzones.streams import EmbeddedBackend, NewRecord
path, tag, batches, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with EmbeddedBackend("z", path) as b:
    b.ensure_topic("t", partitions=3)
    for n in range(batches):
        recs = [NewRecord(key=f"{tag}-{n}-{i}".encode(),
                          value=orjson.dumps({"w": tag, "b": n, "i": i})) for i in range(size)]
        b.produce("t", recs)
        print(n, flush=True)   # acknowledged
"""


def _all(b: EmbeddedBackend, topic: str = "t") -> list[dict[str, object]]:
    out = []
    for p in range(b.partition_count(topic)):
        off = 0
        while True:
            batch = b.fetch(topic, p, off, max_records=1000)
            if not batch:
                break
            assert [r.offset for r in batch] == list(range(off, off + len(batch)))
            out += [orjson.loads(r.value) for r in batch]
            off = batch[-1].offset + 1
    return out


class _Acks:
    """Complete lines a child wrote to its stdout pipe, read without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.last = -1

    def pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for line in lines:
                if line.strip():
                    self.last = int(line)


@pytest.mark.slow
def test_sigkill_never_loses_acknowledged_or_half_writes(tmp_path: Path) -> None:
    rng = random.Random(1234)
    db = tmp_path / "z.db"
    acked: dict[str, int] = {}
    for run in range(6):
        tag = f"r{run}"
        proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(db), tag, "100000", "50"],
            stdout=subprocess.PIPE,
        )
        try:
            acks = _Acks(proc)
            started = time.monotonic()
            while acks.last < 0 and time.monotonic() - started < 60:  # wait for the first ack
                acks.pump()
                time.sleep(0.005)
            deadline = time.monotonic() + rng.uniform(0.02, 0.6)
            while time.monotonic() < deadline:
                acks.pump()
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            acks.pump()  # acks written before the kill are still in the pipe
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        acked[tag] = acks.last
        assert acks.last >= 0, "the producer acknowledged nothing before it was killed"
    with EmbeddedBackend("z", db) as b:
        per_batch = Counter((r["w"], r["b"]) for r in _all(b))
    for (_tag, _n), count in per_batch.items():
        assert count == 50, "a batch was half written"
    for tag, last in acked.items():
        for n in range(last + 1):
            assert per_batch[(tag, n)] == 50, f"acknowledged batch {tag}/{n} lost"


def test_two_processes_produce_at_once(tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(db), tag, "40", "25"], stdout=subprocess.DEVNULL
        )
        for tag in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with EmbeddedBackend("z", db) as b:
        rows = _all(b)
        assert Counter(r["w"] for r in rows) == {"a": 1000, "b": 1000}
        assert sum(b.end_offsets("t").values()) == 2000


def test_consumer_group_offsets_resume(tmp_path: Path) -> None:
    with EmbeddedBackend("z", tmp_path / "z.db") as b:
        b.ensure_topic("t", partitions=2)
        b.produce("t", [NewRecord(value=str(i).encode(), partition=i % 2) for i in range(10)])
        c = b.consumer("t", group="g")
        first = c.poll(4)
        c.commit()
        assert len(first) == 4
        assert b.committed_offsets("g", "t") == c.positions
        again = b.consumer("t", group="g")
        rest = list(again.iter_until_end())
        assert sorted(int(r.value) for r in first + rest) == list(range(10))
        again.commit()
        assert b.consumer("t", group="g").poll() == []
        # Another group starts from the beginning; "latest" starts at the end.
        assert len(list(b.consumer("t", group="other").iter_until_end())) == 10
        assert b.consumer("t", start="latest").poll() == []


def test_transaction_is_atomic(tmp_path: Path) -> None:
    with EmbeddedBackend("z", tmp_path / "z.db") as b:
        b.ensure_topic("t", partitions=1)
        with pytest.raises(RuntimeError), b.transaction("tx") as tx:
            tx.produce("t", [NewRecord(value=b"1")])
            tx.store_offsets("flow", "src.topic", {0: 7})
            raise RuntimeError("crash in the middle")
        assert b.end_offsets("t") == {0: 0}
        assert b.committed_offsets("flow", "src.topic") == {}
        with b.transaction("tx") as tx:
            tx.produce("t", [NewRecord(value=b"1"), NewRecord(value=b"2")])
            tx.store_offsets("flow", "src.topic", {0: 7})
        assert b.end_offsets("t") == {0: 2}
        assert b.committed_offsets("flow", "src.topic") == {0: 7}


def test_transaction_into_unknown_topic_writes_nothing(tmp_path: Path) -> None:
    with EmbeddedBackend("z", tmp_path / "z.db") as b:
        b.ensure_topic("t", partitions=1)
        with (
            pytest.raises(UnknownTopic, match="does not exist in zone 'z'"),
            b.transaction("tx") as tx,
        ):
            tx.produce("t", [NewRecord(value=b"1")])
            tx.produce("missing", [NewRecord(value=b"2")])
        assert b.end_offsets("t") == {0: 0}


class _XorCipher:
    """A stand-in cipher that binds the AAD, to test the backend's use of the hook."""

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        return aad + b"|" + bytes(x ^ 0x5A for x in plaintext)

    def open(self, ciphertext: bytes, *, aad: bytes) -> bytes:
        head, _, body = ciphertext.partition(b"|")
        if head != aad:
            raise TransactionAborted("aad mismatch")
        return bytes(x ^ 0x5A for x in body)


def test_cipher_hook_seals_key_headers_and_value(tmp_path: Path) -> None:
    db = tmp_path / "z.db"
    with EmbeddedBackend("z", db, cipher=_XorCipher()) as b:
        b.ensure_topic("t", partitions=1)
        b.produce(
            "t", [NewRecord(key=b"KEY-4111", value=b"VALUE-4111", headers=(("h", b"HDR-4111"),))]
        )
        (r,) = b.fetch("t", 0, 0)
        assert (r.key, r.value, r.headers) == (b"KEY-4111", b"VALUE-4111", (("h", b"HDR-4111"),))
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"4111" not in raw


def test_retention_removes_old_records_but_offsets_continue(tmp_path: Path) -> None:
    with EmbeddedBackend("z", tmp_path / "z.db") as b:
        b.ensure_topic("t", partitions=1, retention_ms=1000)
        b.produce("t", [NewRecord(value=b"old", timestamp_ms=1_000)])
        b.produce("t", [NewRecord(value=b"new")])  # produce purges expired records
        assert [r.value for r in b.fetch("t", 0, 0)] == [b"new"]
        assert b.end_offsets("t") == {0: 2}
        assert b.start_offsets("t") == {0: 1}
        assert b.enforce_retention("t", now_ms=int(time.time() * 1000) + 60_000) == 1
        assert b.fetch("t", 0, 0) == []
        assert b.produce("t", [NewRecord(value=b"x")])[0].offset == 2


def test_ensure_topic_never_shrinks(tmp_path: Path) -> None:
    with EmbeddedBackend("z", tmp_path / "z.db") as b:
        b.ensure_topic("t", partitions=3)
        b.ensure_topic("t", partitions=1)
        assert b.partition_count("t") == 3
        b.ensure_topic("t", partitions=5)
        assert b.list_topics() == {"t": 5}


# -- rows of a sealed zone that do not open ---------------------------------------------------
STAND_IN = (None, b"", (("tz.undecryptable", OPAQUE_MESSAGE.encode()),))


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[ZoneKeys]:
    k = ZoneKeys(tmp_path / "keys", {"z": "restricted"})
    yield k
    k.close()


def _insert(db: Path, offset: int, key: object, value: object, headers: object = None) -> None:
    """Append a row to z.db's t/0 with plain sqlite3, as someone with the file would."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(
            'INSERT INTO records (topic, partition, "offset", key, value, headers, ts) '
            "VALUES ('t', 0, ?, ?, ?, ?, 0)",
            (offset, key, value, headers),
        )
        con.execute("UPDATE partitions SET next_offset=? WHERE topic='t'", (offset + 1,))
    finally:
        con.close()


def test_plaintext_and_malformed_rows_of_a_sealed_zone_are_withheld(
    tmp_path: Path, keys: ZoneKeys
) -> None:
    db = tmp_path / "z.db"
    events: list[dict[str, object]] = []
    cipher = keys.cipher("z")
    with EmbeddedBackend("z", db, cipher=cipher, audit=lambda e: events.append(dict(e))) as b:
        b.ensure_topic("t", partitions=1)
        b.produce("t", [NewRecord(key=b"k", value=b"sealed")])
        _insert(db, 1, b"k", b"plain")  # plaintext row: key column set
        _insert(db, 2, None, "text, not a blob")
        _insert(db, 3, None, b"plain", b"\x00")  # plaintext row: headers column set
        # Sealed under this zone's key for this very place, but not a record inside.
        _insert(db, 4, None, cipher.seal(b"\x01", aad=b"tz1\x00z\x00t\x000\x004"))
        b.produce("t", [NewRecord(value=b"after")])
        got = [(r.offset, r.key, r.value, r.headers) for r in b.fetch("t", 0, 0)]
    assert got == [
        (0, b"k", b"sealed", ()),
        (1, *STAND_IN),
        (2, *STAND_IN),
        (3, *STAND_IN),
        (4, *STAND_IN),
        (5, None, b"after", ()),
    ]
    plaintext = "record is not sealed (plaintext row?)"
    assert [(e["offset"], e["reason"]) for e in events] == [
        (1, plaintext),
        (2, plaintext),
        (3, plaintext),
        (4, "record opened but its contents are malformed"),
    ]
    assert {(e["type"], e["zone"], e["topic"], e["partition"]) for e in events} == {
        ("streams.record_undecryptable", "z", "t", 0)
    }


def test_a_record_stays_withheld_when_its_reason_cannot_be_recorded(
    tmp_path: Path, keys: ZoneKeys, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("audit zone unavailable")

    db = tmp_path / "z.db"
    with EmbeddedBackend("z", db, cipher=keys.cipher("z"), audit=broken) as b:
        b.ensure_topic("t", partitions=1)
        _insert(db, 0, b"k", b"plain")
        with caplog.at_level(logging.ERROR, logger="trustzones.streams.embedded"):
            (r,) = b.fetch("t", 0, 0)
    assert (r.key, r.value, r.headers) == STAND_IN
    assert [m.getMessage() for m in caplog.records] == [
        "audit callback failed while recording an undecryptable record"
    ]


def test_without_an_audit_callback_the_reason_is_logged(
    tmp_path: Path, keys: ZoneKeys, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "z.db"
    with EmbeddedBackend("z", db, cipher=keys.cipher("z")) as b:
        b.ensure_topic("t", partitions=1)
        _insert(db, 0, b"k", b"plain")
        with caplog.at_level(logging.WARNING, logger="trustzones.streams.embedded"):
            (r,) = b.fetch("t", 0, 0)
    assert (r.key, r.value, r.headers) == STAND_IN
    assert [m.getMessage() for m in caplog.records] == [
        "zone 'z': record t/0@0 withheld: record is not sealed (plaintext row?)"
    ]


NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
HEADERS = st.lists(st.tuples(NAMES, st.binary(max_size=40)), max_size=6)


@given(blocks=st.lists(HEADERS, min_size=1, max_size=8))
def test_the_header_codec_writes_and_reads_the_embedded_layout(
    blocks: list[list[tuple[str, bytes]]],
) -> None:
    codec = _HeaderCodec()
    for _ in range(2):  # the second round comes from the caches
        for headers in blocks:
            packed = codec.pack(headers)
            assert packed == _pack_headers(headers)
            assert codec.unpack(packed) == _unpack_headers(packed) == tuple(headers)


def test_the_header_codec_caches_stay_bounded_and_skip_what_they_cannot_hold() -> None:
    codec = _HeaderCodec()
    for i in range(3 * _CACHE_ENTRIES):
        headers = [("tz.source.offset", str(i).encode())]
        assert codec.unpack(codec.pack(headers)) == tuple(headers)
        assert len(codec._packed) <= _CACHE_ENTRIES
        assert len(codec._unpacked) <= _CACHE_ENTRIES
    codec = _HeaderCodec()
    long = ("tz.note", b"x" * (_CACHE_LONGEST + 1))
    assert codec.unpack(codec.pack([long])) == (long,)
    assert not codec._packed and not codec._unpacked
    # Pairs that are not hashable pack as the embedded backend packs them, uncached.
    odd: list[Any] = [["tz.list", b"v"], ("tz.array", bytearray(b"w"))]
    assert codec.pack(odd) == _pack_headers(odd)
    assert not codec._packed
    # A malformed block raises as _unpack_headers does, and is not remembered.
    with pytest.raises(struct.error):
        codec.unpack(b"\x00")
    assert not codec._unpacked


# Names with lone surrogates and values of other bytes-like types, which the native core
# leaves to Python, besides plain ones.
ODD_HEADERS = st.lists(
    st.tuples(
        st.text(st.characters(blacklist_categories=()), min_size=0, max_size=6),
        st.one_of(st.binary(max_size=20), st.binary(max_size=20).map(bytearray)),
    ),
    max_size=6,
)


@given(headers=ODD_HEADERS, as_list=st.booleans())
def test_the_native_header_block_is_the_python_one_or_left_to_python(
    headers: list[tuple[str, bytes]], as_list: bool
) -> None:
    try:
        expected: bytes | None = _pack_headers(headers)
    except UnicodeEncodeError:  # a lone surrogate in a name: Python raises, natively None
        expected = None
    native = _embedded._native_pack_headers  # see the test below for when it is None
    if native is not None:
        plain = all(type(v) is bytes for _, v in headers)
        assert native(headers if as_list else tuple(headers)) == (expected if plain else None)
    # The codec gives the Python bytes whichever path packs them, and raises as Python does.
    for codec in (_HeaderCodec(), _HeaderCodec(native=False)):
        if expected is None:
            with pytest.raises(UnicodeEncodeError):
                codec.pack(headers)
        else:
            assert codec.pack(headers) == expected


def test_the_native_header_packer_is_used_where_the_native_core_is_installed() -> None:
    # CI builds the native core, so the native checks of these tests run there.
    installed = importlib.util.find_spec("trustzones_native") is not None
    assert (_embedded._native_pack_headers is not None) == installed


def test_the_native_header_block_leaves_odd_containers_and_lengths_to_python() -> None:
    for codec in (_HeaderCodec(), _HeaderCodec(native=False)):  # Python raises as before
        with pytest.raises(struct.error):
            codec.pack([("a" * 65_536, b"")])
        assert codec.pack([["a", b"x"]]) == _pack_headers([("a", b"x")])
    native = _embedded._native_pack_headers
    if native is not None:
        assert native(iter([("a", b"x")])) is None  # neither a tuple nor a list
        assert native([["a", b"x"]]) is None  # a header that is a list
        assert native([("a", b"x", b"y")]) is None
        assert native([("a" * 65_536, b"")]) is None  # the name's length needs > 16 bits
        assert native([("a" * 65_535, b"")]) == _pack_headers([("a" * 65_535, b"")])
        assert native(()) == b""
