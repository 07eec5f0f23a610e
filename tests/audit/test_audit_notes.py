"""Signed notes and checkpoints (C2SP signed-note, tlog-checkpoint).

The official vector is the example of Go's golang.org/x/mod/sumdb/note (also the reference
for the C2SP signed-note spec): its signer key, verifier key, text and signature. Ed25519 is
deterministic, so our signature must reproduce it byte for byte.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.audit import (
    AuditKeyInvalid,
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    ProofInvalid,
    notes,
)
from trustzones.audit.notes import write_key_files

GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_go_note_vector_signs_byte_for_byte() -> None:
    signer = NoteSigner.from_key_string(GO_SIGNER)
    assert signer.sign(GO_TEXT) == GO_NOTE
    assert signer.verifier().key_string == GO_VERIFIER
    assert signer.private_key_string() == GO_SIGNER
    assert f"{signer.key_id:08x}" == "c74f20a3"


def test_go_note_vector_verifies_and_rejects_changes() -> None:
    verifier = NoteVerifier.from_key_string(GO_VERIFIER)
    assert verifier.open(GO_NOTE) == GO_TEXT
    with pytest.raises(ProofInvalid, match=r"does not verify"):
        verifier.open(GO_NOTE.replace("cryptography", "cryptographY"))
    sig = GO_NOTE.rsplit(" ", 1)[1]
    raw = bytearray(base64.b64decode(sig))
    raw[10] ^= 1
    with pytest.raises(ProofInvalid, match=r"does not verify"):
        verifier.open(GO_NOTE.replace(sig, base64.b64encode(bytes(raw)).decode() + "\n"))


def test_signatures_by_unknown_keys_are_ignored_but_one_known_is_needed() -> None:
    ours = NoteSigner.generate("audit.test/log")
    other = NoteSigner.generate("witness.test/w1")
    note = ours.sign("audit.test/log\n1\n" + base64.b64encode(bytes(32)).decode() + "\n")
    cosigned = note + other.sign(note.split("\n\n")[0] + "\n").split("\n\n")[1]
    assert ours.verifier().open(cosigned).startswith("audit.test/log\n")
    with pytest.raises(ProofInvalid, match=r"no signature by the key"):
        other.verifier().open(note)
    # Same name, different key (an attacker's): its signature line is not ours, so ignored.
    impostor = NoteSigner.generate("audit.test/log")
    with pytest.raises(ProofInvalid, match=r"no signature by the key"):
        ours.verifier().open(impostor.sign("audit.test/log\n1\n" + "A" * 43 + "=\n"))


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("no blank line\n— a AAAA\n", "no blank line"),
        ("text\n\n", "no signature lines"),
        ("text\n\n- a AAAA\n", "malformed signature line"),
        ("text\n\n— a !!!!\n", "not base64"),
        ("text\x07\n\n— a AAAA\n", "control characters"),
        ("text\n\n— a AAAA", "control characters or no final newline"),
    ],
)
def test_malformed_notes_are_rejected(note: str, message: str) -> None:
    verifier = NoteVerifier.from_key_string(GO_VERIFIER)
    with pytest.raises(ProofInvalid, match=message):
        verifier.open(note)


def test_checkpoint_text_round_trip_and_signature() -> None:
    signer = NoteSigner.generate("audit.test/log")
    cp = Checkpoint("audit.test/log", 20852163, bytes(range(32)))
    assert cp.text() == (
        "audit.test/log\n20852163\n" + base64.b64encode(bytes(range(32))).decode() + "\n"
    )
    assert Checkpoint.parse(cp.text()) == cp
    assert Checkpoint.open(signer.sign(cp.text()), signer.verifier()) == cp
    # Extension lines are allowed and ignored.
    assert Checkpoint.parse(cp.text() + "extension\n") == cp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("log\n12\n", "needs origin, size and root"),
        ("log\n012\n" + "A" * 43 + "=\n", "not a decimal number"),
        ("log\n-1\n" + "A" * 43 + "=\n", "not a decimal number"),
        ("log\n12\n" + "A" * 42 + "==\n", "not 32 bytes"),
        ("log\n12\n%%%\n", "not base64"),
        ("log\n\n12\n" + "A" * 43 + "=\n", "needs origin, size and root"),
    ],
)
def test_malformed_checkpoints_are_rejected(text: str, message: str) -> None:
    with pytest.raises(ProofInvalid, match=message):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "was altered"),
        ("PeterNeumann+c74f20a3+AhpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "malformed"),
        ("PeterNeumann+c74f20a3+AhpczQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type 0x01"),
        ("PeterNeumann", "has the form"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "not valid"),
    ],
)
def test_bad_verifier_keys_are_rejected(key: str, message: str) -> None:
    with pytest.raises(AuditKeyInvalid, match=message):
        NoteVerifier.from_key_string(key)


def test_bad_signer_keys_are_rejected() -> None:
    with pytest.raises(AuditKeyInvalid, match=r"has the form"):
        NoteSigner.from_key_string(GO_VERIFIER)
    with pytest.raises(AuditKeyInvalid, match=r"does not match its key"):
        NoteSigner.from_key_string(GO_SIGNER.replace("c74f20a3", "c74f20a4"))


def test_key_files(tmp_path: Path) -> None:
    signer = NoteSigner.generate("audit.test/log")
    key, pub = tmp_path / "audit.key", tmp_path / "audit.pub"
    write_key_files(signer, key, pub)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert NoteSigner.from_file(key).private_key_string() == signer.private_key_string()
    assert NoteVerifier.from_file(pub).key_string == signer.verifier().key_string
    with pytest.raises(AuditKeyInvalid, match=r"refusing to overwrite"):
        write_key_files(NoteSigner.generate("audit.test/log"), key, pub)
    os.chmod(key, 0o640)
    with pytest.raises(AuditKeyInvalid, match=r"chmod 600"):
        NoteSigner.from_file(key)
    with pytest.raises(AuditKeyInvalid, match=r"cannot read"):
        NoteSigner.from_file(tmp_path / "missing.key")
    assert "PRIVATE" not in repr(signer)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40) | st.text(max_size=40))
def test_the_control_character_scan_is_the_character_by_character_rule(text: str) -> None:
    # Notes may hold no character below U+0020 but the newline; the scan is a regex in C.
    expected = any(c < " " and c != "\n" for c in text)
    assert (notes._CONTROL.search(text) is not None) == expected
    if expected:
        with pytest.raises(ValueError, match=r"control characters"):
            notes._check_text(text + "\n")
        with pytest.raises(ProofInvalid, match=r"control characters"):
            notes._split_note(text + "\n")
    else:
        notes._check_text(text + "\n")
        refusal = ""
        try:
            notes._split_note(text + "\n")
        except ProofInvalid as exc:  # refused, if at all, for another reason
            refusal = str(exc)
        assert "control characters" not in refusal
