"""Checksums and structure rules that confirm a candidate. Pure functions on ASCII text."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re

import orjson

__all__ = [
    "card_brand",
    "iban_valid",
    "ipv6_valid",
    "jwt_valid",
    "luhn_check_digit",
    "luhn_valid",
    "ssn_valid",
]

# Luhn doubles every second digit from the right and adds the digits of the product.
# Digits are summed as bytes: the tables map b"0".."9" to their (doubled) digit values.
_PLAIN = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED = bytes.maketrans(b"0123456789", bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))


def _luhn_sum(digits: str, doubled_first: bool) -> int:
    b = digits.encode("ascii")
    plain, doubled = (b[-2::-2], b[-1::-2]) if doubled_first else (b[-1::-2], b[-2::-2])
    return sum(plain.translate(_PLAIN)) + sum(doubled.translate(_DOUBLED))


def luhn_valid(digits: str) -> bool:
    """True when the ASCII digit string passes the Luhn (mod 10) check."""
    return _luhn_sum(digits, False) % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that, appended to ``payload``, makes it Luhn-valid."""
    return str(-_luhn_sum(payload, True) % 10)


def card_brand(digits: str) -> str | None:
    """The card network whose IIN range and length fit ``digits``, or None.

    Ranges: Visa 4 (13, 16, 19 digits); Mastercard 51-55 and 2221-2720 (16); American
    Express 34, 37 (15); Discover 6011, 644-649, 65, 622126-622925 (16-19); JCB 3528-3589
    (16-19); Diners Club 300-305, 3095, 36, 38, 39 (14-19); UnionPay 62 (16-19);
    Mir 2200-2204 (16). Prefixes compare as strings of equal length.
    """
    n = len(digits)
    if n < 13 or n > 19:
        return None
    first = digits[0]
    if first == "4":
        return "visa" if n in (13, 16, 19) else None
    if first == "5":
        return "mastercard" if "1" <= digits[1] <= "5" and n == 16 else None
    p4 = digits[:4]
    if first == "2":
        if n != 16:
            return None
        if "2221" <= p4 <= "2720":
            return "mastercard"
        return "mir" if "2200" <= p4 <= "2204" else None
    p2 = digits[:2]
    if first == "3":
        if p2 == "34" or p2 == "37":
            return "amex" if n == 15 else None
        if "3528" <= p4 <= "3589":
            return "jcb" if n >= 16 else None
        if "300" <= digits[:3] <= "305" or p4 == "3095" or p2 in ("36", "38", "39"):
            return "diners" if n >= 14 else None
        return None
    if first == "6" and n >= 16:
        if p4 == "6011" or "644" <= digits[:3] <= "649" or p2 == "65":
            return "discover"
        if p2 == "62":
            return "discover" if "622126" <= digits[:6] <= "622925" else "unionpay"
    return None


_SSN_RESERVED = frozenset({"078051120", "219099999"})


def ssn_valid(digits: str) -> bool:
    """SSA rules for a 9-digit SSN: area not 000, 666 or 900-999; group not 00; serial not
    0000; and not one of the numbers the SSA voided after they were published (078-05-1120,
    219-09-9999)."""
    if len(digits) != 9:
        return False
    area = digits[:3]
    if area == "000" or area == "666" or area[0] == "9":
        return False
    if digits[3:5] == "00" or digits[5:] == "0000":
        return False
    return digits not in _SSN_RESERVED


# SWIFT IBAN registry: BBAN structure per country (n digits, a upper-case letters,
# c upper-case alphanumerics). The IBAN length is 4 plus the BBAN length.
_IBAN_BBAN = (
    "AD:4n4n12c AE:3n16n AL:8n16c AT:5n11n AZ:4a20c BA:3n3n8n2n BE:3n7n2n BG:4a4n2n8c "
    "BH:4a14c BI:5n5n11n2n BR:8n5n10n1a1c BY:4c4n16c CH:5n12c CR:4n14n CY:3n5n16c CZ:4n16n "
    "DE:8n10n DJ:5n5n11n2n DK:4n9n1n DO:4c20n EE:2n14n EG:4n4n17n ES:4n4n1n1n10n FI:3n11n "
    "FK:2a12n FO:4n9n1n FR:5n5n11c2n GB:4a6n8n GE:2a16n GI:4a15c GL:4n9n1n GR:3n4n16c "
    "GT:4c20c HN:4a20n HR:7n10n HU:3n4n1n15n1n IE:4a6n8n IL:3n3n13n IQ:4a3n12n "
    "IS:4n2n6n10n IT:1a5n5n12c JO:4a4n18c KW:4a22c KZ:3n13c LB:4n20c LC:4a24c LI:5n12c "
    "LT:5n11n LU:3n13c LV:4a13c LY:3n3n15n MC:5n5n11c2n MD:2c18c ME:3n13n2n MK:3n10c2n "
    "MN:4n12n MR:5n5n11n2n MT:4a5n18c MU:4a2n2n12n3n3a NI:4a20n NL:4a10n NO:4n6n1n "
    "OM:3n16c PK:4a16c PL:8n16n PS:4a21c PT:4n4n11n2n QA:4a21c RO:4a16c RS:3n13n2n "
    "RU:9n5n15c SA:2n18c SC:4a2n2n16n3a SD:2n12n SE:3n16n1n SI:5n8n2n SK:4n6n10n "
    "SM:1a5n5n12c SO:4n3n12n ST:4n4n11n2n SV:4a20n TL:3n14n2n TN:2n3n13n2n TR:5n1n16c "
    "UA:6n19c VA:3n15n VG:4a16n XK:4n10n2n YE:4a4n18c"
)
_CLASS = {"n": "[0-9]", "a": "[A-Z]", "c": "[A-Z0-9]"}


def _bban_table() -> dict[str, tuple[int, re.Pattern[str]]]:
    table: dict[str, tuple[int, re.Pattern[str]]] = {}
    for entry in _IBAN_BBAN.split():
        country, spec = entry.split(":")
        parts = re.findall(r"(\d+)([nac])", spec)
        length = 4 + sum(int(n) for n, _ in parts)
        rx = re.compile("".join(f"{_CLASS[k]}{{{n}}}" for n, k in parts))
        table[country] = (length, rx)
    return table


IBAN_COUNTRIES = _bban_table()
_BASE36 = str.maketrans({chr(65 + i): str(10 + i) for i in range(26)})


def iban_length(country: str) -> int | None:
    """The IBAN length for a two-letter country code, or None when it has no IBAN."""
    entry = IBAN_COUNTRIES.get(country)
    return entry[0] if entry else None


def iban_valid(iban: str) -> bool:
    """True for an upper-case IBAN without spaces with the country's length and BBAN
    structure and a correct ISO 7064 mod-97-10 check (ISO 13616)."""
    entry = IBAN_COUNTRIES.get(iban[:2])
    if entry is None or len(iban) != entry[0] or not iban[2:4].isdigit():
        return False
    if entry[1].fullmatch(iban, 4) is None:
        return False
    rearranged = iban[4:] + iban[:4]
    # Letters become 10..35 (A..Z); the structure check above allows nothing else.
    return int(rearranged.translate(_BASE36)) % 97 == 1


def ipv6_valid(text: str) -> bool:
    """True for an IPv6 address in any RFC 4291 text form (no zone id)."""
    if text.count(":") < 7 and "::" not in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _b64url_json(part: str) -> object:
    padded = part + "=" * (-len(part) % 4)
    return orjson.loads(base64.urlsafe_b64decode(padded))


def jwt_valid(token: str) -> bool:
    """True for a compact JWS (RFC 7515) whose header is a JSON object naming ``alg`` and
    whose payload is a JSON object (RFC 7519). The signature is not verified."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[0]) % 4 == 1 or len(parts[1]) % 4 == 1:
        return False
    try:
        header = _b64url_json(parts[0])
        payload = _b64url_json(parts[1])
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return False
    return (
        isinstance(header, dict)
        and isinstance(header.get("alg"), str)
        and (isinstance(payload, dict))
    )
