"""Text normalisation for detection, with offsets that map back to the original string.

Every detector works on ASCII. A string that is already ASCII is used as is; any other
string is mapped character by character, so that a finding in the normalised text maps
back to a span of the original:

1. format characters (zero-width space and joiners, BOM, soft hyphen, bidi controls) and
   combining marks are removed, so they cannot split a number;
2. every Unicode decimal digit (full-width, Arabic-Indic, Devanagari, ...) and every digit
   form with a single digit value (superscripts, circled digits) becomes its ASCII digit;
3. every space separator becomes ``" "`` and every dash becomes ``"-"``;
4. a character whose compatibility decomposition is one ASCII character (full-width
   letters and punctuation, accented Latin letters) becomes that character;
5. anything else becomes ``"\\x1a"``, which no detector treats as part of a word, so a
   number written right after a CJK word still starts at a word boundary.

Only step 1 changes the length; the offset map exists only when it did.
"""

from __future__ import annotations

import unicodedata

__all__ = ["PLACEHOLDER", "normalize", "to_original"]

PLACEHOLDER = "\x1a"
_CACHE_LIMIT = 65_536


def _map_char(cp: int) -> str:
    ch = chr(cp)
    cat = unicodedata.category(ch)
    if cat in ("Cf", "Mn", "Me"):
        return ""
    if cat == "Cs":
        return PLACEHOLDER
    dec = unicodedata.decimal(ch, None)
    if dec is not None:
        return chr(48 + dec)
    dig = unicodedata.digit(ch, None)
    if dig is not None:
        return chr(48 + dig)
    if cat[0] == "Z" or ch.isspace():
        return " "
    if cat == "Pd":
        return "-"
    decomposed = "".join(
        c for c in unicodedata.normalize("NFKD", ch) if unicodedata.category(c) not in ("Mn", "Me")
    )
    if len(decomposed) == 1 and decomposed.isascii() and decomposed.isprintable():
        return decomposed
    return PLACEHOLDER


class _Table(dict[int, str]):
    """``str.translate`` table that computes and caches the mapping of each code point."""

    def __missing__(self, cp: int) -> str:
        mapped = _map_char(cp)
        if len(self) < _CACHE_LIMIT:
            self[cp] = mapped
        return mapped


_TABLE = _Table({cp: chr(cp) for cp in range(128)})


def normalize(text: str) -> tuple[str, list[int] | None]:
    """Return the ASCII form of ``text`` and, when characters were removed, the offset map.

    The map gives, for each index of the normalised text, the index of the original
    character it came from.
    """
    if text.isascii():
        return text, None
    out = text.translate(_TABLE)
    if len(out) == len(text):
        return out, None
    table = _TABLE
    return out, [i for i, ch in enumerate(text) if table[ord(ch)]]


def to_original(index_map: list[int] | None, start: int, end: int) -> tuple[int, int]:
    """Map a non-empty span ``[start, end)`` of normalised text back to the original string."""
    if index_map is None:
        return start, end
    return index_map[start], index_map[end - 1] + 1
