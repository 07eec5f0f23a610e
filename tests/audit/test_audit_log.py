"""The audit log: append-only writes, signed heads and checkpoints, auditor-only reads, proofs."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from audit_helpers import T0, make_events, make_layout_1, raw
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from trustzones.audit import (
    AuditEvent,
    AuditEventRejected,
    AuditKeyInvalid,
    AuditLog,
    AuditReader,
    AuditSink,
    Checkpoint,
    NoteSigner,
    ProofInvalid,
    canonical_json,
    check_proof,
    verify_log,
)
from trustzones.audit.events import CanonicalEvent, access_decision, flow_transfers
from trustzones.audit.merkle import CompactRange, verify_consistency
from trustzones.errors import AccessDenied, AuditError


def auditor(db: Path) -> AuditReader:
    return AuditReader(db, principal="carol", authorize=lambda who, op: who == "carol")


def test_the_log_is_an_audit_sink(log: AuditLog) -> None:
    assert isinstance(log, AuditSink)
    events = make_events(5)
    log.record(events[0])
    log.record_many(events[1:])
    log.record_many([])
    assert [s.event for s in auditor(log.path).tail(10)] == events


def test_appends_return_leaf_indices_and_survive_reopening(db: Path, signer: NoteSigner) -> None:
    events = make_events(40)
    with AuditLog.open(db, signer=signer) as log:
        assert log.append(events[0]) == 0
        assert log.append_many(events[1:30]) == range(1, 30)
    with AuditLog.open(db, signer=signer) as log:
        assert log.append_many(events[30:]) == range(30, 40)
    stored = auditor(db).tail(100)
    assert [s.leaf_index for s in stored] == list(range(40))
    assert [s.event for s in stored] == events
    con = sqlite3.connect(db)
    assert [bytes(b) for (b,) in con.execute("SELECT body FROM events ORDER BY leaf_index")] == [
        canonical_json(e) for e in events
    ]
    con.close()
    assert verify_log(db, signer.verifier()).tree_size == 40


def test_root_matches_pymerkle(log: AuditLog, signer: NoteSigner) -> None:
    events = make_events(123)
    log.append_many(events)
    oracle = InmemoryTree()
    for e in events:
        oracle.append_entry(canonical_json(e))
    head = Checkpoint.open(log.head(), signer.verifier())
    assert (head.origin, head.size) == ("audit.test/restricted", 123)
    assert head.root_hash == oracle.get_root()


def test_opening_with_another_key_is_refused(db: Path, signer: NoteSigner) -> None:
    with AuditLog.open(db, signer=signer) as log:
        log.append(make_events(1)[0])
    with pytest.raises(AuditKeyInvalid, match=r"use the signing key it was created with"):
        AuditLog.open(db, signer=NoteSigner.generate("audit.test/restricted"))


def test_there_is_no_update_or_delete(log: AuditLog) -> None:
    log.append_many(make_events(300))  # so that every table has rows for the triggers
    assert not [n for n in dir(log) if n.startswith(("update", "delete", "remove", "truncate"))]
    con = sqlite3.connect(log.path)
    for sql in (
        "UPDATE events SET body = x'00'",
        "DELETE FROM events",
        "DELETE FROM checkpoints",
        "UPDATE nodes SET hash = x'00'",
        "DELETE FROM meta",
    ):
        with pytest.raises(sqlite3.IntegrityError, match=r"append-only"):
            con.execute(sql)
    con.close()


def test_duplicate_event_ids_are_refused_and_nothing_is_written(log: AuditLog) -> None:
    events = make_events(3)
    log.append_many(events)
    with pytest.raises(AuditEventRejected, match=r"same id is already in the log"):
        log.append_many([*make_events(2, start=10), events[1]])
    assert len(auditor(log.path).tail(100)) == 3
    assert log.append(make_events(1, start=20)[0]) == 3


def test_checkpoints_are_taken_every_interval_and_on_request(
    log: AuditLog, signer: NoteSigner
) -> None:
    for batch in range(5):
        log.append_many(make_events(10, start=batch * 10))  # crosses 16, 32, 48
    con = sqlite3.connect(log.path)
    assert [s for (s,) in con.execute("SELECT tree_size FROM checkpoints ORDER BY seq")] == [
        20,
        40,
        50,
    ]
    note = log.checkpoint()
    assert note == log.head()
    assert log.checkpoint() == note  # the same head is kept once
    assert con.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (3,)
    log.append(make_events(1, start=99)[0])
    log.checkpoint()
    assert con.execute("SELECT MAX(tree_size) FROM checkpoints").fetchone() == (51,)
    con.close()
    report = verify_log(log.path, signer.verifier())
    assert (report.tree_size, report.checkpoints) == (51, 4)


def test_readers_need_the_auditor_role(log: AuditLog) -> None:
    log.append_many(make_events(3))
    event_id = auditor(log.path).tail(1)[0].event.id

    def broken(who: str, op: str) -> bool:
        raise RuntimeError("policy engine down")

    for check in (lambda who, op: False, broken, lambda who, op: "yes"):
        reader = AuditReader(log.path, principal="mallory", authorize=check)  # type: ignore[arg-type]
        for call in (
            lambda r=reader: r.tail(),
            lambda r=reader: r.search(),
            lambda r=reader: r.get(event_id),
            lambda r=reader: r.prove(event_id),
            lambda r=reader: r.consistency(1),
        ):
            with pytest.raises(AccessDenied, match=r"'mallory' may not .* needs the auditor role"):
                call()
    seen: list[tuple[str, str]] = []
    reader = AuditReader(
        log.path, principal="carol", authorize=lambda w, o: not seen.append((w, o))
    )
    reader.tail()
    reader.prove(event_id)
    assert seen == [("carol", "tail"), ("carol", "prove")]


def test_search_filters(log: AuditLog) -> None:
    events = make_events(60)
    log.append_many(events)
    reader = auditor(log.path)

    def ids(**filters: object) -> list[int]:
        return [s.leaf_index for s in reader.search(**filters, limit=1000)]  # type: ignore[arg-type]

    assert ids(principal="user-0") == [i for i in range(60) if i % 3 == 0 and i % 5 == 0]
    assert ids(zone="confidential") == [i for i in range(60) if i % 3 == 0 and i % 2 == 0]
    assert ids(decision="deny") == [i for i in range(60) if i % 12 == 0]
    assert ids(action="consume", zone="restricted") == [i for i in range(60) if i % 3]
    since, until = T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)
    assert ids(since=since, until=until) == list(range(10, 20))
    assert ids(since="2026-03-01T13:00:10+01:00", until=until) == list(range(10, 20))
    assert [s.leaf_index for s in reader.search(limit=5)] == [0, 1, 2, 3, 4]
    assert [s.leaf_index for s in reader.tail(3)] == [57, 58, 59]
    assert reader.get(events[7].id).leaf_index == 7
    with pytest.raises(AuditError, match=r"no event with id"):
        reader.get("missing")
    with pytest.raises(AuditError, match=r"RFC 3339"):
        reader.search(since="yesterday")


def test_readers_never_write(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match=r"no audit log at"):
        auditor(tmp_path / "nothing.db").tail()
    assert not (tmp_path / "nothing.db").exists()


def test_prove_and_check_proof(log: AuditLog, signer: NoteSigner) -> None:
    events = make_events(300)  # larger than one saved subtree (256 leaves)
    log.append_many(events)
    reader = auditor(log.path)
    for i in (0, 1, 255, 256, 299):
        bundle = reader.prove(events[i].id)
        assert (bundle.leaf_index, bundle.tree_size) == (i, 300)
        assert check_proof(bundle.to_json(), signer.verifier()) == events[i]
    # A third party needs only the verifier key string and the JSON.
    text = reader.prove(events[42].id).to_json()
    doc = json.loads(text)
    assert set(doc) == {
        "format",
        "event",
        "leaf_index",
        "tree_size",
        "inclusion_path",
        "checkpoint",
    }
    verifier = type(signer.verifier()).from_key_string(signer.verifier().key_string)
    assert check_proof(text, verifier).id == events[42].id


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda d: d["event"]["data"].update(decision="quarantine"),
            "not entry 42 of the signed log",
        ),
        (lambda d: d.update(leaf_index=43), "not entry 43 of the signed log"),
        (lambda d: d.update(tree_size=299), "covers 300"),
        (lambda d: d["inclusion_path"].pop(), "fewer than the tree needs"),
        (
            lambda d: d["inclusion_path"].__setitem__(0, base64.b64encode(bytes(32)).decode()),
            "does not lead to the expected root",
        ),
        (
            lambda d: d.update(checkpoint=d["checkpoint"].replace("\n300\n", "\n301\n")),
            "does not verify",
        ),
        (lambda d: d.update(format="v0"), "is not a trustzones-audit-inclusion-proof/v1"),
        (lambda d: d["event"]["data"].update(reason="4111111111111111"), "not entry 42"),
    ],
)
def test_tampered_proofs_are_rejected(
    log: AuditLog, signer: NoteSigner, tamper: object, message: str
) -> None:
    events = make_events(300)
    log.append_many(events)
    doc = json.loads(auditor(log.path).prove(events[42].id).to_json())
    tamper(doc)  # type: ignore[operator]
    with pytest.raises(ProofInvalid, match=message):
        check_proof(json.dumps(doc), signer.verifier())


def test_proofs_from_another_log_are_rejected(log: AuditLog, tmp_path: Path) -> None:
    log.append_many(make_events(5))
    bundle = auditor(log.path).prove(auditor(log.path).tail(1)[0].event.id).to_json()
    with pytest.raises(ProofInvalid, match=r"no signature by the key"):
        check_proof(bundle, NoteSigner.generate("audit.test/restricted").verifier())


def test_consistency_proofs_between_checkpoints(log: AuditLog, signer: NoteSigner) -> None:
    heads = []
    for n in (1, 7, 256, 300, 513):
        log.append_many(make_events(n, start=len(heads) * 1000))
        heads.append(Checkpoint.open(log.head(), signer.verifier()))
    reader = auditor(log.path)
    for old in heads:
        for new in heads:
            if old.size <= new.size:
                proof = reader.consistency(old.size, new.size)
                verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)
    with pytest.raises(AuditError, match=r"has only"):
        reader.consistency(1, 10_000)


def test_empty_log_verifies(log: AuditLog, signer: NoteSigner) -> None:
    report = verify_log(log.path, signer.verifier())
    assert (report.tree_size, report.checkpoints) == (0, 0)
    assert log.checkpoint() == log.head()


def test_verify_with_the_wrong_public_key(log: AuditLog) -> None:
    log.append_many(make_events(3))
    with pytest.raises(AuditError, match=r"signed head: the note carries no signature"):
        verify_log(log.path, NoteSigner.generate("audit.test/restricted").verifier())
    with pytest.raises(AuditError, match=r"origin is 'audit.test/restricted' but the public key"):
        verify_log(log.path, NoteSigner.generate("audit.test/other").verifier())


def test_trusted_checkpoints_must_be_extended(log: AuditLog, signer: NoteSigner) -> None:
    log.append_many(make_events(10))
    published = log.checkpoint()
    log.append_many(make_events(10, start=10))
    assert verify_log(log.path, signer.verifier(), trusted=[published]).trusted_checkpoints == 1
    with pytest.raises(ProofInvalid, match=r"trusted checkpoint 1"):
        verify_log(
            log.path,
            signer.verifier(),
            trusted=[NoteSigner.generate(signer.name).sign(published.split("\n\n")[0] + "\n")],
        )


def test_a_log_with_untouched_file_but_foreign_rows_is_refused_for_append(
    log: AuditLog,
) -> None:
    log.append_many(make_events(4))
    con = raw(log.path)
    con.execute("DELETE FROM events WHERE leaf_index = 3")
    con.close()
    with pytest.raises(AuditError, match=r"refusing to append.*up to 2 but its signed head"):
        log.append(make_events(1, start=50)[0])


def test_the_file_is_in_wal_mode_with_full_sync(log: AuditLog) -> None:
    log.append(make_events(1)[0])
    con = sqlite3.connect(log.path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    con.close()
    assert log._con.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL


def test_threads_can_share_one_log(log: AuditLog, signer: NoteSigner) -> None:
    def work(start: int) -> None:
        for i in range(10):
            log.append_many(make_events(5, start=start + i * 5))

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify_log(log.path, signer.verifier()).tree_size == 200


def test_a_layout_1_log_with_its_old_indexes_still_opens_appends_searches_and_verifies(
    db: Path, signer: NoteSigner
) -> None:
    # Logs of schema "1" keep the search columns in ``events``; the oldest of them carry two
    # more indexes. Nothing is migrated: they keep working in their own layout.
    make_layout_1(db)
    con = sqlite3.connect(db)
    con.execute("CREATE INDEX events_by_time ON events(time)")
    con.execute("CREATE INDEX events_by_principal ON events(principal, time)")
    con.commit()
    con.close()
    every = make_events(30)
    with AuditLog.open(db, signer=signer) as log:
        log.append_many(every[:10])
    with AuditLog.open(db, signer=signer) as log:
        log.append_many(every[10:20])
        log.append_many(flow_transfers(
            [(0, o, b"r%d" % o, "allow", None) for o in range(5)], flow="f1", principal="svc",
            source_zone="restricted", source_topic="payments", destination_zone="internal",
            destination_topic="clean",
        ))  # fmt: skip
        log.append_many(every[20:30])
    con = sqlite3.connect(db)
    assert dict(con.execute("SELECT key, value FROM meta").fetchall())["schema"] == "1"
    assert con.execute("SELECT name FROM sqlite_master WHERE name = 'facets'").fetchone() is None
    rows = con.execute(
        "SELECT event_id, time, principal, zone, action, decision, body FROM events "
        "ORDER BY leaf_index"
    ).fetchall()
    con.close()
    assert [bytes(r[6]) for r in rows[:20]] == [canonical_json(e) for e in every[:20]]
    assert [r[:6] for r in rows[:20]] == [
        (e.id, e.time, e.data.principal, e.data.zone, e.data.action, e.data.decision)
        for e in every[:20]
    ]
    reader = auditor(db)
    found = reader.search(principal="user-1", limit=100)
    expected = [i if i < 20 else i + 5 for i, e in enumerate(every) if e.data.principal == "user-1"]
    assert expected and [s.leaf_index for s in found] == expected
    assert [s.leaf_index for s in reader.search(principal="svc", action="flow.transfer")] == list(
        range(20, 25)
    )
    assert verify_log(db, signer.verifier()).tree_size == 35


def test_canonical_events_are_stored_as_they_are_and_verify(
    log: AuditLog, signer: NoteSigner
) -> None:
    batch = flow_transfers(
        [(p, o, b"record %d" % o, "allow" if o % 3 else "quarantine", None if o % 3 else "dlp")
         for p in range(2) for o in range(10)],
        flow="f1", principal="svc", source_zone="restricted", source_topic="payments",
        destination_zone="internal", destination_topic="clean",
    )  # fmt: skip
    mixed: list[AuditEvent | CanonicalEvent] = [*make_events(3), *batch, *make_events(2, 3)]
    assert log.append_many(mixed) == range(25)
    con = sqlite3.connect(log.path)
    rows = con.execute(
        "SELECT event_id, time, principal, zone, action, decision, body "
        "FROM events JOIN facets ON facets.id = events.facet "
        "WHERE leaf_index BETWEEN 3 AND 22 ORDER BY leaf_index"
    ).fetchall()
    con.close()
    assert [CanonicalEvent(*r[:6], bytes(r[6])) for r in rows] == batch
    assert [s.event for s in auditor(log.path).tail(100)[3:23]] == [e.event() for e in batch]
    assert verify_log(log.path, signer.verifier()).tree_size == 25


@settings(max_examples=15, deadline=None)
@given(batches=st.lists(st.integers(1, 130), min_size=1, max_size=4), layout_1=st.booleans())
def test_rows_inserted_many_to_a_statement_are_the_events_in_order(
    batches: list[int], layout_1: bool
) -> None:
    # Rows go in 50 to an INSERT and the rest one by one: every split must store each event's
    # canonical bytes, leaf hash and search columns at its own leaf index.
    signer = NoteSigner.generate("audit.test/rows")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "audit.db"
        if layout_1:
            make_layout_1(db)
        every = make_events(sum(batches))
        with AuditLog.open(db, signer=signer) as log:
            start = 0
            for n in batches:
                assert log.append_many(every[start : start + n]) == range(start, start + n)
                start += n
        con = sqlite3.connect(db)
        columns = (
            "SELECT leaf_index, event_id, time, principal, zone, action, decision, leaf_hash, "
            "body FROM events"
        )
        if not layout_1:
            columns += " JOIN facets ON facets.id = events.facet"
            (facets,) = con.execute("SELECT count(*) FROM facets").fetchone()
            distinct = {(e.data.principal, e.data.zone, e.data.action, e.data.decision)
                        for e in every}  # fmt: skip
            assert facets == len(distinct)
        rows = con.execute(columns + " ORDER BY leaf_index").fetchall()
        con.close()
        assert [r[0] for r in rows] == list(range(len(every)))
        for row, e in zip(rows, every, strict=True):
            body = canonical_json(e)
            d = e.data
            assert row[1:7] == (e.id, e.time, d.principal, d.zone, d.action, d.decision)
            assert (bytes(row[7]), bytes(row[8])) == (hashlib.sha256(b"\0" + body).digest(), body)
        found = auditor(db).search(principal="user-2", decision="allow", limit=1000)
        wanted = [i for i, e in enumerate(every)
                  if (e.data.principal, e.data.decision) == ("user-2", "allow")]  # fmt: skip
        assert [s.leaf_index for s in found] == wanted
        assert verify_log(db, signer.verifier()).tree_size == len(every)


@pytest.mark.parametrize("clash_at", [0, 75, 149])  # first statement, inside one, the tail
def test_a_repeated_id_in_a_big_batch_leaves_nothing_behind(
    log: AuditLog, signer: NoteSigner, clash_at: int
) -> None:
    # Rows go in 50 to an INSERT OR FAIL: the failing statement stops half-way and keeps the
    # rows before the clash, so the whole transaction must be rolled back.
    first = make_events(10)
    log.append_many(first)
    batch = make_events(150, start=100)
    batch[clash_at] = first[3]
    with pytest.raises(AuditEventRejected, match=r"same id is already in the log"):
        log.append_many(batch)
    assert len(auditor(log.path).tail(1000)) == 10
    assert log.append_many(make_events(150, start=100)) == range(10, 160)
    assert verify_log(log.path, signer.verifier()).tree_size == 160


def test_a_big_batch_needs_no_statement_journal(log: AuditLog) -> None:
    # With the default ABORT, SQLite journals each multi-row INSERT's pages to a temporary file
    # (named etilqs_*, deleted while open) so that it can undo that statement alone; OR FAIL
    # does not need one. Look for such a file among the open descriptors at commit time.
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc/self/fd")
    open_at_commit: set[str] = set()

    class Spy:
        def __init__(self, con: sqlite3.Connection) -> None:
            self.con = con

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql == "COMMIT":
                for fd in fds.iterdir():
                    with contextlib.suppress(OSError):
                        open_at_commit.add(os.readlink(fd))
            return self.con.execute(sql, *args)  # type: ignore[arg-type]

        def __getattr__(self, name: str) -> object:
            return getattr(self.con, name)

    log._con = Spy(log._con)  # type: ignore[assignment]
    log.append_many(make_events(1000))
    assert open_at_commit  # the spy saw the commit
    assert not [f for f in open_at_commit if "etilqs_" in f]


def test_facet_ids_are_kept_only_once_committed(log: AuditLog, signer: NoteSigner) -> None:
    first = make_events(3)
    log.append_many(first)
    new_facet = access_decision(
        principal="dora", action="read", resource="topic/x", zone="restricted",
        decision="allow", reason="ok", at=T0,
    )  # fmt: skip
    # A batch that adds a facet and then fails: the facet's row is rolled back with it ...
    with pytest.raises(AuditEventRejected):
        log.append_many([new_facet, first[0]])
    assert ("dora", "restricted", "read", "allow") not in log._facet_ids
    # ... so the next append adds it again rather than pointing at a row that is not there.
    log.append(new_facet)
    assert [s.event for s in auditor(log.path).search(principal="dora")] == [new_facet]
    assert verify_log(log.path, signer.verifier()).tree_size == 4


def test_facets_added_by_another_writer_are_found(db: Path, signer: NoteSigner) -> None:
    with AuditLog.open(db, signer=signer) as one, AuditLog.open(db, signer=signer) as two:
        one.append_many(make_events(6))  # user-0 ... and svc-* facets, cached by one
        two.append_many(make_events(6, start=6))  # the same facets, looked up by two
        one.append_many(make_events(6, start=12))
    con = sqlite3.connect(db)
    (facets,) = con.execute("SELECT count(*) FROM facets").fetchone()
    (distinct,) = con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT principal, zone, action, decision FROM facets)"
    ).fetchone()
    con.close()
    assert facets == distinct  # no facet stored twice
    assert verify_log(db, signer.verifier()).tree_size == 18
    found = auditor(db).search(principal="svc-1", limit=100)
    assert [s.event.data.principal for s in found] == ["svc-1"] * len(found)
    assert len(found) == sum(e.data.principal == "svc-1" for e in make_events(18))


def test_rows_numbered_other_than_the_leaves_are_refused(log: AuditLog, signer: NoteSigner) -> None:
    # Rows take SQLite's next rowid as their leaf index; the append checks that the last one
    # is the last new leaf. Make the transaction believe the tree is one leaf longer.
    log.append_many(make_events(5))
    checked = log._checked_state

    def one_more() -> tuple[CompactRange, str]:
        tree, head = checked()
        tree.append(bytes(32))
        return tree, head

    log._checked_state = one_more  # type: ignore[method-assign]
    with pytest.raises(AuditError, match=r"numbered up to 9, not 10; nothing was appended"):
        log.append_many(make_events(5, start=5))
    log._checked_state = checked  # type: ignore[method-assign]
    assert len(auditor(log.path).tail(100)) == 5
    assert verify_log(log.path, signer.verifier()).tree_size == 5
