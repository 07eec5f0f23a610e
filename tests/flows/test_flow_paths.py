"""The one-walk cut-and-check of a flow's output equals the two walks it replaces."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.flows._paths import (
    KeepChecked,
    closed_leaf_paths,
    keep_only,
    leaves,
    leaves_ok,
)

_keys = st.sampled_from(["a", "b", "c", "x.y", "l"])
_docs = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=12,
)
_paths = st.sampled_from(
    ["a", "b", "c", "a.a", "a.b", "a.c", "x.y", "l", "l[*]", "l[*].a", "a.l", "a.l[*].b", "b.b"]
)


@settings(max_examples=500, deadline=None)
@given(
    doc=st.dictionaries(_keys, _docs, max_size=5),
    allowed=st.sets(_paths),
    refused=st.sets(_paths),
    known=st.sets(_paths),
    limit=st.integers(1, 5),
)
def test_keep_checked_is_keep_only_then_leaves_ok(
    doc: dict[str, Any], allowed: set[str], refused: set[str], known: set[str], limit: int
) -> None:
    asked: list[str] = []

    def problem(path: str) -> str | None:
        asked.append(path)
        return "refused" if path in refused else None

    expected = keep_only(doc, allowed)
    fits_expected = leaves_ok(expected, problem, limit)
    if fits_expected:  # every leaf of the output was asked about
        assert {s for s, _ in leaves(expected)} <= set(asked)
    # The resolved-paths walk gives the same, the first time and from its resolved paths.
    keep = KeepChecked(allowed, problem, limit)
    assert keep(doc) == (expected, fits_expected)
    assert keep(doc) == (expected, fits_expected)
    assert keep(expected) == (expected, fits_expected)
    # Paths known to be fine are not asked about again, and change no answer.
    fine = known - refused
    assert leaves_ok(expected, problem, limit, fine) is fits_expected
    asked.clear()
    leaves_ok(expected, problem, limit, fine)
    assert not fine.intersection(asked)


def test_keep_checked_answers_for_a_scalar_record_and_many_unknown_keys() -> None:
    refuse_root = lambda p: "no" if p == "" else None  # noqa: E731
    assert KeepChecked({"a"}, refuse_root, 3)(5) == (5, False)  # a leaf where "" is refused
    assert KeepChecked({"a"}, lambda p: None, 3)(5) == (5, True)
    keep = KeepChecked({"a"}, lambda p: None, 3)
    for i in range(600):  # more unknown keys than it remembers
        assert keep({f"k{i}": 1, "a": 2}) == ({"a": 2}, True)


def test_keep_checked_refuses_a_refused_leaf_and_a_too_deep_one() -> None:
    doc = {"a": {"b": 1, "c": 2}, "d": 3}
    assert KeepChecked({"a", "a.b"}, lambda p: None, 3)(doc) == ({"a": {"b": 1}}, True)
    refuse_b = lambda p: "no" if p == "a.b" else None  # noqa: E731
    assert KeepChecked({"a", "a.b"}, refuse_b, 3)(doc) == ({"a": {"b": 1}}, False)
    assert KeepChecked({"a", "a.b"}, lambda p: None, 2)(doc) == ({"a": {"b": 1}}, False)
    # An object emptied by the cut is a leaf of the output, checked as such.
    refuse_a = lambda p: "no" if p == "a" else None  # noqa: E731
    assert KeepChecked({"a"}, refuse_a, 3)(doc) == ({"a": {}}, False)


# -- closed destination schemas --------------------------------------------------------------

_scalar_types = st.sampled_from(["string", "number", "integer", "boolean", "null"])
#: Mostly closed objects; some open ones, which closed_leaf_paths must refuse to vouch for.
_additional = st.sampled_from([False, False, False, False, True, {"type": "string"}, None])


def _object(props: dict[str, Any], nullable: bool, additional: object) -> dict[str, Any]:
    out: dict[str, Any] = {"type": ["object", "null"] if nullable else "object"}
    out["properties"] = props
    if additional is not None:
        out["additionalProperties"] = additional
    return out


_schemas = st.recursive(
    st.one_of(
        st.builds(lambda t: {"type": t}, _scalar_types),
        st.builds(lambda ts: {"type": sorted(set(ts))}, st.lists(_scalar_types, min_size=1)),
    ),
    lambda inner: st.one_of(
        st.builds(
            _object,
            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
            st.booleans(),
            _additional,
        ),
        st.builds(lambda items: {"type": "array", "items": items}, inner),
    ),
    max_leaves=8,
)
_roots = st.builds(
    lambda props, additional: {
        **_object(props, False, additional),
        "x-classification": "public",
    },
    st.dictionaries(st.sampled_from(["a", "b", "c"]), _schemas, min_size=1, max_size=3),
    _additional,
)
_any_docs = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=2)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), inner, max_size=3),
    ),
    max_leaves=10,
)


_SCALAR_VALUES = {
    "string": st.text(max_size=2),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "integer": st.integers(),
    "boolean": st.booleans(),
    "null": st.none(),
}


def _doc_for(data: st.DataObject, schema: dict[str, Any]) -> Any:
    """A value shaped by ``schema``, sometimes with an extra field or a value of another
    type (which the schema may or may not accept: the validator decides)."""
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(_any_docs)  # anything at all
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    t = data.draw(st.sampled_from(types))
    if t == "object":
        props = schema["properties"]
        out = {k: _doc_for(data, v) for k, v in props.items() if data.draw(st.integers(0, 3))}
        if data.draw(st.integers(0, 4)) == 0:
            out["d"] = data.draw(_any_docs)
        return out
    if t == "array":
        return [_doc_for(data, schema["items"]) for _ in range(data.draw(st.integers(0, 3)))]
    return data.draw(_SCALAR_VALUES[t])


@settings(max_examples=700, deadline=None)
@given(schema=_roots, data=st.data(), limit=st.integers(2, 8))
def test_a_record_a_closed_schema_accepts_has_only_its_leaf_paths(
    schema: dict[str, Any], data: st.DataObject, limit: int
) -> None:
    import jsonschema_rs

    doc = _doc_for(data, schema)
    paths = closed_leaf_paths(schema, limit)
    if paths is None or not jsonschema_rs.validator_for(schema).is_valid(doc):
        return
    outside: list[str] = []

    def problem(p: str) -> str | None:
        if p in paths:
            return None
        outside.append(p)
        return "outside"

    assert leaves_ok(doc, problem, limit), outside
    assert {s for s, _ in leaves(doc)} <= paths.keys()
    for s, c in leaves(doc):  # a path marked "only when empty" holds an empty object or array
        if paths[s]:
            node = doc
            for part in c.replace("[", ".[").split("."):
                node = node[int(part[1:-1])] if part.startswith("[") else node[part]
            assert node in ({}, [])


def test_closed_leaf_paths_of_the_example_destination() -> None:
    import json
    from pathlib import Path

    import trustzones.config

    here = Path(trustzones.config.__file__).parent / "examples/ecommerce/schemas"
    schema = json.loads((here / "payment_sanitised.json").read_text())
    paths = closed_leaf_paths(schema, 32)
    assert paths is not None
    assert {"card", "card.number", "customer.email", "note"} <= paths.keys()
    assert "card.cvv" not in paths and "customer.name" not in paths
    assert paths["card"] and not paths["card.number"]
    assert closed_leaf_paths(schema, 2) is None  # card.number sits at depth 3


_CLOSED: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"a": {"type": "string"}, "l": {"type": "array", "items": {"type": "integer"}}},
}


def test_closed_leaf_paths_gives_up_on_anything_it_cannot_prove() -> None:
    assert closed_leaf_paths(_CLOSED, 5) == {"a": False, "l": True, "l[*]": False}
    opened: list[dict[str, Any]] = [
        {**_CLOSED, "additionalProperties": True},
        {**_CLOSED, "additionalProperties": {"type": "string"}},
        {k: v for k, v in _CLOSED.items() if k != "additionalProperties"},
        {**_CLOSED, "patternProperties": {"^x": {"type": "string"}}},
        {**_CLOSED, "anyOf": [{"type": "object"}]},
        {**_CLOSED, "properties": {"a": {}}},  # untyped: anything, an object included
        {**_CLOSED, "properties": {"a": True}},
        {**_CLOSED, "properties": {"a": {"$ref": "#"}}},
        {**_CLOSED, "properties": {"a": {"type": "array"}}},  # items unrestricted
        {
            **_CLOSED,
            "properties": {"a": {"type": "array", "prefixItems": [], "items": {"type": "string"}}},
        },
        {**_CLOSED, "properties": {"a": {"type": "object", "properties": {}}}},
        {**_CLOSED, "properties": {"a": {"type": "string", "properties": {}}}},
        {**_CLOSED, "properties": {"a": {"type": ["string", "whatever"]}}},
        {**_CLOSED, "type": "array"},
        {"type": "object", "additionalProperties": False, "properties": [], "x": 1},
    ]
    for schema in opened:
        assert closed_leaf_paths(schema, 5) is None, schema
