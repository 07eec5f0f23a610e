"""Field classification tags in topic schemas.

A topic schema is a JSON Schema (draft 2020-12). Any property may carry
``x-classification: <level>`` and semantic tags such as ``x-pii: card_number``. Field paths
use dots for objects and ``[*]`` for array items: ``customer.cards[*].number``.

A field without a tag takes the tag of its nearest tagged ancestor, and a top-level field
without one takes the classification of the topic's zone: untagged data is treated as being
as sensitive as the place it lives in (fail closed). To let a field flow down untransformed,
tag it explicitly.

Example::

    >>> s = {"type": "object", "properties": {
    ...     "card": {"type": "string", "x-classification": "restricted", "x-pii": "card_number"},
    ...     "amount": {"type": "number", "x-classification": "public"}}}
    >>> [(f.path, f.classification) for f in schema_fields(s, default="confidential")]
    [('card', 'restricted'), ('amount', 'public')]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SchemaField", "field_map", "schema_fields"]


@dataclass(frozen=True, slots=True)
class SchemaField:
    path: str
    classification: str
    explicit: bool
    pii: str | None
    json_type: str | None
    is_leaf: bool


def _type_of(node: Mapping[str, Any]) -> str | None:
    t = node.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        return str(non_null[0]) if non_null else None
    return str(t) if isinstance(t, str) else None


def schema_fields(
    schema: Mapping[str, Any], *, default: str, prefix: str = ""
) -> Iterator[SchemaField]:
    """Every property of ``schema`` (depth first), with its effective classification."""
    yield from _walk(schema, prefix, default, explicit_parent=False)


def _walk(
    node: Mapping[str, Any], prefix: str, inherited: str, *, explicit_parent: bool
) -> Iterator[SchemaField]:
    props = node.get("properties")
    if isinstance(props, Mapping):
        for name, sub in props.items():
            if not isinstance(sub, Mapping):
                continue
            path = f"{prefix}.{name}" if prefix else str(name)
            yield from _field(sub, path, inherited, explicit_parent)
    items = node.get("items")
    if isinstance(items, Mapping) and (items.get("properties") or items.get("items")):
        yield from _walk(items, f"{prefix}[*]", inherited, explicit_parent=explicit_parent)


def _field(
    sub: Mapping[str, Any], path: str, inherited: str, explicit_parent: bool
) -> Iterator[SchemaField]:
    tag = sub.get("x-classification")
    explicit = isinstance(tag, str)
    level = str(tag) if explicit else inherited
    pii = sub.get("x-pii")
    items = sub.get("items") if isinstance(sub.get("items"), Mapping) else None
    has_children = isinstance(sub.get("properties"), Mapping) or bool(
        items and (items.get("properties") or items.get("items"))
    )
    yield SchemaField(
        path=path,
        classification=level,
        explicit=explicit or explicit_parent,
        pii=str(pii) if isinstance(pii, str) else None,
        json_type=_type_of(sub),
        is_leaf=not has_children,
    )
    if has_children:
        if isinstance(sub.get("properties"), Mapping):
            yield from _walk(sub, path, level, explicit_parent=explicit or explicit_parent)
        elif items is not None:
            yield from _walk(
                items, f"{path}[*]", level, explicit_parent=explicit or explicit_parent
            )


def field_map(schema: Mapping[str, Any] | None, *, default: str) -> dict[str, SchemaField]:
    """Path → field, for a schema (empty for a topic without one)."""
    if not schema:
        return {}
    return {f.path: f for f in schema_fields(schema, default=default)}
