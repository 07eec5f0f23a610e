"""Field paths of flow transforms: ``customer.email``, ``items[*].sku``."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from typing import Any, cast

from trustzones.dlp._native import load_native


def split(path: str) -> list[str]:
    return path.replace("[*]", ".[*]").split(".")


def apply_at(doc: Any, path: str, fn: Callable[[Any, str], Any]) -> None:
    """Replace every value at ``path`` by ``fn(value, concrete_path)``, in place (the
    watermark's use; field transforms go through the DLP part's copy-on-write plan)."""
    _apply(doc, split(path), fn, "")


def _apply(node: Any, parts: list[str], fn: Callable[[Any, str], Any], where: str) -> None:
    head, rest = parts[0], parts[1:]
    if head == "[*]":
        if not isinstance(node, list):
            return
        for i in range(len(node)):
            here = f"{where}[{i}]"
            if rest:
                _apply(node[i], rest, fn, here)
            else:
                node[i] = fn(node[i], here)
        return
    if not isinstance(node, dict) or head not in node:
        return
    here = f"{where}.{head}" if where else head
    if rest:
        _apply(node[head], rest, fn, here)
        return
    node[head] = fn(node[head], here)


def leaves(doc: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(schema path with ``[*]``, concrete path) of every leaf value."""
    yield from _leaves(doc, prefix, prefix)


def _leaves(node: Any, spath: str, cpath: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if not node and spath:
            yield spath, cpath
        for k, v in node.items():
            yield from _leaves(
                v, f"{spath}.{k}" if spath else str(k), f"{cpath}.{k}" if cpath else str(k)
            )
    elif isinstance(node, list):
        if not node and spath:
            yield spath, cpath
        for i, v in enumerate(node):
            yield from _leaves(v, f"{spath}[*]", f"{cpath}[{i}]")
    else:
        yield spath, cpath


def leaves_ok(
    doc: Any,
    problem: Callable[[str], str | None],
    limit: int,
    fine: Container[str] = frozenset(),
) -> bool:
    """True when ``problem`` is None for the schema path of every leaf that :func:`leaves`
    yields, and no value is nested deeper than ``limit`` (the top level is depth 1, each
    value one deeper than its container, as zone ingress counts it). False means: look
    closer with :func:`leaves`. One walk, no concrete paths, stops at the first doubt.
    ``fine`` may hold paths known to have no problem: they are not asked about again (a set
    lookup instead of a call per leaf)."""
    return _ok(doc, "", 1, problem, limit, fine)


def _ok(
    node: Any,
    spath: str,
    depth: int,
    problem: Callable[[str], str | None],
    limit: int,
    fine: Container[str],
) -> bool:
    if depth > limit:
        return False
    if isinstance(node, dict):
        if not node:
            return not spath or spath in fine or problem(spath) is None
        deeper = depth + 1
        for k, v in node.items():
            p = f"{spath}.{k}" if spath else str(k)
            tv = type(v)
            if tv is str or tv is int or tv is float or tv is bool or v is None:
                if deeper > limit or (p not in fine and problem(p) is not None):
                    return False
            elif not _ok(v, p, deeper, problem, limit, fine):
                return False
        return True
    if isinstance(node, list):
        if not node:
            return not spath or spath in fine or problem(spath) is None
        deeper = depth + 1
        p = f"{spath}[*]"
        for v in node:
            tv = type(v)
            if tv is str or tv is int or tv is float or tv is bool or v is None:
                if deeper > limit or (p not in fine and problem(p) is not None):
                    return False
            elif not _ok(v, p, deeper, problem, limit, fine):
                return False
        return True
    return spath in fine or problem(spath) is None


class _Shape:
    """One schema path of :class:`KeepChecked`, resolved once."""

    __slots__ = ("clean", "deep", "depth", "items", "kept", "keys", "spath")

    def __init__(self, spath: str, kept: bool, depth: int, deep: bool, clean: bool) -> None:
        self.spath = spath
        self.kept = kept  # in the allowed paths (items of a kept array always are)
        self.depth = depth  # the record is at depth 1, its fields at 2 (as leaves_ok counts)
        self.deep = deep  # depth > the limit
        self.clean = clean  # problem(spath) is None
        self.keys: dict[str, _Shape] = {}
        self.items: _Shape | None = None


#: Paths remembered per object for keys that are not allowed: a record's unknown keys are
#: input, so beyond this many they are looked up in ``allowed`` each time instead.
_MAX_DROPPED = 256


#: ``trustzones_native.KeepWalker.keep`` (``native/src/keep.rs``): ``keep(doc, problem,
#: answers)`` is :class:`KeepChecked`'s walk, None for a record it leaves to Python (dict or
#: list subclasses, keys that are not ``str``, deep nesting).
_NativeWalk = Callable[
    [Any, Callable[[str], "str | None"], "dict[str, bool]"], "tuple[Any, bool] | None"
]


def _native_walk(allowed: frozenset[str], limit: int) -> _NativeWalk | None:
    """The native walk, when the native module has it (a build from before it does not) and
    its 64-bit depths hold ``limit``; else None."""
    walker = getattr(load_native(), "KeepWalker", None)
    if walker is None or type(limit) is not int or not -(2**62) < limit < 2**62:
        return None
    if not all(type(p) is str for p in allowed):
        return None
    return cast("_NativeWalk", walker(allowed, limit).keep)


class KeepChecked:
    """``(out, leaves_ok(out, problem, limit))`` for ``out = keep_only(doc, allowed)``, in one
    walk (the flow's usual case, where every record is cut down to the destination's fields
    and then checked), with each schema path built, looked up and asked about once rather
    than once per record: the walk follows a tree of resolved paths keyed by the record's
    keys. ``problem`` must give
    the same answer for a path every time (the flow's does: it reads only the config);
    ``allowed`` is read once.

    The native core walks the record when it is installed (``native=False``: never, the
    tests compare both), and hands back to this code the records it does not handle; the
    two keep their own trees of paths but share the answers of ``problem``, so that it is
    still asked once per path."""

    def __init__(
        self,
        allowed: set[str],
        problem: Callable[[str], str | None],
        limit: int,
        *,
        native: bool = True,
    ):
        self._allowed = frozenset(allowed)
        self._problem = problem
        self._limit = limit
        self._answers: dict[str, bool] = {}  # only of kept paths: the allowed ones and [*]
        self._root = self._shape("", True, 1)
        self._native = _native_walk(self._allowed, limit) if native else None

    def __call__(self, doc: Any) -> tuple[Any, bool]:
        if self._native is not None:
            done = self._native(doc, self._problem, self._answers)
            if done is not None:
                return done
        bad: list[bool] = []
        return self._walk(doc, self._root, bad), not bad

    def _clean(self, spath: str) -> bool:
        """``problem(spath) is None``, asked once."""
        clean = self._answers.get(spath)
        if clean is None:
            clean = self._answers[spath] = self._problem(spath) is None
        return clean

    def _shape(self, spath: str, kept: bool, depth: int) -> _Shape:
        clean = not kept or self._clean(spath)
        return _Shape(spath, kept, depth, depth > self._limit, clean)

    def _key(self, shape: _Shape, key: str, depth: int) -> _Shape:
        p = f"{shape.spath}.{key}" if shape.spath else str(key)
        child = self._shape(p, p in self._allowed, depth)
        if child.kept or len(shape.keys) < _MAX_DROPPED:
            shape.keys[key] = child
        return child

    def _walk(self, node: Any, shape: _Shape, bad: list[bool]) -> Any:
        if shape.deep and not bad:
            bad.append(True)
        if isinstance(node, dict):
            keys = shape.keys
            out = {}
            for k, v in node.items():
                c = keys.get(k)
                if c is None:
                    c = self._key(shape, k, shape.depth + 1)
                if not c.kept:
                    continue
                tv = type(v)
                if tv is str or tv is int or tv is float or tv is bool or v is None:
                    out[k] = v
                    if (c.deep or not c.clean) and not bad:
                        bad.append(True)
                else:
                    out[k] = self._walk(v, c, bad)
            if not out and shape.spath and not shape.clean and not bad:
                bad.append(True)
            return out
        if isinstance(node, list):
            c = shape.items
            if c is None:
                c = shape.items = self._shape(f"{shape.spath}[*]", True, shape.depth + 1)
            items = []
            for v in node:
                tv = type(v)
                if tv is str or tv is int or tv is float or tv is bool or v is None:
                    items.append(v)
                    if (c.deep or not c.clean) and not bad:
                        bad.append(True)
                else:
                    items.append(self._walk(v, c, bad))
            if not items and shape.spath and not shape.clean and not bad:
                bad.append(True)
            return items
        if not shape.clean and not bad:  # a leaf where a container was expected
            bad.append(True)
        return node


def keep_only(doc: Any, allowed: set[str], prefix: str = "") -> Any:
    """A copy of ``doc`` without the fields whose schema path is not in ``allowed``."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            if p in allowed:
                out[k] = keep_only(v, allowed, p)
        return out
    if isinstance(doc, list):
        return [keep_only(v, allowed, f"{prefix}[*]") for v in doc]
    return doc


#: Keywords that only narrow the value they sit on (or annotate it): they never let a valid
#: record hold a field or an item the schema does not name. Anything else (``$ref``,
#: ``anyOf``, ``patternProperties``, ``unevaluatedProperties``, ``prefixItems``...) makes
#: :func:`closed_leaf_paths` give up. ``x-`` annotations (``x-classification``) narrow nothing
#: and are allowed too.
_NARROWING = frozenset(
    {
        "$schema", "$id", "$comment", "title", "description", "default", "examples",
        "deprecated", "readOnly", "writeOnly", "type", "enum", "const", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "pattern", "required", "minProperties", "maxProperties",
        "minItems", "maxItems", "uniqueItems", "properties", "additionalProperties", "items",
    }
)  # fmt: skip
_SCALARS = frozenset({"string", "number", "integer", "boolean", "null"})


def closed_leaf_paths(schema: Any, limit: int) -> dict[str, bool] | None:
    """Every schema path at which a record valid against ``schema`` can have a leaf (as
    :func:`leaves` names them: scalars, and empty objects or arrays), when the schema proves
    that no other leaf exists and nothing is nested deeper than ``limit`` (as
    :func:`leaves_ok` counts); else None. Each path maps to True when a value there is a leaf
    only if it is an empty object or array (the schema allows nothing else there).

    It proves that only when every value it allows is typed, every object lists its
    properties and sets ``additionalProperties: false``, every array types its items the same
    way, and only keywords that narrow a value appear (``_NARROWING``). Anything else, even if
    it could be proven closed by a longer argument, gives None: the caller then walks the
    record."""
    if not isinstance(schema, dict) or "object" not in _types(schema):
        return None
    out: dict[str, bool] = {}
    if not _closed(schema, "", 1, limit, out):
        return None
    return out


def _types(node: dict[str, Any]) -> frozenset[str]:
    t = node.get("type")
    if isinstance(t, str):
        return frozenset((t,))
    if isinstance(t, list) and all(isinstance(x, str) for x in t):
        return frozenset(t)
    return frozenset()


def _closed(node: Any, spath: str, depth: int, limit: int, out: dict[str, bool]) -> bool:
    """Whether ``node`` (the schema of a value at ``spath``, ``depth``) is closed; adds the
    leaf paths it allows to ``out``."""
    if not isinstance(node, dict) or depth > limit:
        return False
    # ``x-`` keywords are ours (``x-classification``): annotations, which validate nothing.
    if not all(k in _NARROWING or (isinstance(k, str) and k.startswith("x-")) for k in node):
        return False
    types = _types(node)
    if not types or not types <= _SCALARS | {"object", "array"}:
        return False
    if spath:  # a scalar, or an empty object or array, is a leaf here (the root is not)
        out[spath] = types <= {"object", "array"}
    if "object" in types:
        props = node.get("properties", {})
        if node.get("additionalProperties") is not False or not isinstance(props, dict):
            return False
        for key, sub in props.items():
            if not _closed(sub, f"{spath}.{key}" if spath else str(key), depth + 1, limit, out):
                return False
    elif "properties" in node or "additionalProperties" in node:
        return False  # only meaningful on objects: keep the proof simple
    if "array" in types:
        return _closed(node.get("items"), f"{spath}[*]", depth + 1, limit, out)
    return "items" not in node
