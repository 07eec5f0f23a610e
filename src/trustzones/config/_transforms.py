"""Load-time validation of a flow's field transforms.

The transform models belong to the DLP part; config asks it whether a spec is valid so that a
bad transform is a load error with a line number, not a run-time surprise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from trustzones.dlp.transforms import parse_transform


def transform_problem(spec: Mapping[str, Any]) -> str | None:
    """``None`` when ``spec`` is a valid transform, else what is wrong with it."""
    from trustzones.config._checks import TRANSFORM_TYPES

    kind = spec.get("type") if isinstance(spec, Mapping) else None
    if kind not in TRANSFORM_TYPES:
        return f"unknown transform type {kind!r}."
    try:
        parse_transform(spec)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"][1:]) or "(spec)"
            parts.append(f"{loc}: {e['msg']}")
        return f"invalid {kind} transform: " + "; ".join(parts) + "."
    return None
