"""Tests that try to cheat: tamper with the audit database using plain sqlite3, as anyone who
can write the file could, and check that ``verify_log`` catches it and names where.

The log holds 600 events appended 50 at a time with a checkpoint every 100 entries, so it has
checkpoints 1..6 at sizes 100..600, saved subtree hashes for [0, 256), [256, 512) and [0, 512),
and a signed head at 600. Every case runs on both layouts of the ``events`` table: with
``facets`` (new logs) and with the search columns in ``events`` (logs of schema "1").
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from audit_helpers import insert_row, make_events, make_layout_1, raw

from trustzones.audit import AuditLog, LogTampered, NoteSigner, canonical_json, verify_log
from trustzones.audit.merkle import CompactRange
from trustzones.audit.notes import Checkpoint
from trustzones.errors import AuditError, AuditVerificationFailed


@pytest.fixture(params=["facets", "layout-1"])
def full(request: pytest.FixtureRequest, db: Path, signer: NoteSigner) -> Path:
    if request.param == "layout-1":
        make_layout_1(db)
    with AuditLog.open(db, signer=signer, checkpoint_interval=100) as log:
        events = make_events(600)
        for i in range(0, 600, 50):
            log.append_many(events[i : i + 50])
    assert verify_log(db, signer.verifier()).checkpoints == 6
    return db


def caught(db: Path, signer: NoteSigner, match: str) -> LogTampered:
    with pytest.raises(LogTampered, match=match) as info:
        verify_log(db, signer.verifier())
    assert isinstance(info.value, AuditVerificationFailed)
    return info.value


def body(con: sqlite3.Connection, index: int) -> bytes:
    return bytes(
        con.execute("SELECT body FROM events WHERE leaf_index = ?", (index,)).fetchone()[0]
    )


def event_id(con: sqlite3.Connection, index: int) -> str:
    return str(
        con.execute("SELECT event_id FROM events WHERE leaf_index = ?", (index,)).fetchone()[0]
    )


def frontier_of(con: sqlite3.Connection, size: int) -> CompactRange:
    tree = CompactRange()
    for (b,) in con.execute(
        "SELECT body FROM events WHERE leaf_index < ? ORDER BY leaf_index", (size,)
    ):
        tree.append(hashlib.sha256(b"\x00" + bytes(b)).digest())
    return tree


# -- change one byte ---------------------------------------------------------------------------


def test_one_changed_byte_is_named(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    old = body(con, 137)
    new = old.replace(b'"offset":137', b'"offset":138')
    assert len(new) == len(old) and new != old
    con.execute("UPDATE events SET body = ? WHERE leaf_index = 137", (new,))
    exc = caught(full, signer, r"entry 137 \(event id .*\) was changed")
    assert (exc.leaf_index, exc.event_id) == (137, event_id(con, 137))


def test_one_changed_byte_with_a_recomputed_leaf_hash_is_caught_by_the_signed_roots(
    full: Path, signer: NoteSigner
) -> None:
    con = raw(full)
    old = body(con, 137)
    new = old.replace(b'"offset":137', b'"offset":138')
    con.execute(
        "UPDATE events SET body = ?, leaf_hash = ? WHERE leaf_index = 137",
        (new, hashlib.sha256(b"\x00" + new).digest()),
    )
    exc = caught(full, signer, r"checkpoint 2 \(tree size 200\) does not match .* 100 to 199")
    assert exc.checkpoint == 2 and exc.leaf_index == 100


def has_facets(con: sqlite3.Connection) -> bool:
    return "facet" in {r[1] for r in con.execute("PRAGMA table_info(events)")}


def test_a_changed_search_column_is_named(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    if has_facets(con):  # point the entry at another facet (one with another principal)
        con.execute(
            "UPDATE events SET facet = (SELECT f.id FROM facets AS f, facets AS mine "
            "WHERE mine.id = events.facet AND f.principal != mine.principal LIMIT 1) "
            "WHERE leaf_index = 33"
        )
    else:
        con.execute("UPDATE events SET principal = 'someone-else' WHERE leaf_index = 33")
    exc = caught(full, signer, r"entry 33 .* search columns or body were changed")
    assert exc.leaf_index == 33


@pytest.mark.parametrize("full", ["facets"], indirect=True)  # layout 1 has no facets
def test_a_changed_facet_is_named_at_its_first_entry(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    assert has_facets(con)
    (facet,) = con.execute("SELECT facet FROM events WHERE leaf_index = 33").fetchone()
    (first,) = con.execute(
        "SELECT min(leaf_index) FROM events WHERE facet = ?", (facet,)
    ).fetchone()
    con.execute("UPDATE facets SET principal = 'someone-else' WHERE id = ?", (facet,))
    exc = caught(full, signer, rf"entry {first} .* search columns or body were changed")
    assert exc.leaf_index == first


@pytest.mark.parametrize("full", ["facets"], indirect=True)
def test_a_removed_facet_or_facets_table_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    assert has_facets(con)
    (facet,) = con.execute("SELECT facet FROM events WHERE leaf_index = 0").fetchone()
    con.execute("DELETE FROM facets WHERE id = ?", (facet,))
    exc = caught(full, signer, r"entry 0 .* search columns or body were changed")
    assert exc.leaf_index == 0
    con.execute("DROP TABLE facets")
    caught(full, signer, r"the search columns cannot be read \(no such table: facets\)")


@pytest.mark.parametrize("full", ["layout-1"], indirect=True)  # facets: covered above
def test_search_columns_dropped_from_a_layout_1_log_are_caught(
    full: Path, signer: NoteSigner
) -> None:
    con = raw(full)
    assert not has_facets(con)
    con.execute("ALTER TABLE events DROP COLUMN principal")
    caught(full, signer, r"the search columns cannot be read")


# -- delete one --------------------------------------------------------------------------------


def test_a_deleted_entry_is_named(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("DELETE FROM events WHERE leaf_index = 50")
    exc = caught(full, signer, "entry 50 is missing")
    assert exc.leaf_index == 50


def test_a_deleted_entry_with_the_rest_renumbered_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("DELETE FROM events WHERE leaf_index = 250")
    con.execute("UPDATE events SET leaf_index = leaf_index - 1 WHERE leaf_index > 250")
    # The saved hash of subtree [0, 256) completes before checkpoint 3 (at 300) is reached.
    exc = caught(full, signer, "entries 200 to 255 do not match the subtree hash saved")
    assert exc.leaf_index == 200


# -- swap two ----------------------------------------------------------------------------------


def test_two_swapped_entries_are_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("UPDATE events SET leaf_index = -1 WHERE leaf_index = 310")
    con.execute("UPDATE events SET leaf_index = 310 WHERE leaf_index = 320")
    con.execute("UPDATE events SET leaf_index = 320 WHERE leaf_index = -1")
    exc = caught(full, signer, r"checkpoint 4 \(tree size 400\) does not match .* 300 to 399")
    assert exc.checkpoint == 4 and exc.leaf_index == 300


def test_two_swapped_entries_inside_a_saved_subtree_are_narrowed_down(
    db: Path, signer: NoteSigner
) -> None:
    # Without a checkpoint in between, the saved subtree hash of [256, 512) narrows it down.
    with AuditLog.open(db, signer=signer, checkpoint_interval=10_000) as log:
        log.append_many(make_events(600))
    con = raw(db)
    con.execute("UPDATE events SET leaf_index = -1 WHERE leaf_index = 300")
    con.execute("UPDATE events SET leaf_index = 300 WHERE leaf_index = 301")
    con.execute("UPDATE events SET leaf_index = 301 WHERE leaf_index = -1")
    exc = caught(db, signer, "entries 256 to 511 do not match the subtree hash saved")
    assert exc.leaf_index == 256


# -- truncate the tail ---------------------------------------------------------------------------


def test_a_truncated_tail_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("DELETE FROM events WHERE leaf_index >= 590")
    exc = caught(full, signer, "entries 590 to 599 are missing.*truncated")
    assert exc.leaf_index == 590


def test_a_truncated_tail_with_an_older_head_put_back_is_caught_by_later_checkpoints(
    full: Path, signer: NoteSigner
) -> None:
    con = raw(full)
    (note,) = con.execute("SELECT note FROM checkpoints WHERE tree_size = 500").fetchone()
    con.execute("DELETE FROM events WHERE leaf_index >= 500")
    tree = frontier_of(con, 500)
    con.execute(
        "UPDATE state SET tree_size = 500, frontier = ?, head = ?", (b"".join(tree.hashes), note)
    )
    exc = caught(full, signer, r"checkpoint 6 \(tree size 600\) .* beyond the signed head")
    assert exc.checkpoint == 6


def test_a_complete_rollback_needs_a_published_checkpoint(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    (published,) = con.execute("SELECT head FROM state").fetchone()
    (note,) = con.execute("SELECT note FROM checkpoints WHERE tree_size = 500").fetchone()
    con.execute("DELETE FROM events WHERE leaf_index >= 500")
    con.execute("DELETE FROM checkpoints WHERE tree_size > 500")
    con.execute("DELETE FROM nodes WHERE (idx + 1) << level > 500")
    tree = frontier_of(con, 500)
    con.execute(
        "UPDATE state SET tree_size = 500, frontier = ?, head = ?", (b"".join(tree.hashes), note)
    )
    # The file is now exactly what it was at 500 entries: nothing inside it can tell ...
    assert verify_log(full, signer.verifier()).tree_size == 500
    # ... but a checkpoint published earlier can.
    with pytest.raises(LogTampered, match=r"has 500 entries but a trusted checkpoint covers 600"):
        verify_log(full, signer.verifier(), trusted=[published])


# -- append a forged event -----------------------------------------------------------------------


def forge(con: sqlite3.Connection, index: int) -> str:
    """Insert a well-formed event nobody appended as entry ``index``; return its id."""
    e = make_events(1, start=10_000)[0]
    insert_row(con, index, e, canonical_json(e))
    return e.id


def test_a_forged_event_appended_at_the_end_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    forged = forge(con, 600)
    exc = caught(full, signer, r"entry 600 \(event id .*\) is not covered by the signed head")
    assert (exc.leaf_index, exc.event_id) == (600, forged)


def test_a_forged_event_with_an_updated_tree_state_is_caught(
    full: Path, signer: NoteSigner
) -> None:
    con = raw(full)
    forge(con, 600)
    tree = frontier_of(con, 601)
    con.execute("UPDATE state SET tree_size = 601, frontier = ?", (b"".join(tree.hashes),))
    exc = caught(full, signer, "stored tree state does not match the signed head")
    assert exc.checkpoint == "head"
    # The forger cannot sign a head: one signed with another key of the same name fails.
    forger = NoteSigner.generate(signer.name)
    con.execute(
        "UPDATE state SET head = ?",
        (forger.sign(Checkpoint(signer.name, 601, tree.root()).text()),),
    )
    caught(full, signer, "signed head: the note carries no signature by the key")


def test_a_forged_event_in_the_middle_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("UPDATE events SET leaf_index = -leaf_index - 1 WHERE leaf_index >= 420")
    con.execute("UPDATE events SET leaf_index = -leaf_index WHERE leaf_index < 0")
    forge(con, 420)
    exc = caught(full, signer, r"checkpoint 5 \(tree size 500\) does not match .* 400 to 499")
    assert exc.checkpoint == 5


# -- replace a checkpoint ------------------------------------------------------------------------


def test_a_checkpoint_signed_by_another_key_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    forger = NoteSigner.generate(signer.name)
    fake = forger.sign(Checkpoint(signer.name, 300, bytes(32)).text())
    con.execute("UPDATE checkpoints SET note = ? WHERE seq = 3", (fake,))
    exc = caught(full, signer, "checkpoint 3: the note carries no signature by the key")
    assert exc.checkpoint == 3


def test_a_checkpoint_with_an_edited_root_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    (note,) = con.execute("SELECT note FROM checkpoints WHERE seq = 3").fetchone()
    lines = note.split("\n")
    lines[2] = "A" * 43 + "="
    con.execute("UPDATE checkpoints SET note = ? WHERE seq = 3", ("\n".join(lines),))
    caught(full, signer, "checkpoint 3: the note's signature .* does not verify")


def test_a_checkpoint_replaced_by_another_genuine_one_is_caught(
    full: Path, signer: NoteSigner
) -> None:
    con = raw(full)
    (note,) = con.execute("SELECT note FROM checkpoints WHERE seq = 2").fetchone()
    con.execute("UPDATE checkpoints SET note = ? WHERE seq = 3", (note,))
    caught(full, signer, "checkpoint 3 is a checkpoint of another log or size")
    # Made consistent again, this only deletes checkpoint 3: every remaining signed statement
    # is still true, and the head still covers every entry, so the log verifies. (Removing
    # checkpoints loses history, not evidence; publish checkpoints to keep them.)
    con.execute("DELETE FROM checkpoints WHERE seq = 2")
    con.execute("UPDATE checkpoints SET tree_size = 200 WHERE seq = 3")
    assert verify_log(full, signer.verifier()).checkpoints == 5


def test_the_head_replaced_by_an_older_checkpoint_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    (note,) = con.execute("SELECT note FROM checkpoints WHERE seq = 5").fetchone()
    con.execute("UPDATE state SET head = ?", (note,))
    caught(full, signer, "stored tree state does not match the signed head")


def test_checkpoints_out_of_order_are_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("UPDATE checkpoints SET seq = 99 WHERE seq = 1")
    caught(full, signer, r"checkpoint 99 \(tree size 100\) is out of order")


# -- the saved subtree hashes --------------------------------------------------------------------


def test_a_changed_or_missing_subtree_hash_is_caught(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    con.execute("UPDATE nodes SET hash = ? WHERE level = 8 AND idx = 1", (bytes(32),))
    caught(full, signer, "entries 500 to 511 do not match the subtree hash saved")
    con.execute("DELETE FROM nodes WHERE level = 8 AND idx = 1")
    caught(full, signer, "entries 500 to 511 do not match the subtree hash saved")


def test_a_subtree_hash_for_entries_that_do_not_exist_is_caught(
    full: Path, signer: NoteSigner
) -> None:
    con = raw(full)
    con.execute("INSERT INTO nodes VALUES (8, 5, ?)", (bytes(32),))
    caught(full, signer, "saved subtree hash .* covers entries that do not exist")


# -- a tampered log is not extended ----------------------------------------------------------------


def test_appending_to_a_tampered_log_is_refused(full: Path, signer: NoteSigner) -> None:
    con = raw(full)
    (note,) = con.execute("SELECT note FROM checkpoints WHERE seq = 5").fetchone()
    con.execute("UPDATE state SET head = ?", (note,))
    with (
        AuditLog.open(full, signer=signer) as log,
        pytest.raises(AuditError, match=r"refusing to append.*does not match the signed head"),
    ):
        log.append(make_events(1, start=9000)[0])


def test_a_corrupt_database_file_is_reported(full: Path, signer: NoteSigner) -> None:
    data = bytearray(full.read_bytes())
    data[100:4096] = bytes(3996)
    full.write_bytes(bytes(data))
    with pytest.raises((LogTampered, AuditError)):
        verify_log(full, signer.verifier())


# -- a log of several verification chunks (8,192 entries each) ------------------------------------

BIG = 20_000


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NoteSigner]:
    signer = NoteSigner.generate("audit.test/big")
    db = tmp_path_factory.mktemp("big") / "audit.db"
    with AuditLog.open(db, signer=signer, checkpoint_interval=1000) as log:
        events = make_events(BIG)
        for i in range(0, BIG, 700):  # batches that straddle checkpoints and chunks
            log.append_many(events[i : i + 700])
    return db, signer


@pytest.fixture
def big(big_log: tuple[Path, NoteSigner], tmp_path: Path) -> Path:
    copy = tmp_path / "audit.db"
    copy.write_bytes(big_log[0].read_bytes())
    return copy


def test_a_log_of_several_chunks_verifies(big_log: tuple[Path, NoteSigner]) -> None:
    db, signer = big_log
    report = verify_log(db, signer.verifier())
    assert (report.tree_size, report.checkpoints) == (BIG, 20)


@pytest.mark.parametrize("position", [0, 5, 8191, 8192, 12_000, 16_383, 16_384, 19_999])
def test_changes_anywhere_in_a_large_log_are_located(
    big: Path, big_log: tuple[Path, NoteSigner], position: int
) -> None:
    signer = big_log[1]
    con = raw(big)
    old = body(con, position)
    new = old.replace(b'"time":"2026', b'"time":"2025')
    assert new != old
    # The naive edit is named exactly ...
    con.execute("UPDATE events SET body = ? WHERE leaf_index = ?", (new, position))
    exc = caught(big, signer, rf"entry {position} \(event id .*\) was changed")
    assert exc.leaf_index == position
    # ... and with the leaf hash and the time column fixed up, the signed roots and saved
    # subtree hashes still catch it, naming a range that holds the changed entry.
    con.execute(
        "UPDATE events SET leaf_hash = ?, time = ? WHERE leaf_index = ?",
        (hashlib.sha256(b"\x00" + new).digest(), new.split(b'"time":"')[1][:27].decode(), position),
    )
    exc = caught(big, signer, "do(es)? not match")
    start = exc.leaf_index
    assert start is not None and start <= position
    message = str(exc)
    end = int(message.split(" to ")[1].split()[0])
    assert position <= end
    assert end - start < 1400  # within one gap between checkpoints, or one saved subtree
