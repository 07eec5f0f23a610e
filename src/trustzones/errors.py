"""The exceptions trustzones raises.

Every error the library raises on purpose derives from :class:`TrustzonesError`, and its
message says what happened and what to do next. The CLI catches ``TrustzonesError`` in one
place, prints the message and exits 1.

Each part defines its own subclasses next to its code and re-exports them here when they
are part of the public API. The tree::

    TrustzonesError
    ├── ConfigError            trustzones.yaml (or another input file) is invalid
    ├── AccessDenied           a principal may not do what it asked (deny by default)
    ├── AuthenticationFailed   credentials were missing or wrong
    ├── RecordRejected         a record was refused back to its producer (schema, size, ...)
    ├── StreamError            a backend failed
    │   ├── UnknownTopic
    │   └── TransactionAborted
    ├── KeyAccessDenied        a key was requested for a zone the caller may not use
    ├── DecryptionFailed       one opaque error for every decryption failure
    ├── TransformError         a field transform could not apply (fails closed)
    ├── AuditError
    │   └── AuditVerificationFailed
    └── FlowError
        └── ApprovalRequired
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ApprovalRequired",
    "AuditError",
    "AuditVerificationFailed",
    "AuthenticationFailed",
    "ConfigError",
    "DecryptionFailed",
    "FlowError",
    "KeyAccessDenied",
    "RecordRejected",
    "StreamError",
    "TransactionAborted",
    "TransformError",
    "TrustzonesError",
    "UnknownTopic",
]


class TrustzonesError(Exception):
    """Base class of every error trustzones raises on purpose."""


class ConfigError(TrustzonesError):
    """A configuration file is invalid. ``issues`` lists every problem found, not just the first."""

    def __init__(self, message: str, issues: list[str] | None = None) -> None:
        self.issues = issues or []
        super().__init__(message)


class AccessDenied(TrustzonesError):
    """The principal may not perform the action. The reason is safe to show to the caller."""


class AuthenticationFailed(TrustzonesError):
    """Credentials were missing or did not verify. Deliberately vague about which part failed."""


class RecordRejected(TrustzonesError):
    """A record was refused and returned to its producer; nothing was written.

    ``index`` is the 0-based position of the record in the batch, ``path`` the JSON path of
    the offending field (``""`` for the whole record) and ``reason`` what was wrong.
    """

    def __init__(self, reason: str, *, index: int | None = None, path: str = "") -> None:
        self.reason = reason
        self.index = index
        self.path = path
        where = []
        if index is not None:
            where.append(f"record {index}")
        if path:
            where.append(f"field {path}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{reason}")


class StreamError(TrustzonesError):
    """A streaming backend failed."""


class UnknownTopic(StreamError):
    """The topic does not exist in this zone."""


class TransactionAborted(StreamError):
    """A transaction was rolled back; nothing it wrote is visible."""


class KeyAccessDenied(TrustzonesError):
    """A key of a zone was requested by a caller acting for a zone that may not hold it."""


class DecryptionFailed(TrustzonesError):
    """Decryption or authentication failed. One opaque error: the detailed reason is audited."""


class TransformError(TrustzonesError):
    """A field transform could not be applied; the record is refused (fail closed)."""


class AuditError(TrustzonesError):
    """The audit log could not be written or read."""


class AuditVerificationFailed(AuditError):
    """The audit log or a proof failed verification; the message names the first bad entry."""


class FlowError(TrustzonesError):
    """A flow could not run."""


class ApprovalRequired(FlowError):
    """An action needs approvals it does not have yet; the message says who must approve what."""
