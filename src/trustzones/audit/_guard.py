"""The sensitive-value guard behind :mod:`trustzones.audit.events`.

The contract is structural: every string in an event is a *reference* (an identifier without
spaces, such as a principal, topic or grant id), a *digest* (``sha256:`` + 64 hex digits), or
the short free-text ``reason``. On top of that, a best-effort scan refuses strings that look
like a secret or personal data slipped in by mistake: payment card numbers (Luhn-valid runs
of 14 to 19 digits, or groups of four), US social security numbers, JSON Web Tokens, PEM
blocks, AWS access key ids, ``password=...`` style assignments, and long runs of hex digits
(raw keys or bare hashes; use :func:`content_hash` for hashes). The scan is a seat belt, not
the contract: the ``dlp`` part owns real content inspection.

Errors name the field and the rule, never the value.
"""

from __future__ import annotations

import functools
import re

__all__ = [
    "MAX_REF",
    "MAX_TEXT",
    "check_digest",
    "check_reference",
    "check_text",
    "digest_ok",
    "reference_ok",
    "reference_problem",
    "text_ok",
]

MAX_REF = 256
MAX_TEXT = 512

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

_SUSPECT = re.compile(
    r"""
      (?P<pan>(?<![0-9A-Za-z])(?:\d{14,19}|\d{4}([ -])\d{4}\2\d{4}\2\d{1,7}|\d{4}[ -]\d{6}[ -]\d{5})
              (?![0-9A-Za-z]))
    | (?P<ssn>(?<![0-9A-Za-z-])(?P<area>\d{3})-(?P<group>\d{2})-(?P<serial>\d{4})(?![0-9A-Za-z-]))
    | (?P<jwt>eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.)
    | (?P<pem>-----BEGIN[ A-Z]*-----)
    | (?P<aws>(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9]))
    | (?P<assign>(?i:\b(?:pass(?:word|wd)?|secret|api[_-]?key|token|credential)s?)=\S)
    | (?P<hex>(?<![0-9A-Fa-f])[0-9A-Fa-f]{40,}(?![0-9A-Fa-f]))
    """,
    re.VERBOSE,
)

_WHAT = {
    "pan": "a payment card number",
    "ssn": "a social security number",
    "jwt": "a JSON Web Token",
    "pem": "a PEM key or certificate block",
    "aws": "an AWS access key id",
    "assign": "a secret assignment (password=..., token=...)",
    "hex": "a long hex string (a raw key or a bare hash: use content_hash())",
}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Anything suspect contains one of these; most references contain none, so the full scan
# (which is slow: look-behinds at every position) rarely runs.
_TRIGGER = re.compile(r"\d{3}|eyJ|-----|AKIA|ASIA|=|[0-9A-Fa-f]{40}")


@functools.lru_cache(maxsize=1 << 16)
def _suspect(value: str) -> str | None:
    """What ``value`` looks like it holds (a key of ``_WHAT``), or ``None``. Cached: the same
    principals, zones and topics come back in event after event."""
    if not _TRIGGER.search(value):
        return None
    for m in _SUSPECT.finditer(value):
        pan, ssn = m.group("pan"), m.group("ssn")
        if pan is not None:
            if _luhn(pan.replace(" ", "").replace("-", "")):
                return "pan"
        elif ssn is not None:
            area, group, serial = m.group("area"), m.group("group"), m.group("serial")
            if not (area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000"):
                return "ssn"
        else:
            return m.lastgroup or "hex"
    return None


def _scan(field: str, value: str) -> None:
    kind = _suspect(value)
    if kind is not None:
        raise ValueError(
            f"{field} looks like it holds {_WHAT[kind]}; audit events carry "
            "references and hashes only, never sensitive values"
        )


@functools.lru_cache(maxsize=1 << 16)
def _reference_problem(value: str, limit: int) -> str | None:
    if not 0 < len(value) <= limit:
        return f"must be 1 to {limit} characters"
    if not value.isprintable() or " " in value:
        return (
            "must be a reference (an identifier without spaces or control characters); put "
            "explanations in 'reason' and content in content_hash()"
        )
    kind = _suspect(value)
    if kind is not None:
        return (
            f"looks like it holds {_WHAT[kind]}; audit events carry references and hashes "
            "only, never sensitive values"
        )
    return None


def check_reference(field: str, value: str, *, limit: int = MAX_REF) -> str:
    """A reference: 1..limit printable characters without whitespace, and nothing suspect."""
    problem = _reference_problem(value, limit)
    if problem is not None:
        raise ValueError(f"{field} {problem}")
    return value


def check_text(field: str, value: str) -> str:
    """Short free text (the ``reason``): printable, at most MAX_TEXT characters, nothing suspect."""
    if len(value) > MAX_TEXT:
        raise ValueError(f"{field} must be at most {MAX_TEXT} characters")
    if not value.isprintable():
        raise ValueError(f"{field} must not contain control, format or line-break characters")
    _scan(field, value)
    return value


def check_digest(field: str, value: str) -> str:
    """A digest: ``sha256:`` followed by 64 lowercase hex digits."""
    if not _DIGEST.fullmatch(value):
        raise ValueError(
            f"{field} must be a digest 'sha256:<64 lowercase hex digits>' (see content_hash())"
        )
    return value


# Boolean forms for the event fast path (``events._fast_event``): the same rules as the
# ``check_*`` functions above, without building an error message.


reference_problem = _reference_problem
"""Why ``value`` is not a reference of at most ``limit`` characters, or ``None`` (cached)."""


def reference_ok(value: str, limit: int) -> bool:
    """``check_reference`` would accept ``value`` (cached)."""
    return _reference_problem(value, limit) is None


@functools.lru_cache(maxsize=1 << 12)
def text_ok(value: str) -> bool:
    """``check_text`` would accept ``value`` (cached: reasons repeat)."""
    return len(value) <= MAX_TEXT and value.isprintable() and _suspect(value) is None


def digest_ok(value: str) -> bool:
    """``check_digest`` would accept ``value``."""
    return _DIGEST.fullmatch(value) is not None
