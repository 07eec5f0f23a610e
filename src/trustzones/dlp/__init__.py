"""Data loss prevention: find sensitive data in records and sanitise fields.

Detection (:mod:`.scanner`): :func:`scan_record` and :func:`scan_text` return
:class:`Finding` objects (type, JSON path, offsets, confidence; never the value).
Transforms (:mod:`.transforms`): :data:`TransformSpec` models configure ``mask``, ``hash``,
``tokenize``, ``encrypt_fpe``, ``generalize``, ``date_shift``, ``suppress`` and
``redact_text``; a :class:`Transformer` applies them with keys from a
:class:`TransformKeys` and a :class:`TokenVault`. :func:`redact_findings` is the ``redact``
action of a flow. :mod:`.synth` makes realistic synthetic records with labels.

Threading: scanners, transformers and vaults may be shared between threads. Findings come
in the order of the record's fields (a key before the values under it), then by offset.
"""

from trustzones.dlp.redact import redact_findings
from trustzones.dlp.scanner import (
    ENTITY_TYPES,
    EngineUnavailable,
    Finding,
    Scanner,
    default_scanner,
    hyperscan_available,
    native_available,
    scan_record,
    scan_text,
)
from trustzones.dlp.transforms import (
    SUPPRESSED,
    DateShiftSpec,
    EncryptFpeSpec,
    GeneralizeSpec,
    HashSpec,
    InMemoryKeys,
    MaskSpec,
    RedactTextSpec,
    SuppressSpec,
    TokenizeSpec,
    Transformer,
    TransformKeys,
    TransformPlan,
    TransformSpec,
    apply_transform,
    parse_transform,
)
from trustzones.dlp.vault import TokenVault, UnknownToken, VaultCipher, aesgcm_cipher

__all__ = [
    "ENTITY_TYPES",
    "SUPPRESSED",
    "DateShiftSpec",
    "EncryptFpeSpec",
    "EngineUnavailable",
    "Finding",
    "GeneralizeSpec",
    "HashSpec",
    "InMemoryKeys",
    "MaskSpec",
    "RedactTextSpec",
    "Scanner",
    "SuppressSpec",
    "TokenVault",
    "TokenizeSpec",
    "TransformKeys",
    "TransformPlan",
    "TransformSpec",
    "Transformer",
    "UnknownToken",
    "VaultCipher",
    "aesgcm_cipher",
    "apply_transform",
    "default_scanner",
    "hyperscan_available",
    "native_available",
    "parse_transform",
    "redact_findings",
    "scan_record",
    "scan_text",
]
