"""The one-walk cut-and-check of a flow's output equals the two walks it replaces."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.flows._paths import keep_only, keep_only_checked, leaves, leaves_ok

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
def test_keep_only_checked_is_keep_only_then_leaves_ok(
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
    # Paths known to be fine are not asked about again, and change no answer.
    fine = known - refused
    assert keep_only_checked(doc, allowed, problem, limit) == (expected, fits_expected)
    assert keep_only_checked(doc, allowed, problem, limit, fine) == (expected, fits_expected)
    assert leaves_ok(expected, problem, limit, fine) is fits_expected
    asked.clear()
    leaves_ok(expected, problem, limit, fine)
    assert not fine.intersection(asked)


def test_keep_only_checked_refuses_a_refused_leaf_and_a_too_deep_one() -> None:
    doc = {"a": {"b": 1, "c": 2}, "d": 3}
    assert keep_only_checked(doc, {"a", "a.b"}, lambda p: None, 3) == ({"a": {"b": 1}}, True)
    refuse_b = lambda p: "no" if p == "a.b" else None  # noqa: E731
    assert keep_only_checked(doc, {"a", "a.b"}, refuse_b, 3) == ({"a": {"b": 1}}, False)
    assert keep_only_checked(doc, {"a", "a.b"}, lambda p: None, 2) == ({"a": {"b": 1}}, False)
    # An object emptied by the cut is a leaf of the output, checked as such.
    refuse_a = lambda p: "no" if p == "a" else None  # noqa: E731
    assert keep_only_checked(doc, {"a"}, refuse_a, 3) == ({"a": {}}, False)
