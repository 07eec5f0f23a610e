"""The detection rules: one regular expression per rule plus a validator run on candidates.

Every ``regex`` is written in the subset that Python's ``re`` (with ``re.ASCII``) and
Hyperscan both understand with the same meaning: no look-around, no back-references, no
``^``/``$``, bounded repetitions where backtracking could otherwise go quadratic, and no
pattern that can match the empty string or the NUL character (NUL separates fields when
the pure-Python engine scans a whole record at once). ``prefilter`` is an optional
Hyperscan expression that matches wherever ``regex`` does (a superset) but costs less to
run; Hyperscan only says which rules fired in which field, and ``re`` then extracts the
candidates, so both engines produce the same candidates.

A validator gets the field's normalised text, a candidate span and whether the field has
context for the rule's type, and returns the accepted spans with a confidence.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from trustzones.dlp._validators import (
    card_brand,
    iban_length,
    iban_valid,
    ipv6_valid,
    jwt_valid,
    luhn_valid,
    ssn_valid,
)

__all__ = [
    "ENTITY_TYPES",
    "KEYWORDS",
    "NOT_IP",
    "RULES",
    "Rule",
    "field_context",
    "keyword_near",
]

Span = tuple[int, int, float]
Validator = Callable[[str, int, int, bool], list[Span]]

ENTITY_TYPES: tuple[str, ...] = (
    "CREDIT_CARD",
    "US_SSN",
    "IBAN",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "IP_ADDRESS",
    "AWS_ACCESS_KEY_ID",
    "GITHUB_TOKEN",
    "JWT",
    "PRIVATE_KEY",
    "GOOGLE_API_KEY",
    "SLACK_TOKEN",
    "STRIPE_SECRET_KEY",
)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    type: str
    regex: str
    validate: Validator
    prefilter: str | None = None
    #: Only tried in fields whose name gives context for ``type``, or (when ``keywords``)
    #: whose text contains one of the type's keywords.
    context_only: bool = False
    keywords: bool = False


# -- context ---------------------------------------------------------------------------

_FIELD_WORDS: dict[str, frozenset[str]] = {
    "CREDIT_CARD": frozenset(
        {"card", "cards", "cc", "ccn", "pan", "ccnum", "cardnumber", "cardno", "creditcard"}
    ),
    "US_SSN": frozenset({"ssn", "ssns", "social", "socialsecurity", "socialsecuritynumber"}),
    "PHONE_NUMBER": frozenset(
        {"phone", "phones", "tel", "telephone", "mobile", "cell", "fax", "msisdn", "phonenumber"}
    ),
    "EMAIL_ADDRESS": frozenset({"email", "emails", "mail", "emailaddress"}),
    "IBAN": frozenset({"iban"}),
    "IP_ADDRESS": frozenset({"ip", "ipv4", "ipv6", "ipaddr", "ipaddress"}),
}
_FIELD_SUBSTRINGS: dict[str, tuple[str, ...]] = {
    "CREDIT_CARD": ("creditcard", "cardnum", "cardnumber"),
    "US_SSN": ("socialsecurity",),
    "PHONE_NUMBER": ("phone", "mobile", "telephone"),
    "EMAIL_ADDRESS": ("email",),
    "IBAN": ("iban",),
    "IP_ADDRESS": ("ipaddr",),
}
#: A field with one of these words holds versions or builds, not IP addresses.
_NOT_IP_WORDS = frozenset({"version", "ver", "build", "release"})
NOT_IP = "!IP_ADDRESS"

_CAMEL = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_context_cache: dict[str, frozenset[str]] = {}


def _key_context(key: str) -> frozenset[str]:
    words = {w.lower() for w in _CAMEL.findall(key)}
    compact = "".join(ch for ch in key.lower() if ch.isalnum())
    found = set()
    for type_, vocab in _FIELD_WORDS.items():
        if (
            words & vocab
            or compact in vocab
            or any(s in compact for s in _FIELD_SUBSTRINGS.get(type_, ()))
        ):
            found.add(type_)
    if words & _NOT_IP_WORDS:
        found.add(NOT_IP)
    return frozenset(found)


def field_context(key: str) -> frozenset[str]:
    """Entity types that a field named ``key`` makes likely (cached)."""
    ctx = _context_cache.get(key)
    if ctx is None:
        ctx = _key_context(key)
        if len(_context_cache) < 4096:
            _context_cache[key] = ctx
    return ctx


#: Words that give context in free text (lower case; matched case-insensitively).
KEYWORDS: dict[str, str] = {
    "US_SSN": r"ssn|social security|soc\.? sec|ss#",
    "CREDIT_CARD": r"card|visa|mastercard|amex|credit|debit|\bcc\b|\bpan\b",
    "PHONE_NUMBER": r"phone|\btel\b|call|mobile|cell|fax|whatsapp|\bsms\b",
}
_KEYWORDS = {t: re.compile(rx, re.ASCII) for t, rx in KEYWORDS.items()}
_VERSION_WORDS = re.compile(r"version|\bver\b|\bv\.?\s*$|release|build")
_WINDOW = 48


def keyword_near(type_: str, text: str, start: int, *, window: int = _WINDOW) -> bool:
    """True when a keyword for ``type_`` occurs in the ``window`` characters before
    ``start``."""
    rx = _KEYWORDS.get(type_)
    return rx is not None and rx.search(text[max(0, start - window) : start].lower()) is not None


# -- helpers ---------------------------------------------------------------------------


def _prev(text: str, i: int, k: int = 1) -> str:
    return text[i - k] if i - k >= 0 else ""


def _next(text: str, i: int, k: int = 0) -> str:
    return text[i + k] if i + k < len(text) else ""


def _in_longer_number(text: str, s: int, e: int, seps: str) -> bool:
    """True when ``[s, e)`` continues a number through one of ``seps`` on either side."""
    if s >= 2 and text[s - 1] in seps and text[s - 2].isdigit():
        return True
    return e + 1 < len(text) and text[e] in seps and text[e + 1].isdigit()


# -- CREDIT_CARD -----------------------------------------------------------------------


_TO_SPACE = str.maketrans("-.()+", "     ")
_STRIP_SEPARATORS = str.maketrans("", "", " -.()+")


_RUN = re.compile(r"\d+", re.ASCII)


def _digit_runs(text: str, s: int, e: int) -> list[tuple[int, int]]:
    """The runs of ASCII digits in ``text[s:e]`` as (start, end) pairs, for spans made of
    digits and the separators space, ``-``, ``.``, ``(``, ``)`` and ``+``."""
    return [m.span() for m in _RUN.finditer(text, s, e)]


def _card_conf(digits: str, ctx: bool) -> float:
    """Luhn-valid numbers of a known network; any Luhn-valid number in a card field."""
    if not luhn_valid(digits) or digits.count(digits[0]) == len(digits):
        return 0.0
    if card_brand(digits) is not None:
        return 0.99 if ctx else 0.9
    return 0.6 if ctx else 0.0


#: How card numbers are grouped when written with separators: 4-4-4-4, 4-4-4-4-3 and
#: 4-4-4-1 (Visa 13), 4-4-4-3, 4-6-5 (Amex), 4-6-4 (Diners 14). A part of a longer run of
#: digit groups grouped otherwise is only a card when the field says so (the start of a
#: UUID, the end of a tracking number).
_CARD_GROUPINGS = frozenset(
    {(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 4, 4, 1), (4, 4, 4, 3), (4, 6, 5), (4, 6, 4)}
)
_IBAN_HEAD = re.compile(r"[A-Za-z]{2}\d{2} $")


def _card(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if (s >= 2 and text[s - 1] == "." and text[s - 2].isdigit()) or (
        e + 1 < len(text) and text[e] == "." and text[e + 1].isdigit()
    ):
        return []  # part of a longer dotted number
    span = text[s:e]
    if span.isdigit():
        conf = _card_conf(span, ctx) if len(span) <= 19 else 0.0
        return [(s, e, conf)] if conf else []
    if s >= 5 and _IBAN_HEAD.search(text, s - 5, s):
        return []
    groups = _digit_runs(text, s, e)
    digits = [text[a:b] for a, b in groups]
    last = len(groups) - 1
    # The whole run first (the usual case: one card, grouped or not).
    whole = "".join(digits)
    if 13 <= len(whole) <= 19:
        conf = _card_conf(whole, ctx)
        if conf:
            return [(groups[0][0], groups[last][1], conf)]
    sizes = tuple(b - a for a, b in groups)

    # The whole run, else the longest run of whole groups at its start or at its end (a
    # card followed by a CVV or a year, or preceded by a short number), then the rest of
    # the run the same way. Windows inside a long run (tracking numbers) are not tried.
    def solve(i: int, j: int) -> list[Span]:
        for k in range(j - i + 1):
            for a, b in ((i, j),) if k == 0 else ((i, j - k), (i + k, j)):
                if not ctx and (a, b) != (0, last) and sizes[a : b + 1] not in _CARD_GROUPINGS:
                    continue
                d = "".join(digits[a : b + 1])
                if 13 <= len(d) <= 19:
                    conf = _card_conf(d, ctx)
                    if conf:
                        return [
                            *solve(i, a - 1),
                            (groups[a][0], groups[b][1], conf),
                            *solve(b + 1, j),
                        ]
        return []

    # The whole run failed above: go on with the shorter windows, which hold fewer digits
    # the further they go (a window of fewer than 13 digits is never a card).
    if len(whole) - min(sizes[0], sizes[last]) < 13:
        return []
    for k in range(1, last + 1):
        for a, b in ((0, last - k), (k, last)):
            if not ctx and sizes[a : b + 1] not in _CARD_GROUPINGS:
                continue
            d = "".join(digits[a : b + 1])
            if 13 <= len(d) <= 19:
                conf = _card_conf(d, ctx)
                if conf:
                    return [
                        *solve(0, a - 1),
                        (groups[a][0], groups[b][1], conf),
                        *solve(b + 1, last),
                    ]
    return []


# -- US_SSN ----------------------------------------------------------------------------


def _ssn_sep(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    span = text[s:e]
    if _in_longer_number(text, s, e, "-." if span[3] == "-" else "- ."):
        return []
    digits = span[:3] + span[4:6] + span[7:]
    if not ssn_valid(digits):
        return []
    ctx = ctx or keyword_near("US_SSN", text, s)
    if ctx:
        return [(s, e, 0.95)]
    return [(s, e, 0.85 if span[3] == "-" else 0.7)]


def _ssn_bare(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if _in_longer_number(text, s, e, ".,-"):
        return []
    if not (ctx or keyword_near("US_SSN", text, s, window=24)):
        return []
    return [(s, e, 0.7)] if ssn_valid(text[s:e]) else []


# -- IBAN ------------------------------------------------------------------------------


def _iban_compact(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    return [(s, e, 0.95)] if iban_valid(text[s:e].upper()) else []


def _iban_spaced(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    span = text[s:e].upper()
    length = iban_length(span[:2])
    if length is None:
        return []
    chars: list[str] = []
    end = s
    for i, ch in enumerate(span):
        if ch != " ":
            chars.append(ch)
            if len(chars) == length:
                end = s + i + 1
                break
    if len(chars) != length or (end < e and text[end] != " "):
        return []
    return [(s, end, 0.95)] if iban_valid("".join(chars)) else []


# -- EMAIL_ADDRESS ---------------------------------------------------------------------

_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "css", "js", "json", "txt"}
)


def _email(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    tld = text[text.rindex(".", s, e) + 1 : e].lower()
    if tld in _FILE_EXTENSIONS:
        return []
    return [(s, e, 0.95 if ctx else 0.9)]


# -- PHONE_NUMBER ----------------------------------------------------------------------

# ITU-T E.164 country calling codes in use (1 to 3 digits).
_CALLING_CODES = frozenset(
    """
1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61
62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98 211 212 213 216 218 220 221 222 223 224
225 226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246
247 248 249 250 251 252 253 254 255 256 257 258 260 261 262 263 264 265 266 267 268 269
290 291 297 298 299 350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376
377 378 379 380 381 382 383 385 386 387 389 420 421 423 500 501 502 503 504 505 506 507
508 509 590 591 592 593 594 595 596 597 598 599 670 672 673 674 675 676 677 678 679 680
681 682 683 685 686 687 688 689 690 691 692 800 808 850 852 853 855 856 870 878 880 881
882 883 886 888 960 961 962 963 964 965 966 967 968 970 971 972 973 974 975 976 977 979
992 993 994 995 996 998
""".split()  # noqa: SIM905
)


def _phone_intl(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if _prev(text, s).isalnum() or _next(text, e).isalnum():
        return []
    groups = _digit_runs(text, s, e)
    digits = text[s + 1 : e].translate(_STRIP_SEPARATORS)
    if not (
        digits[:1] in _CALLING_CODES or digits[:2] in _CALLING_CODES or digits[:3] in _CALLING_CODES
    ):
        return []
    want = 11 if digits[0] == "1" else 15
    # Drop trailing groups until the number is short enough (a year or CVV may follow).
    lengths = [b - a for a, b in groups]
    n = sum(lengths)
    while groups and n > want:
        groups.pop()
        n -= lengths.pop()
    if not groups:
        return []
    if n < 8 or (digits[0] == "1" and n != 11):
        return []
    end = groups[-1][1]
    if text.count("(", s, end) != text.count(")", s, end):
        return []
    return [(s, end, 0.95 if ctx else 0.85)]


def _phone_nanp(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if _prev(text, s) == "+" or _in_longer_number(text, s, e, ".-"):
        return []
    digits = text[s:e].translate(_STRIP_SEPARATORS)  # the span is digits and separators
    if len(digits) == 11 and digits[0] != "1":
        return []
    area, exchange = digits[-10:-7], digits[-7:-4]
    if area[0] in "01" or exchange[0] in "01" or area[1:] == "11":
        return []
    ctx = ctx or keyword_near("PHONE_NUMBER", text, s)
    return [(s, e, 0.9 if ctx else 0.75)]


def _phone_loose(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if not ctx:
        return []
    if _prev(text, s).isalnum() or _in_longer_number(text, s, e, "."):
        return []
    span = text[s:e]
    n = len(span.translate(_STRIP_SEPARATORS))  # the span is digits and separators
    if n < 7 or n > 15 or span.count("(") != span.count(")"):
        return []
    return [(s, e, 0.6)]


# -- IP_ADDRESS ------------------------------------------------------------------------


def _ipv4(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if _in_longer_number(text, s, e, "."):
        return []
    if _VERSION_WORDS.search(text[max(0, s - 12) : s].lower()):
        return []
    return [(s, e, 0.9 if ctx else 0.85)]


def _ipv6(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    before, after = _prev(text, s), _next(text, e)
    if before.isalnum() or before in (":", ".") or after.isalnum() or after == ":":
        return []
    return [(s, e, 0.9)] if ipv6_valid(text[s:e]) else []


# -- secrets ---------------------------------------------------------------------------


def _accept(conf: float) -> Validator:
    def validate(text: str, s: int, e: int, ctx: bool) -> list[Span]:
        return [(s, e, conf)]

    return validate


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _jwt(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    return [(s, e, 0.95)] if jwt_valid(text[s:e]) else []


def _google(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    return [] if _next(text, e) in _B64URL else [(s, e, 0.9)]


def _slack(text: str, s: int, e: int, ctx: bool) -> list[Span]:
    if _next(text, e).isalnum():
        return []
    parts = text[s:e].split("-")
    return [(s, e, 0.9)] if len(parts) >= 3 and any(p.isdigit() for p in parts) else []


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H = r"[0-9A-Fa-f]{1,4}"
_V4TAIL = r"\d{1,3}(?:\.\d{1,3}){3}"

RULES: tuple[Rule, ...] = (
    Rule(
        "card",
        "CREDIT_CARD",
        r"\b\d(?:[ -]?\d){12,59}\b",
        _card,
        prefilter=r"\b\d(?:[ -]?\d){12}",
    ),
    Rule("ssn", "US_SSN", r"\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b", _ssn_sep),
    Rule("ssn_bare", "US_SSN", r"\b\d{9}\b", _ssn_bare, context_only=True, keywords=True),
    Rule(
        "iban",
        "IBAN",
        r"\b[A-Za-z]{2}\d{2}[A-Za-z0-9]{11,30}\b",
        _iban_compact,
        prefilter=r"\b[A-Za-z]{2}\d{2}[A-Za-z0-9]{11}",
    ),
    Rule(
        "iban_spaced",
        "IBAN",
        r"\b[A-Za-z]{2}\d{2}(?: [A-Za-z0-9]{4}){2,8}(?: [A-Za-z0-9]{1,3})?\b",
        _iban_spaced,
        prefilter=r"[A-Za-z]{2}\d{2} [A-Za-z0-9]{4} [A-Za-z0-9]{4}",
    ),
    Rule(
        "email",
        "EMAIL_ADDRESS",
        r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}"
        r"\.[A-Za-z]{2,24}\b",
        _email,
        prefilter=r"[A-Za-z0-9._%+-]@[A-Za-z0-9-]",
    ),
    Rule(
        "phone_intl",
        "PHONE_NUMBER",
        r"\+[1-9]\d{0,14}(?:[ .-]?\(\d{1,4}\)\d{0,12}|[ .-]\d{1,14}){0,7}",
        _phone_intl,
        prefilter=r"\+[1-9]",
    ),
    Rule(
        "phone_nanp",
        "PHONE_NUMBER",
        r"(?:\b1[ .-]?)?(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b",
        _phone_nanp,
    ),
    Rule(
        "phone_loose",
        "PHONE_NUMBER",
        r"(?:\+|\b)\d[\d ().-]{5,20}\d\b",
        _phone_loose,
        context_only=True,
    ),
    Rule("ipv4", "IP_ADDRESS", rf"\b(?:{_OCTET}\.){{3}}{_OCTET}\b", _ipv4),
    Rule(
        "ipv6",
        "IP_ADDRESS",
        rf"(?:{_H}:){{7}}{_H}|(?:{_H}:){{6}}{_V4TAIL}"
        rf"|(?:(?:{_H}:){{1,7}}|:):(?:{_H}(?::{_H}){{0,6}})?(?:(?:\.\d{{1,3}}){{3}})?",
        _ipv6,
        prefilter=rf"::|(?:{_H}:){{6}}[0-9A-Fa-f]",
    ),
    Rule(
        "aws_key",
        "AWS_ACCESS_KEY_ID",
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        _accept(0.9),
        prefilter=r"AKIA|ASIA|ABIA|ACCA",
    ),
    Rule(
        "github_token",
        "GITHUB_TOKEN",
        r"\bgh[pousr]_[A-Za-z0-9]{36,251}\b|\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b",
        _accept(0.95),
        prefilter=r"gh[pousr]_|github_pat_",
    ),
    Rule(
        "jwt",
        "JWT",
        r"\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",
        _jwt,
        prefilter=r"\beyJ[A-Za-z0-9_-]{2}",
    ),
    Rule(
        "private_key",
        "PRIVATE_KEY",
        r"-----BEGIN[A-Z ]{0,30} PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[A-Za-z0-9+/=\s\\:,.]|-[A-Za-z0-9])*"
        r"(?:-----END[A-Z ]{0,30} PRIVATE KEY(?: BLOCK)?-----)?",
        _accept(0.99),
        prefilter=r"-----BEGIN[A-Z ]{0,30} PRIVATE KEY",
    ),
    Rule(
        "google_api_key",
        "GOOGLE_API_KEY",
        r"\bAIza[0-9A-Za-z_-]{35}",
        _google,
        prefilter=r"\bAIza",
    ),
    Rule(
        "slack_token",
        "SLACK_TOKEN",
        r"\bxox[abposr]-[0-9A-Za-z-]{10,250}",
        _slack,
        prefilter=r"\bxox[abposr]-",
    ),
    Rule(
        "stripe_key",
        "STRIPE_SECRET_KEY",
        r"\b[rs]k_live_[0-9A-Za-z]{20,247}\b",
        _accept(0.95),
        prefilter=r"\b[rs]k_live_",
    ),
)
