"""The audit part's errors (all under ``trustzones.errors.AuditError``)::

AuditError
├── AuditEventRejected        an event broke the contract (sensitive value, bad field)
├── AuditKeyInvalid           a note key file or key string is malformed or unsafe
└── AuditVerificationFailed
    ├── LogTampered           the stored log does not verify; names the first bad entry
    └── ProofInvalid          a proof, note or checkpoint does not verify
"""

from __future__ import annotations

from trustzones.errors import AuditError, AuditVerificationFailed

__all__ = [
    "AuditEventRejected",
    "AuditKeyInvalid",
    "LogTampered",
    "ProofInvalid",
]


class AuditEventRejected(AuditError):
    """An audit event was refused before it was written: a field broke the event contract.

    The message names the field and the rule, never the offending value.
    """


class AuditKeyInvalid(AuditError):
    """A signing or verifier key (file or string) is malformed, mismatched or unsafe."""


class LogTampered(AuditVerificationFailed):
    """The stored audit log does not verify.

    ``leaf_index`` and ``event_id`` name the first bad entry when it can be pinned down;
    ``checkpoint`` names the first signed tree head that the stored events contradict
    (``"head"`` for the signed head of the whole log, else the checkpoint's sequence number).
    """

    def __init__(
        self,
        message: str,
        *,
        leaf_index: int | None = None,
        event_id: str | None = None,
        checkpoint: int | str | None = None,
    ) -> None:
        self.leaf_index = leaf_index
        self.event_id = event_id
        self.checkpoint = checkpoint
        super().__init__(message)


class ProofInvalid(AuditVerificationFailed):
    """A signed note, checkpoint, inclusion or consistency proof does not verify."""
