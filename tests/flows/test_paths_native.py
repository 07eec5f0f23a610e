"""The native core's walks of a flow's output (``native/src/keep.rs``) give exactly what the
Python code gives, which stays the reference: the cut-and-check of :class:`KeepChecked`
(same dicts and lists, same keys in the same order, the same leaf objects, the same
verdict, ``problem`` asked about the same paths, once each) and the watermark's marking of
plain paths. Checked with hypothesis on arbitrary JSON-like records, and on the records the
native walk hands back to Python."""

from __future__ import annotations

import copy
import gc
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trustzones.flows._paths import KeepChecked, keep_only, leaves_ok
from trustzones.flows._watermark import Watermarker

_KEY = b"watermark test key of 32 bytes!!"


class _Dict(dict[Any, Any]):
    """A dict subclass: ``isinstance`` says dict, the native walk leaves it to Python."""


class _List(list[Any]):
    """A list subclass, left to Python the same way."""


class _Str(str):
    """A str subclass: a leaf that is not one of the leaf types (and a key Python keeps)."""


_keys = st.one_of(
    st.sampled_from(["a", "b", "c", "x.y", "l", "", "é", "ключ", "a.b"]),
    st.text(max_size=3),  # any code point, lone surrogates too
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**64),
    st.floats(),
    st.text(max_size=3),
    st.sampled_from(["0123456789abcdef", "0123456789abcdef\n", "deadbeef"]),
    st.tuples(st.integers()),  # neither a leaf type nor a container
)


def _records(odd: bool) -> st.SearchStrategy[Any]:
    """JSON-like values; with ``odd``, also the subclasses and non-str keys the native walk
    hands back to Python."""
    leaves = st.one_of(_leaves, st.builds(_Str, st.text(max_size=2))) if odd else _leaves
    keys = st.one_of(_keys, st.integers(0, 2), st.just(True)) if odd else _keys

    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        made = st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5))
        if odd:
            made = st.one_of(
                made,
                st.lists(inner, max_size=2).map(_List),
                st.dictionaries(keys, inner, max_size=2).map(_Dict),
            )
        return made

    return st.recursive(leaves, containers, max_leaves=25)


def _schema_paths(node: Any, spath: str = "") -> set[str]:
    """Every schema path in ``node``, as KeepChecked builds them (so that an allowed set
    drawn from them keeps something)."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{spath}.{k}" if spath else str(k)
            out |= {p} | _schema_paths(v, p)
    elif isinstance(node, list):
        for v in node:
            out |= _schema_paths(v, f"{spath}[*]")
    return out


def _same(a: Any, b: Any) -> None:
    """``a`` and ``b`` are the same output: containers of the same type with the same keys in
    the same order, and the very same leaf objects."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        assert all(ka is kb for ka, kb in zip(a, b, strict=True))
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a is b


class _Problem:
    """A ``problem`` that refuses some paths and records what it was asked."""

    def __init__(self, refused: set[str]) -> None:
        self.refused = refused
        self.asked: list[str] = []

    def __call__(self, path: str) -> str | None:
        self.asked.append(path)
        return "refused" if path in self.refused else None


def _pair(
    allowed: set[str], refused: set[str], limit: int
) -> tuple[KeepChecked, _Problem, KeepChecked, _Problem]:
    nproblem, pproblem = _Problem(refused), _Problem(refused)
    native = KeepChecked(allowed, nproblem, limit)
    python = KeepChecked(allowed, pproblem, limit, native=False)
    assert native._native is not None, "build the native core: python -m pip install ./native"
    assert python._native is None
    return native, nproblem, python, pproblem


def _check_same_walks(docs: list[Any], data: st.DataObject, limit: int, plain: bool) -> None:
    paths = sorted(set().union(*(_schema_paths(d) for d in docs)) | {"", "zz", "l[*]"})
    allowed = data.draw(st.sets(st.sampled_from(paths)), label="allowed")
    refused = data.draw(st.sets(st.sampled_from(paths)), label="refused")
    native, nproblem, python, pproblem = _pair(allowed, refused, limit)
    for doc in docs * 2:  # the second time from the resolved paths
        before = copy.deepcopy(doc)
        nout, nfits = native(doc)
        pout, pfits = python(doc)
        _same(nout, pout)
        assert nfits is pfits
        assert [doc] == [before]  # the input is not changed (in a list: nan is nan)
        if isinstance(doc, (dict, list)):
            assert nout is not doc
        if plain:  # the reference is keep_only then leaves_ok (str keys only: see below)
            assert [nout] == [keep_only(doc, allowed)]
            assert nfits is leaves_ok(nout, lambda p: "refused" if p in refused else None, limit)
    assert nproblem.asked == pproblem.asked
    assert len(set(nproblem.asked)) == len(nproblem.asked)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(_records(odd=False), min_size=1, max_size=3),
    data=st.data(),
    limit=st.integers(0, 6),
)
def test_native_keep_checked_equals_the_python_walk(
    docs: list[Any], data: st.DataObject, limit: int
) -> None:
    _check_same_walks(docs, data, limit, plain=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(_records(odd=True), min_size=1, max_size=3),
    data=st.data(),
    limit=st.integers(0, 6),
)
def test_records_left_to_python_give_the_same_walk(
    docs: list[Any], data: st.DataObject, limit: int
) -> None:
    # The Python walk remembers paths by key object, so keys 1 and True share one: not
    # keep_only's answer, but the same with or without the native core.
    _check_same_walks(docs, data, limit, plain=False)


def test_the_native_walk_does_plain_records_and_leaves_the_odd_ones_to_python() -> None:
    native, problem, _, _ = _pair({"a", "a.b", "l", "l[*]"}, set(), 3)
    assert native._native is not None

    def walker(doc: Any) -> tuple[Any, bool] | None:
        assert native._native is not None
        return native._native(doc, problem, native._answers)

    assert walker({"a": {"b": 1, "c": 2}, "l": [1, {}], "z": 3}) == (
        {"a": {"b": 1}, "l": [1, {}]},
        True,
    )
    for odd in ({"a": _Dict(b=1)}, {"l": _List([1])}, {1: 2}, {"\ud800": 1}, _Dict(a=1)):
        assert walker(odd) is None
        assert native(odd) == KeepChecked({"a", "a.b", "l", "l[*]"}, lambda p: None, 3)(odd)


def _nested(depth: int, leaf: Any) -> Any:
    node = leaf
    for _ in range(depth):
        node = {"a": node}
    return node


def _lists(depth: int) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = [node]
    return node


def test_deep_records_give_the_same_walk() -> None:
    # Beyond the limit (refused), and beyond the native walk's nesting (left to Python).
    allowed = {".".join(["a"] * n) for n in range(1, 400)}
    for doc in (_nested(10, 1), _nested(10, {}), _nested(300, "x"), _lists(300), _lists(5)):
        native, nproblem, python, pproblem = _pair(allowed | {"a"}, set(), 8)
        nout, nfits = native(doc)
        pout, pfits = python(doc)
        _same(nout, pout)
        assert nfits is pfits
        assert nproblem.asked == pproblem.asked


def test_many_unknown_keys_give_the_same_walk() -> None:
    native, nproblem, python, pproblem = _pair({"a", "k7"}, {"k7"}, 3)
    for i in range(600):  # more unknown keys than a shape remembers
        doc = {f"k{i}": 1, "a": 2, f"k{i % 9}": [i]}
        (nout, nfits), (pout, pfits) = native(doc), python(doc)
        _same(nout, pout)
        assert nfits is pfits
    assert nproblem.asked == pproblem.asked == ["", "a", "k7", "k7[*]"]


@pytest.mark.parametrize("native", [True, False])
def test_an_error_of_problem_reaches_the_caller_and_nothing_is_half_remembered(
    native: bool,
) -> None:
    calls: list[str] = []

    def problem(path: str) -> str | None:
        calls.append(path)
        if path == "a" and calls.count("a") == 1:
            raise RuntimeError("config unreadable")
        return None

    keep = KeepChecked({"a"}, problem, 3, native=native)
    assert (keep._native is not None) is native
    with pytest.raises(RuntimeError, match="config unreadable"):
        keep({"a": 1})
    assert keep({"a": 1}) == ({"a": 1}, True)
    assert calls == ["", "a", "a"]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("at", ["a", "b.c"])
def test_a_problem_that_changes_the_record_stops_the_walk_as_python_does(
    native: bool, at: str
) -> None:
    doc: dict[str, Any] = {"a": 1, "b": {"c": 2, "d": 3}, "e": 4}
    changed = {"a": doc, "b.c": doc["b"]}[at]

    def problem(path: str) -> str | None:
        if path == at:
            changed["z"] = 0  # the dict being walked grows
        return None

    keep = KeepChecked({"a", "b", "b.c", "b.d", "e"}, problem, 3, native=native)
    assert (keep._native is not None) is native
    # RuntimeError, as Python's own iteration raises (the native walk raised pyo3's
    # PanicException, which is no Exception at all)
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        keep(doc)


def test_a_keep_checked_in_a_reference_cycle_is_collected() -> None:
    # A flow's problem is a method of the flow, which holds the KeepChecked: the native
    # walker, which Python's garbage collector cannot see into, must not hold it.
    class Owner:
        def __init__(self) -> None:
            self.keep = KeepChecked({"a"}, self.problem, 3)

        def problem(self, path: str) -> str | None:
            return None

    owner = Owner()
    assert owner.keep._native is not None
    assert owner.keep({"a": 1, "b": 2}) == ({"a": 1}, True)
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None


# -- the watermark ------------------------------------------------------------------------

_hex = st.text(alphabet="0123456789abcdef", min_size=8, max_size=40)
_mark_leaves = st.one_of(
    _hex,
    _hex.map(lambda h: h + "\n"),
    _hex.map(str.upper),
    _hex.map(_Str),
    st.none(),
    st.integers(),
    st.text(max_size=14),
)
_mark_keys = st.sampled_from(["a", "b", "c", "", "d.e"])
_mark_paths = st.sampled_from(
    ["a", "b", "a.b", "a.c", "c.a.b", "", "a..b", "b.a", "l[*]", "l[*].a", "a.l[*]", "d.e"]
)


def _mark_docs(odd: bool) -> st.SearchStrategy[Any]:
    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        made = st.one_of(
            st.dictionaries(st.one_of(_mark_keys, st.just("l")), inner, max_size=4),
            st.lists(inner, max_size=3),
        )
        return (
            st.one_of(made, st.dictionaries(_mark_keys, inner, max_size=3).map(_Dict))
            if odd
            else made
        )

    return st.recursive(_mark_leaves, containers, max_leaves=20)


def _check_same_marks(doc: Any, paths: list[str]) -> None:
    native = Watermarker(_KEY, paths)
    python = Watermarker(_KEY, paths, native=False)
    assert python._native is None
    if any("[" not in p for p in paths):
        assert native._native is not None, "build the native core: python -m pip install ./native"
    ndoc, pdoc = copy.deepcopy(doc), copy.deepcopy(doc)
    native.mark(ndoc)
    python.mark(pdoc)
    assert _typed(ndoc) == _typed(pdoc)


def _typed(node: Any) -> Any:
    """``node`` with the type of every value, and keys in order (for a comparison)."""
    if isinstance(node, dict):
        return type(node), [(k, _typed(v)) for k, v in node.items()]
    if isinstance(node, list):
        return type(node), [_typed(v) for v in node]
    return type(node), node


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_mark_docs(odd=False), paths=st.lists(_mark_paths, max_size=5))
def test_native_mark_equals_the_python_mark(doc: Any, paths: list[str]) -> None:
    _check_same_marks(doc, paths)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_mark_docs(odd=True), paths=st.lists(_mark_paths, max_size=5))
def test_marks_left_to_python_are_the_same(doc: Any, paths: list[str]) -> None:
    _check_same_marks(doc, paths)


def test_the_native_mark_rewrites_the_tail_with_the_tag() -> None:
    python = Watermarker(_KEY, ["a.b"], native=False)
    marker = Watermarker(_KEY, ["a.b", "c"])._native
    assert marker is not None
    h = "0123456789abcdef"
    doc: dict[str, Any] = {"a": {"b": h}, "c": h + "\n"}
    assert marker(doc) is True
    assert doc == {"a": {"b": h[:-4] + python._tag(h[:-4])}, "c": h[:-3] + python._tag(h[:-3])}
    assert python.carries(doc["a"]["b"])
    # A dict or str subclass on a path: left to Python, which marks the same.
    for odd in (
        {"a": _Dict(b=h)},
        {"a": {"b": _Str(h)}},
        _Dict(a={"b": h}),
        {"c": _Dict(a={"b": h})},
    ):
        deep = Watermarker(_KEY, ["c.a.b"])._native
        assert deep is not None
        assert False in (marker(copy.deepcopy(odd)), deep(copy.deepcopy(odd)))
        _check_same_marks(odd, ["a.b", "c.a.b"])
