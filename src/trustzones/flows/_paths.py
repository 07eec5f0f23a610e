"""Field paths of flow transforms: ``customer.email``, ``items[*].sku``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


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


def leaves_ok(doc: Any, problem: Callable[[str], str | None], limit: int) -> bool:
    """True when ``problem`` is None for the schema path of every leaf that :func:`leaves`
    yields, and no value is nested deeper than ``limit`` (the top level is depth 1, each
    value one deeper than its container, as zone ingress counts it). False means: look
    closer with :func:`leaves`. One walk, no concrete paths, stops at the first doubt."""
    return _ok(doc, "", 1, problem, limit)


def _ok(
    node: Any, spath: str, depth: int, problem: Callable[[str], str | None], limit: int
) -> bool:
    if depth > limit:
        return False
    if isinstance(node, dict):
        if not node:
            return not spath or problem(spath) is None
        deeper = depth + 1
        for k, v in node.items():
            p = f"{spath}.{k}" if spath else str(k)
            tv = type(v)
            if tv is str or tv is int or tv is float or tv is bool or v is None:
                if deeper > limit or problem(p) is not None:
                    return False
            elif not _ok(v, p, deeper, problem, limit):
                return False
        return True
    if isinstance(node, list):
        if not node:
            return not spath or problem(spath) is None
        deeper = depth + 1
        p = f"{spath}[*]"
        for v in node:
            tv = type(v)
            if tv is str or tv is int or tv is float or tv is bool or v is None:
                if deeper > limit or problem(p) is not None:
                    return False
            elif not _ok(v, p, deeper, problem, limit):
                return False
        return True
    return problem(spath) is None


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
