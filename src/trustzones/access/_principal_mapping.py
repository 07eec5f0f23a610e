"""Kafka's ``ssl.principal.mapping.rules``: map a certificate's distinguished name to a name.

The syntax and semantics follow Kafka (KIP-371, ``SslPrincipalMapper``):

* the value is a comma-separated list of rules, tried in order; the first that matches wins;
* ``RULE:pattern/replacement/`` or ``RULE:pattern/replacement/L`` (lower case) or ``/U``
  (upper case); inside pattern and replacement, ``\\`` escapes the next character, so
  ``\\/`` is a literal slash and ``\\,`` a literal comma;
* a rule matches when ``pattern`` matches the **whole** DN (Java ``Matcher.matches``); the
  result is then ``DN.replaceAll(pattern, replacement)`` with Java's ``$n`` group references;
  a ``$n`` naming a group that does not exist stays literal text (Kafka escapes it);
* ``DEFAULT`` always matches and returns the DN unchanged; an empty rule is ignored;
* if no rule matches, there is no principal (Kafka raises ``NoMatchingRule``).

The DN is the RFC 2253/4514 string of the certificate subject, most specific attribute first
(``CN=…,OU=…,O=…,L=…,ST=…,C=…``), which is Java's ``X500Principal.getName()`` form.

Patterns are Java regular expressions run by Python's ``re`` with ASCII character classes,
which agree for everything but Java-only syntax (``\\p{…}`` classes); such a pattern is
refused when the rules are parsed.

Example::

    >>> mapper = PrincipalMapper.from_rules(
    ...     "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,DEFAULT")
    >>> mapper.name_for("CN=serviceuser,OU=ServiceUsers,O=Unknown")
    'serviceuser'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trustzones.errors import ConfigError

__all__ = ["NoMatchingRule", "PrincipalMapper"]

# Kafka's RULE_PATTERN, alternative by alternative: DEFAULT | RULE:pattern/replacement/[LU]… |
# anything (which is only valid when empty).
_RULE = r"(DEFAULT)|RULE:((\\.|[^\\/])*)/((\\.|[^\\/])*)/([LU]?).*?|(.*?)"
_SPLITTER = re.compile(r"\s*(" + _RULE + r")\s*(,\s*|$)", re.ASCII)
_PARSER = re.compile(_RULE, re.ASCII)
# Java's String.trim() removes every character up to U+0020.
_JAVA_TRIM = "".join(chr(c) for c in range(0x21))


class NoMatchingRule(ValueError):
    """No rule matched the distinguished name."""


@dataclass(frozen=True, slots=True)
class _Rule:
    is_default: bool
    pattern: re.Pattern[str] | None = None
    replacement: str = ""
    lower: bool = False
    upper: bool = False

    def apply(self, dn: str) -> str | None:
        if self.is_default or self.pattern is None:
            return dn
        if self.pattern.fullmatch(dn) is None:
            return None
        groups = self.pattern.groups
        replacement = _escape_literal_back_references(self.replacement, groups)
        result = self.pattern.sub(lambda m: _java_expand(replacement, m, groups), dn)
        if self.lower:
            return result.lower()
        if self.upper:
            return result.upper()
        return result

    def describe(self) -> str:
        if self.is_default or self.pattern is None:
            return "DEFAULT"
        suffix = "/L" if self.lower else "/U" if self.upper else ""
        return f"RULE:{self.pattern.pattern}/{self.replacement}{suffix}"


def _escape_literal_back_references(replacement: str, groups: int) -> str:
    # Kafka (after Apache NiFi): a "$n" whose number, even after dropping trailing digits,
    # names no capturing group is made literal; with no groups at all nothing is changed.
    if groups == 0:
        return replacement
    out: list[str] = []
    last = 0
    for m in re.finditer(r"\$(\d+)", replacement):
        digits = m.group(1)
        if digits.startswith("0"):
            continue
        index = int(digits)
        while index > groups and index >= 10:
            index //= 10
        if index > groups:
            out.append(replacement[last : m.start()])
            out.append("\\")
            last = m.start()
    out.append(replacement[last:])
    return "".join(out)


def _java_expand(replacement: str, match: re.Match[str], groups: int) -> str:
    # java.util.regex.Matcher.appendReplacement: "\x" is a literal x; "$n" takes the first
    # digit, then further digits while the number still names a group; "${name}" a named group.
    out: list[str] = []
    i = 0
    n = len(replacement)
    while i < n:
        c = replacement[i]
        if c == "\\":
            i += 1
            if i >= n:
                raise NoMatchingRule("character to be escaped is missing")
            out.append(replacement[i])
            i += 1
        elif c == "$":
            i += 1
            if i >= n:
                raise NoMatchingRule("illegal group reference: group index is missing")
            if replacement[i] == "{":
                end = replacement.find("}", i)
                if end < 0:
                    raise NoMatchingRule("named capturing group is missing trailing '}'")
                name = replacement[i + 1 : end]
                try:
                    out.append(match.group(name) or "")
                except IndexError:
                    raise NoMatchingRule(f"no group with name {{{name}}}") from None
                i = end + 1
                continue
            if not replacement[i].isdigit():
                raise NoMatchingRule("illegal group reference")
            ref = int(replacement[i])
            if ref > groups:
                raise NoMatchingRule(f"no group {ref}")
            i += 1
            while i < n and replacement[i].isdigit():
                candidate = ref * 10 + int(replacement[i])
                if candidate > groups:
                    break
                ref = candidate
                i += 1
            out.append(match.group(ref) or "")
        else:
            out.append(c)
            i += 1
    return "".join(out)


class PrincipalMapper:
    """Parsed ``ssl.principal.mapping.rules``; :meth:`name_for` maps a DN to a name."""

    __slots__ = ("_rules",)

    def __init__(self, rules: tuple[_Rule, ...]) -> None:
        self._rules = rules

    @classmethod
    def from_rules(cls, rules: str | None) -> PrincipalMapper:
        """Parse a rules string; ``None`` means Kafka's default, ``DEFAULT``.

        Raises :class:`~trustzones.errors.ConfigError` naming the rule that is invalid.
        """
        text = "DEFAULT" if rules is None else rules
        parsed: list[_Rule] = []
        for raw in (m.group(1) for m in _SPLITTER.finditer(text.strip(_JAVA_TRIM))):
            m = _PARSER.match(raw)
            if m is None or m.end() != len(raw):
                rest = raw[m.end() :] if m is not None else raw
                raise ConfigError(
                    f"invalid ssl.principal.mapping.rules entry {raw!r} (unmatched {rest!r}); "
                    "write RULE:pattern/replacement/ with an optional L or U after the last "
                    "slash, or DEFAULT"
                )
            if m.group(1) is not None:
                parsed.append(_Rule(is_default=True))
            elif m.group(2) is not None:
                try:
                    pattern = re.compile(m.group(2), re.ASCII)
                except re.error as exc:
                    raise ConfigError(
                        f"invalid regular expression in ssl.principal.mapping.rules entry "
                        f"{raw!r}: {exc}"
                    ) from exc
                parsed.append(
                    _Rule(
                        is_default=False,
                        pattern=pattern,
                        replacement=m.group(4),
                        lower=m.group(6) == "L",
                        upper=m.group(6) == "U",
                    )
                )
            # anything else is an empty rule, which Kafka ignores
        return cls(tuple(parsed))

    @property
    def rules(self) -> tuple[str, ...]:
        """The parsed rules in Kafka's ``toString`` form (``DEFAULT``, ``RULE:p/r/L``)."""
        return tuple(rule.describe() for rule in self._rules)

    def name_for(self, distinguished_name: str) -> str:
        """The name of the first rule that matches; :class:`NoMatchingRule` if none does."""
        for rule in self._rules:
            name = rule.apply(distinguished_name)
            if name is not None:
                return name
        raise NoMatchingRule("no ssl.principal.mapping.rules entry matches the certificate")
