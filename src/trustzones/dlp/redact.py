"""Redact findings inside a record: the ``redact`` DLP action of a flow.

>>> from trustzones.dlp import redact_findings, scan_record
>>> record = {"note": "card 4111 1111 1111 1111, thanks", "n": 4111111111111111}
>>> redact_findings(record, scan_record(record))
{'note': 'card [CREDIT_CARD], thanks', 'n': '[CREDIT_CARD]'}
>>> redact_findings(record, scan_record(record), style="mask")["note"]
'card **** **** **** ****, thanks'

The record is not modified; containers on the way to a finding are copied. A number with a
finding becomes a string. A finding in an object key renames the key (``{#n}`` in the
finding's path is the key's position).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from trustzones.dlp._paths import parse_path
from trustzones.dlp.scanner import Finding
from trustzones.dlp.transforms import redact_spans
from trustzones.errors import TransformError

__all__ = ["RedactStyle", "redact_findings"]

RedactStyle = Literal["type", "mask"]


def _text_of(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TransformError(f"redact at {path or '<value>'}: the finding points at a non-text value")


def redact_findings(
    obj: object,
    findings: Iterable[Finding],
    *,
    style: RedactStyle = "type",
    mask_char: str = "*",
) -> object:
    """A copy of ``obj`` with every finding replaced by ``[TYPE]`` or masked.

    Raises :class:`~trustzones.errors.TransformError` when a finding does not fit the record
    (fail closed: a redaction that cannot be placed is not silently skipped).
    """
    by_path: dict[tuple[str, bool], list[tuple[int, int, str]]] = {}
    for f in findings:
        by_path.setdefault((f.path, f.in_key), []).append((f.start, f.end, f.type))
    result = obj
    # Values first, then keys, so that renaming a key never moves a value we still need.
    for (path, in_key), spans in sorted(by_path.items(), key=lambda kv: kv[0][1]):
        try:
            segs = parse_path(path)
        except ValueError as exc:
            raise TransformError(f"redact: {exc}") from None
        result = _redact_at(result, segs, 0, spans, in_key, path, style, mask_char)
    return result


def _redact_at(
    node: object,
    segs: list[tuple[str, str | int]],
    i: int,
    spans: list[tuple[int, int, str]],
    in_key: bool,
    path: str,
    style: RedactStyle,
    mask_char: str,
) -> object:
    def fail(why: str) -> TransformError:
        return TransformError(f"redact at {path or '<value>'}: {why}")

    def redact(text: str) -> str:
        if any(s < 0 or e > len(text) or s >= e for s, e, _ in spans):
            raise fail("the finding's offsets do not fit the field")
        return redact_spans(text, spans, style=style, mask_char=mask_char)

    if i == len(segs):
        if in_key:
            raise fail("a key finding needs a path that ends at the key")
        return redact(_text_of(node, path))
    kind, arg = segs[i]
    last = i == len(segs) - 1
    if kind == "index":
        if not isinstance(node, list) or not isinstance(arg, int) or arg >= len(node):
            raise fail("the path does not exist in the record")
        copy = list(node)
        copy[arg] = _redact_at(node[arg], segs, i + 1, spans, in_key, path, style, mask_char)
        return copy
    if not isinstance(node, dict):
        raise fail("the path does not exist in the record")
    keys = list(node)
    if kind == "pos":
        if not isinstance(arg, int) or arg >= len(keys):
            raise fail("the path does not exist in the record")
        key = keys[arg]
    else:
        key = arg
        if key not in node:
            raise fail("the path does not exist in the record")
    if last and in_key:
        new_key = redact(str(key))
        # Rebuild in order; a renamed key that collides with another gets a suffix.
        out: dict[object, object] = {}
        for k in keys:
            if k == key:
                name = new_key
                n = 2
                while name in node and name != key:
                    name = f"{new_key}#{n}"
                    n += 1
                out[name] = node[k]
            else:
                out[k] = node[k]
        return out
    copy_d = dict(node)
    copy_d[key] = _redact_at(node[key], segs, i + 1, spans, in_key, path, style, mask_char)
    return copy_d
