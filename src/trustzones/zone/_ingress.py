"""Ingress checks: what a record must pass before it is stored in a zone.

Order: size → JSON parse (with a nesting limit) → schema validation. A failing record is
refused back to its producer with the field path and the rule it broke; the value itself is
never echoed, because it may be the very secret the rule exists to keep out.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import jsonschema_rs
import orjson

from trustzones.errors import RecordRejected

MAX_DEPTH = 64


def json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _depth(obj: Any, limit: int) -> int:
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        o, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _describe(err: jsonschema.ValidationError) -> str:
    v = err.validator
    rule = err.validator_value
    if v == "required":
        # jsonschema's message names only the missing property.
        return err.message
    if v in ("additionalProperties", "unevaluatedProperties"):
        schema = err.schema if isinstance(err.schema, Mapping) else {}
        extra = (
            sorted(set(err.instance) - set(schema.get("properties") or {}))
            if isinstance(err.instance, dict)
            else []
        )
        return f"unexpected field(s) {', '.join(map(repr, extra))} (the schema does not allow them)"
    if v == "type":
        return f"must be of type {rule!r}"
    if v == "enum":
        return f"must be one of {list(rule) if isinstance(rule, list | tuple) else rule!r}"
    if v in (
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "multipleOf",
        "const",
    ):
        return f"breaks the schema rule {v}={rule!r}"
    if v == "pattern":
        return f"does not match the pattern {rule!r}"
    if v == "format":
        return f"is not a valid {rule}"
    return f"breaks the schema rule {v!r}"


@dataclass
class TopicValidator:
    """Compiled checks for one topic."""

    topic: str
    schema: Mapping[str, Any] | None
    max_bytes: int
    schema_version: str = field(init=False)
    _validator: jsonschema.protocols.Validator | None = field(init=False, default=None)
    _fast: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.schema is not None:
            cls = jsonschema.validators.validator_for(self.schema)
            self._validator = cls(self.schema, format_checker=cls.FORMAT_CHECKER)
            # The compiled (Rust) validator decides; the Python one only explains a refusal,
            # with messages that never quote the value.
            self._fast = jsonschema_rs.validator_for(dict(self.schema))
            self.schema_version = hashlib.sha256(
                orjson.dumps(self.schema, option=orjson.OPT_SORT_KEYS)
            ).hexdigest()[:12]
        else:
            self.schema_version = "none"

    def accepts(self, doc: Any, size: int) -> bool:
        """Whether an already-decoded record of ``size`` bytes passes (no explanation: call
        :meth:`check` on a refusal to learn why)."""
        if size > self.max_bytes:
            return False
        return self._fast is None or bool(self._fast.is_valid(doc))

    def check(self, value: bytes, index: int | None = None) -> Any:
        """The decoded record, or :class:`RecordRejected` saying what and where."""
        if len(value) > self.max_bytes:
            raise RecordRejected(
                f"record is {len(value)} bytes; zone limit is {self.max_bytes}", index=index
            )
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RecordRejected(
                f"not valid JSON ({exc.args[0].split(':')[0]})", index=index
            ) from None
        if _depth(doc, MAX_DEPTH) > MAX_DEPTH:
            raise RecordRejected(f"nested deeper than {MAX_DEPTH} levels", index=index)
        if self._validator is not None and not self._fast.is_valid(doc):
            err = jsonschema.exceptions.best_match(self._validator.iter_errors(doc))
            if err is None:  # the validators disagree: refuse (fail closed), say so
                raise RecordRejected(f"does not match the schema of {self.topic!r}", index=index)
            raise RecordRejected(
                f"does not match the schema of {self.topic!r}: {_describe(err)}",
                index=index,
                path=json_path(err.absolute_path),
            )
        return doc


class TokenBucket:
    """Records-per-second limiter (one per principal and zone, per process)."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1.0, rate))
        self._tokens = self.capacity
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int = 1, *, now: float | None = None) -> bool:
        with self._lock:
            t = time.monotonic() if now is None else now
            self._tokens = min(self.capacity, self._tokens + (t - self._at) * self.rate)
            self._at = t
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False
