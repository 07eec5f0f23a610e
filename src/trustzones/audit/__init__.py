"""The audit zone: every decision recorded in an append-only, tamper-evident log.

Events are CloudEvents 1.0 in RFC 8785 canonical JSON (:mod:`trustzones.audit.events`),
holding references and hashes only. The log (:mod:`trustzones.audit.log`) is its own SQLite
file, hashed into an RFC 9162 Merkle tree (:mod:`trustzones.audit.merkle`) whose heads are
signed as C2SP checkpoints with an Ed25519 key kept outside the audited zones
(:mod:`trustzones.audit.notes`).

Guarantees: an append is atomic and durable when it returns; appends from several threads
or processes are serialised by the database and never fork the log; events keep the order in
which appends committed. Nothing in this package updates or deletes an event. Readers need
the auditor role (checked through the ``authorize`` callback). ``verify_log`` recomputes
everything and names the first bad entry or checkpoint.
"""

from trustzones.audit._errors import AuditEventRejected, AuditKeyInvalid, LogTampered, ProofInvalid
from trustzones.audit._verify import VerifyReport, verify_log
from trustzones.audit.events import AuditData, AuditEvent, AuditSink, canonical_json, content_hash
from trustzones.audit.log import (
    AuditLog,
    AuditorCheck,
    AuditReader,
    InclusionProofBundle,
    StoredEvent,
    check_proof,
)
from trustzones.audit.notes import Checkpoint, NoteSigner, NoteVerifier

__all__ = [
    "AuditData",
    "AuditEvent",
    "AuditEventRejected",
    "AuditKeyInvalid",
    "AuditLog",
    "AuditReader",
    "AuditSink",
    "AuditorCheck",
    "Checkpoint",
    "InclusionProofBundle",
    "LogTampered",
    "NoteSigner",
    "NoteVerifier",
    "ProofInvalid",
    "StoredEvent",
    "VerifyReport",
    "canonical_json",
    "check_proof",
    "content_hash",
    "verify_log",
]
