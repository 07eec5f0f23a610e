"""The audit log's use of the optional native core ``trustzones_native`` (``native/src/audit.rs``).

``native`` is the module when it imports and has the audit functions (a build from before
them does not), else ``None``; the audit code reads it at each call, so the tests can set it to
``None`` to compare the two paths. The Python code is the reference: every native function
returns ``None`` for what it does not handle, and the caller then takes its Python path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, cast

__all__ = ["AuditNative", "native"]


class AuditNative(Protocol):
    """What the audit log uses of ``trustzones_native``."""

    def audit_rows(
        self,
        events: list[Any],
        canonical_type: type,
        event_type: type,
        data_type: type,
        facet_ids: dict[Any, int],
        with_facets: bool,
    ) -> tuple[list[Any], bool] | None: ...

    def compact_extend(
        self, hashes: list[bytes], size: int, leaves: list[Any], min_level: int
    ) -> tuple[list[bytes], list[tuple[int, int, bytes]]] | None: ...

    def flow_events(
        self,
        records: list[Any],
        shell_for: Callable[[Any, Any, bool], tuple[bytes, ...] | None],
        canonical_type: type,
        principal: str,
        zone: str,
        action: str,
        when: str | None,
        clock: Callable[[], int],
        second_prefix: Callable[[int], str],
        random: bytes,
    ) -> list[Any]: ...


def _load() -> AuditNative | None:
    try:
        module = importlib.import_module("trustzones_native")
    except ImportError:
        return None
    if not all(hasattr(module, f) for f in ("audit_rows", "compact_extend", "flow_events")):
        return None
    return cast("AuditNative", module)


native: AuditNative | None = _load()
