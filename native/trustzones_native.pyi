"""Type stubs of ``trustzones_native``, the optional Rust core of trustzones' DLP part.

Built from ``native/`` (``python -m pip install ./native``); ``trustzones`` uses it through
``trustzones.dlp._native`` and never needs it.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NoReturn

__version__: str

class Engine:
    """The native scanner core; built and used by ``trustzones.dlp.Scanner``."""

    def __init__(
        self,
        rules: list[tuple[str, str, str, str | None, bool, bool]],
        keywords: list[tuple[str, str]],
        near: list[tuple[str, str]],
        types: list[str],
        *,
        min_confidence: float,
        scan_keys: bool,
        finding: type,
        map_char: Callable[[int], str],
        normalize: Callable[[str], tuple[str, list[int] | None]],
        field_context: Callable[[str], frozenset[str]],
        dumps: Callable[[object], bytes],
    ) -> None: ...
    def scan_records(self, objs: Sequence[object]) -> list[list[tuple[object, ...]]]: ...
    def scan_record(self, obj: object) -> list[tuple[object, ...]]: ...
    def scan_text(self, text: str, ctx: Iterable[str]) -> list[tuple[object, ...]]: ...
    def detects(self, text: str) -> bool: ...

class FF1:
    """NIST SP 800-38G FF1 (the ``fpe`` crate on RustCrypto ``aes``)."""

    def __init__(self, key: bytes, radix: int) -> None: ...
    def encrypt_digits(self, text: str, tweak: bytes) -> str: ...
    def decrypt_digits(self, text: str, tweak: bytes) -> str: ...
    def encrypt_numerals(self, numerals: list[int], tweak: bytes) -> list[int]: ...
    def decrypt_numerals(self, numerals: list[int], tweak: bytes) -> list[int]: ...

class HmacSha256:
    """HMAC-SHA-256 with one key (keyed state computed once)."""

    def __init__(self, key: bytes) -> None: ...
    def digest(self, data: bytes) -> bytes: ...
    def hash_text(self, text: str, *, hex: bool, length: int | None, prefix: str) -> str: ...

class PlanExecutor:
    """``Transformer.apply_record`` for a plan whose paths are all object keys."""

    def __init__(
        self,
        steps: list[
            tuple[
                list[str],
                tuple[object, ...] | None,
                Callable[[object, object], object],
                Callable[[object], object] | None,
            ]
        ],
        suppressed: object,
        fail: Callable[[int, int, object], NoReturn],
    ) -> None: ...
    def apply(self, record: object) -> object: ...

class KeepWalker:
    """``KeepChecked`` of ``trustzones.flows._paths``: None for a record left to Python."""

    def __init__(self, allowed: Iterable[str], limit: int) -> None: ...
    def keep(
        self, doc: object, problem: Callable[[str], str | None], answers: dict[str, bool]
    ) -> tuple[object, bool] | None: ...

class PlainMarker:
    """The plain paths of ``Watermarker.mark``: False for a record left to Python."""

    def __init__(self, key: bytes, paths: list[list[str]]) -> None: ...
    def mark(self, doc: object) -> bool: ...

def mask_ascii(
    text: str, *, keep_first: int, keep_last: int, char: str, keep_separators: bool
) -> str | None: ...
def float_text(x: float) -> str | None: ...

def preserving_token(value: str, keep_last: int, min_random: int, random: bytes) -> str | None:
    """A format-preserving vault token for an ASCII value (see ``native/src/tokens.rs``);
    None when the value is not ASCII, has too few random positions, or ``random`` runs out."""

def pack_headers(headers: object) -> bytes | None:
    """A record's header block as ``trustzones.streams._embedded._pack_headers`` packs it
    (see ``native/src/records.rs``); None for what it leaves to Python."""

# The audit log's hot paths (``native/src/audit.rs``; used through ``trustzones.audit._native``).
def audit_rows(
    events: list[object],
    canonical_type: type,
    event_type: type,
    data_type: type,
    facet_ids: dict[object, int],
    with_facets: bool,
) -> tuple[list[object], bool] | None:
    """The values ``AuditLog.append_many`` inserts for ``events`` (see ``audit.log._rows``);
    None when an event is not plainly an ``AuditEvent`` or a ``CanonicalEvent``."""

def compact_extend(
    hashes: list[bytes], size: int, leaves: list[object], min_level: int
) -> tuple[list[bytes], list[tuple[int, int, bytes]]] | None:
    """``CompactRange.extend``: the new frontier and the completed subtrees; None when a hash
    is not 32 bytes of bytes or bytearray."""

def flow_events(
    records: list[object],
    shell_for: Callable[[object, object, bool], tuple[bytes, ...] | None],
    canonical_type: type,
    principal: str,
    zone: str,
    action: str,
    when: str | None,
    clock: Callable[[], int],
    second_prefix: Callable[[int], str],
    random: bytes,
) -> list[object]:
    """``flow_transfers``' loop: an event per record, or None for a record left to Python."""
