"""JSON paths of findings: ``customer.cards[0].number``.

Grammar: a member whose key is an identifier is ``.key`` (no dot at the start); any other
key is ``["key"]`` (a JSON string); an array element is ``[3]``; and a key that itself holds
a finding is written ``{#2}``, its position among the object's members, so that a path
never repeats the sensitive key. The empty path is the top-level value.
"""

from __future__ import annotations

import re

import orjson

__all__ = ["KeySeg", "Segment", "parse_path", "render_path"]

#: An object member: (key, position of the member in the object).
KeySeg = tuple[str, int]
Segment = KeySeg | int

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render_path(segments: tuple[Segment, ...], hidden: frozenset[tuple[Segment, ...]]) -> str:
    """Render ``segments``; members whose path prefix is in ``hidden`` are written ``{#n}``."""
    out: list[str] = []
    for i, seg in enumerate(segments):
        if isinstance(seg, int):
            out.append(f"[{seg}]")
            continue
        key, pos = seg
        if hidden and segments[: i + 1] in hidden:
            out.append(f"{{#{pos}}}")
        elif _IDENT.fullmatch(key):
            out.append(f".{key}" if out else key)
        else:
            out.append(f"[{orjson.dumps(key).decode()}]")
    return "".join(out)


_TOKEN = re.compile(
    r'\.?(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>\d+)\]|\[(?P<key>"(?:[^"\\]|\\.)*")\]'
    r"|\{#(?P<pos>\d+)\}"
)

#: A parsed segment: ``("key", name)``, ``("index", n)`` or ``("pos", n)``.
Parsed = tuple[str, str | int]


def parse_path(path: str) -> list[Parsed]:
    """Parse a path rendered by :func:`render_path`. Raises ``ValueError`` when malformed."""
    out: list[Parsed] = []
    i = 0
    while i < len(path):
        m = _TOKEN.match(path, i)
        if m is None or (m.group(0).startswith(".") and not out):
            raise ValueError(f"malformed JSON path at character {i}")
        if m.group("ident") is not None:
            if not out and m.group(0).startswith("."):
                raise ValueError("malformed JSON path: leading dot")
            if out and not m.group(0).startswith("."):
                raise ValueError(f"malformed JSON path at character {i}: missing dot")
            out.append(("key", m.group("ident")))
        elif m.group("index") is not None:
            out.append(("index", int(m.group("index"))))
        elif m.group("key") is not None:
            key = orjson.loads(m.group("key"))
            if not isinstance(key, str):
                raise ValueError(f"malformed JSON path at character {i}")
            out.append(("key", key))
        else:
            out.append(("pos", int(m.group("pos"))))
        i = m.end()
    return out
