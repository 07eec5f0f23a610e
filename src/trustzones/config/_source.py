"""YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` forgets line numbers and silently keeps the last of two duplicate keys.
We compose the node tree ourselves, record the line of every mapping key and sequence item by
path, and report duplicate keys as errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """A parsed YAML document plus the 1-based line of each path in it."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    duplicates: list[tuple[Path_, int]] = field(default_factory=list)

    def line_of(self, path: Iterable[str | int]) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), 1)


class _Loader(yaml.SafeLoader):
    pass


def _walk(node: yaml.Node, path: Path_, out: Located) -> None:
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            if key in seen:
                out.duplicates.append((child, key_node.start_mark.line + 1))
                continue
            seen.add(key)
            out.lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            out.lines[child] = item.start_mark.line + 1
            _walk(item, child, out)


def parse_yaml(text: str, file: str) -> Located:
    """Parse ``text``; raises ``yaml.YAMLError`` (with a mark) on a syntax error."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        located = Located(file=file, data=None)
        if node is None:
            return located
        _walk(node, (), located)
        located.data = loader.construct_document(node)
        return located
    finally:
        loader.dispose()


def read_yaml(path: Path) -> Located:
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))
