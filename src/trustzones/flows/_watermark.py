"""Watermarks for leak attribution: which flow and destination did a leaked extract come from?

How it works. A flow with ``watermark: {enabled: true}`` derives a secret key from its
source zone's keys, per (flow, destination). Every value the flow pseudonymises with the
``hash`` transform is a hex string; the watermark replaces its last four hex digits with a
keyed tag of the rest: ``v = h[:-4] + HMAC(key, h[:-4])[:2].hex()``. The value still looks
random, stays deterministic (joins keep working) and needs no extra field or header, so it
survives copying rows into a spreadsheet or re-serialising JSON.

Identifying: ``trustzones watermark identify FILE`` collects every hex string of 12+ digits in
the leaked records and checks the tag under each flow's key. A value of another origin matches
a given key by chance with probability 2^-16; a hundred marked values matching is proof
beyond doubt, and the command reports the match ratio so a reader can judge.

Limits: only pseudonymised (hashed) fields carry the mark — an extract without them, or one
whose hashes were re-hashed or truncated, cannot be attributed; the mark identifies the flow
and destination, not the person who leaked; whoever holds the source zone's keys can forge it.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from trustzones.dlp._keyed import hmac_sha256
from trustzones.dlp._native import load_native
from trustzones.flows._paths import apply_at

__all__ = ["Attribution", "Watermarker", "identify"]

_HEX = re.compile(r"^[0-9a-f]{12,}$")


class _Tagger:
    """The tag of a body, ``HMAC-SHA-256(key, body)[:2]`` in hex."""

    def __init__(self, key: bytes, *, native: bool = True) -> None:
        self._digest = hmac_sha256(key, native=native)

    def __call__(self, body: str) -> str:
        return self._digest(body.encode())[:2].hex()


class Watermarker:
    """Marks the hex values at ``paths`` (the flow's hashed fields) of an output record."""

    def __init__(self, key: bytes, paths: Iterable[str], *, native: bool = True) -> None:
        if len(key) < 16:
            raise ValueError("a watermark key needs at least 128 bits")
        self._tag = _Tagger(key, native=native)
        self.paths = tuple(paths)
        # Plain dotted paths are walked key by key (by the native core when it is installed
        # and ``native``); paths with ``[*]`` go through apply_at.
        self._plain = tuple(tuple(p.split(".")) for p in self.paths if "[" not in p)
        self._wild = tuple(p for p in self.paths if "[" in p)
        # ``trustzones_native.PlainMarker.mark`` (``native/src/keep.rs``): False when it
        # leaves ``doc`` to Python (a dict or str subclass on a path).
        marker = getattr(load_native(), "PlainMarker", None) if native else None
        self._native: Callable[[Any], bool] | None = (
            marker(key, [list(k) for k in self._plain]).mark
            if marker is not None and self._plain
            else None
        )

    def _mark_value(self, v: Any, _where: str = "") -> Any:
        if isinstance(v, str) and _HEX.match(v):
            body = v[:-4]
            return body + self._tag(body)
        return v

    def mark(self, doc: Any) -> None:
        # Where the native core gives up half way, marking its values again changes nothing.
        if self._native is None or not self._native(doc):
            self._mark_plain(doc)
        for p in self._wild:
            apply_at(doc, p, self._mark_value)

    def _mark_plain(self, doc: Any) -> None:
        for keys in self._plain:
            node = doc
            for k in keys[:-1]:
                node = node.get(k) if isinstance(node, dict) else None
            last = keys[-1]
            if isinstance(node, dict) and last in node:
                node[last] = self._mark_value(node[last])

    def carries(self, value: str) -> bool:
        return bool(_HEX.match(value)) and hmac.compare_digest(value[-4:], self._tag(value[:-4]))


def _hex_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        if _HEX.match(node):
            yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _hex_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _hex_strings(v)


@dataclass(frozen=True)
class Attribution:
    label: str
    matched: int
    candidates: int

    @property
    def ratio(self) -> float:
        return self.matched / self.candidates if self.candidates else 0.0

    @property
    def identified(self) -> bool:
        # ≥ 5 matching marks: chance of a false attribution ≤ 2^-80 per key.
        return self.matched >= 5 and self.ratio >= 0.5


def identify(records: Iterable[Any], keys: Mapping[str, bytes]) -> list[Attribution]:
    """Score each labelled key against the hex values of ``records``; best first."""
    values = [v for r in records for v in _hex_strings(r)]
    out = []
    for label, key in keys.items():
        wm = Watermarker(key, ())
        matched = sum(1 for v in values if wm.carries(v))
        out.append(Attribution(label, matched, len(values)))
    return sorted(out, key=lambda a: (-a.matched, a.label))
