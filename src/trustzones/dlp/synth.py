"""Synthetic, labelled test data: names, addresses, card numbers of every brand, IBANs,
SSNs, e-mail addresses, phone numbers, secrets, hard negatives, free text, JSON events.

>>> from trustzones.dlp.synth import Synth
>>> s = Synth(seed=7)
>>> from trustzones.dlp._validators import luhn_valid, iban_valid
>>> luhn_valid(s.card_number("amex")) and iban_valid(s.iban_compact("DE"))
True
>>> record, labels = s.labelled_event()
>>> all(l.end > l.start for l in labels)
True

Everything is generated from a seeded :class:`random.Random`, so a seed gives the same data
on every machine; nothing here is real. Each ``labelled_*`` method returns the value and its
labels: :class:`Label` (JSON path, entity type, start, end; end exclusive) as the scanner
should report them. Some numeric values are disguised the way real data hides them:
full-width or Arabic-Indic digits, a zero-width space inside.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from trustzones.dlp._paths import Segment, render_path
from trustzones.dlp._validators import (
    IBAN_COUNTRIES,
    card_brand,
    luhn_check_digit,
    luhn_valid,
    ssn_valid,
)

__all__ = ["CARD_BRANDS", "Label", "Synth", "Text"]

T = TypeVar("T")

CARD_BRANDS = ("visa", "mastercard", "amex", "discover", "jcb", "diners", "unionpay")


@dataclass(frozen=True, slots=True)
class Label:
    """Where a sensitive value is: JSON path, entity type, start and end (exclusive)."""

    path: str
    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Text:
    """A generated string and the (start, end, type) spans of the sensitive values in it."""

    text: str
    spans: tuple[tuple[int, int, str], ...] = ()


_FIRST = """
James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara
Richard Susan Joseph Jessica Thomas Sarah Charles Karen Maria José Wei Aiko Olga Ahmed
Fatima Lars Ingrid Sofia Mateo Priya Arjun Chen Yuki Kwame Amara Liam Noah Emma Zoë
Renée Jürgen Søren Ana Luís
""".split()  # noqa: SIM905
_LAST = """
Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez
Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Thompson White
Nguyen Kim Patel Müller Schmidt Rossi Dubois Novak Kowalski Tanaka Suzuki Okafor Silva
Costa Andersson Johansson O'Brien García Wang Li Zhang Ivanova
""".split()  # noqa: SIM905
_STREETS = """
Main Oak Pine Maple Cedar Elm Market Mission Broadway Park Lake Hill Sunset
""".split()  # noqa: SIM905
_STREET_KINDS = ["Street", "Avenue", "Road", "Boulevard", "Lane", "Drive", "Way", "Court"]
_CITIES = (
    ("San Francisco", "CA", "941"),
    ("New York", "NY", "100"),
    ("Austin", "TX", "787"),
    ("Seattle", "WA", "981"),
    ("Chicago", "IL", "606"),
    ("Boston", "MA", "021"),
    ("Denver", "CO", "802"),
    ("Miami", "FL", "331"),
)
_DOMAINS = """
example.com example.org example.net mail.example.com corp.example.io shop.example.co.uk
example.de
""".split()  # noqa: SIM905
_PRODUCTS = [
    "mug",
    "notebook",
    "lamp",
    "chair",
    "headphones",
    "backpack",
    "kettle",
    "jacket",
    "monitor",
    "keyboard",
]
_WORDS = """
please thanks update order refund shipment delayed customer account request review issue
resolved escalate ticket payment confirm address change delivery invoice support the a
to for on with about and was is our your this that
""".split()  # noqa: SIM905
_B62 = string.ascii_letters + string.digits
_B64URL = _B62 + "-_"

# (country code, national number digit groups) for international phone numbers.
_INTL_PHONES = (
    ("44", (2, 4, 4)),
    ("49", (2, 8)),
    ("33", (1, 2, 2, 2, 2)),
    ("81", (1, 4, 4)),
    ("91", (5, 5)),
    ("61", (1, 4, 4)),
    ("55", (2, 5, 4)),
    ("34", (3, 3, 3)),
    ("39", (2, 4, 4)),
    ("86", (3, 4, 4)),
    ("353", (2, 3, 4)),
    ("971", (2, 3, 4)),
)
_FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
_ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


class Synth:
    """A seeded generator. ``disguise`` is the chance that a generated number is written
    with full-width or Arabic-Indic digits or with a zero-width space inside."""

    def __init__(self, seed: int | None = None, *, disguise: float = 0.05) -> None:
        # Synthetic test data, not secrets: a seeded, reproducible generator is the point.
        self.rng = random.Random(seed)  # noqa: S311
        self.disguise = disguise

    # -- small pieces -------------------------------------------------------------------

    def digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def choice(self, seq: Sequence[T]) -> T:
        return self.rng.choice(seq)

    def first_name(self) -> str:
        return str(self.rng.choice(_FIRST))

    def last_name(self) -> str:
        return str(self.rng.choice(_LAST))

    def full_name(self) -> str:
        return f"{self.first_name()} {self.last_name()}"

    def street(self) -> str:
        return f"{self.rng.randint(1, 9999)} {self.choice(_STREETS)} {self.choice(_STREET_KINDS)}"

    def address(self) -> dict[str, str]:
        city, state, zip3 = self.choice(_CITIES)
        zip_code = zip3 + self.digits(2)
        if self.rng.random() < 0.3:
            zip_code += "-" + self.digits(4)
        return {"street": self.street(), "city": city, "state": state, "zip": zip_code}

    def date_of_birth(self) -> str:
        r = self.rng.randint
        return f"{r(1930, 2005)}-{r(1, 12):02d}-{r(1, 28):02d}"

    # -- sensitive values ---------------------------------------------------------------

    def email(self, name: str | None = None) -> str:
        name = name or self.full_name()
        first, _, last = name.partition(" ")

        def clean(s: str) -> str:
            return "".join(c for c in s.lower() if c.isascii() and c.isalnum()) or "user"

        local = self.choice(
            (
                f"{clean(first)}.{clean(last)}",
                f"{clean(first)[0]}{clean(last)}{self.rng.randint(1, 99)}",
                f"{clean(first)}+{self.choice(('shop', 'news', 'work'))}",
                f"{clean(last)}_{clean(first)}",
            )
        )
        return f"{local}@{self.choice(_DOMAINS)}"

    def card_number(self, brand: str | None = None) -> str:
        """A Luhn-valid number in the IIN range and length of ``brand`` (random if None)."""
        brand = brand or self.choice(CARD_BRANDS)
        rng = self.rng
        if brand == "visa":
            prefix, length = "4", rng.choice((16, 16, 16, 13, 19))
        elif brand == "mastercard":
            prefix = (
                str(rng.randint(51, 55)) if rng.random() < 0.6 else str(rng.randint(2221, 2720))
            )
            length = 16
        elif brand == "amex":
            prefix, length = rng.choice(("34", "37")), 15
        elif brand == "discover":
            prefix = rng.choice(("6011", "65", str(rng.randint(644, 649))))
            length = 16
        elif brand == "jcb":
            prefix, length = str(rng.randint(3528, 3589)), 16
        elif brand == "diners":
            prefix, length = rng.choice((("36", 14), ("38", 16), (str(rng.randint(300, 305)), 14)))
        elif brand == "unionpay":
            prefix, length = "62" + str(rng.choice((1, 3, 4, 5, 8))), rng.choice((16, 16, 19))
        else:
            raise ValueError(f"unknown card brand {brand!r}; known: {CARD_BRANDS}")
        body = prefix + self.digits(length - len(prefix) - 1)
        number = body + luhn_check_digit(body)
        assert card_brand(number) is not None and luhn_valid(number)
        return number

    def format_card(self, number: str, style: str | None = None) -> str:
        style = style or self.choice(("plain", "spaced", "spaced", "dashed"))
        if style == "plain":
            return number
        sep = " " if style == "spaced" else "-"
        n = len(number)
        if n == 15:
            groups: tuple[int, ...] = (4, 6, 5)
        elif n == 14:
            groups = (4, 6, 4)
        else:
            groups = tuple([4] * (n // 4) + ([n % 4] if n % 4 else []))
        out, pos = [], 0
        for g in groups:
            out.append(number[pos : pos + g])
            pos += g
        return sep.join(out)

    def card(self, brand: str | None = None, style: str | None = None) -> str:
        return self.format_card(self.card_number(brand), style)

    def ssn_digits(self) -> str:
        while True:
            r = self.rng.randint
            d = f"{r(1, 899):03d}{r(1, 99):02d}{r(1, 9999):04d}"
            if ssn_valid(d):
                return d

    def ssn(self, style: str | None = None) -> str:
        d = self.ssn_digits()
        style = style or self.choice(("dashed", "dashed", "dashed", "spaced"))
        if style == "plain":
            return d
        sep = "-" if style == "dashed" else " "
        return f"{d[:3]}{sep}{d[3:5]}{sep}{d[5:]}"

    def iban_compact(self, country: str | None = None) -> str:
        country = country or self.choice(
            ("DE", "GB", "FR", "ES", "IT", "NL", "BE", "CH", "AT", "PL", "SE", "IE", "NO", "PT")
        )
        import re

        spec = {
            "DE": "8n10n", "GB": "4a6n8n", "FR": "5n5n11c2n", "ES": "4n4n1n1n10n",
            "IT": "1a5n5n12c", "NL": "4a10n", "BE": "3n7n2n", "CH": "5n12c", "AT": "5n11n",
            "PL": "8n16n", "SE": "3n16n1n", "IE": "4a6n8n", "NO": "4n6n1n", "PT": "4n4n11n2n",
        }.get(country)  # fmt: skip
        if spec is None:
            length = IBAN_COUNTRIES[country][0]
            spec = f"{length - 4}n"
        bban = ""
        for n, kind in re.findall(r"(\d+)([nac])", spec):
            pool = {
                "n": string.digits,
                "a": string.ascii_uppercase,
                "c": string.digits + string.ascii_uppercase,
            }[kind]
            bban += "".join(self.rng.choice(pool) for _ in range(int(n)))
        check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
        return f"{country}{check:02d}{bban}"

    def iban(self, country: str | None = None, spaced: bool | None = None) -> str:
        compact = self.iban_compact(country)
        if spaced is None:
            spaced = self.rng.random() < 0.5
        if not spaced:
            return compact
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))

    def phone(self, style: str | None = None) -> str:
        style = style or self.choice(("nanp", "nanp", "nanp_intl", "intl", "e164"))
        area = f"{self.rng.randint(2, 9)}{self.rng.randint(0, 8)}{self.rng.randint(0, 9)}"
        if area[1:] == "11":
            area = area[0] + "20"
        exchange = f"{self.rng.randint(2, 9)}{self.digits(2)}"
        line = self.digits(4)
        if style == "nanp":
            return self.choice(
                (
                    f"({area}) {exchange}-{line}",
                    f"{area}-{exchange}-{line}",
                    f"{area}.{exchange}.{line}",
                    f"{area} {exchange} {line}",
                    f"1-{area}-{exchange}-{line}",
                )
            )
        if style == "nanp_intl":
            return self.choice(
                (
                    f"+1 {area} {exchange} {line}",
                    f"+1-{area}-{exchange}-{line}",
                    f"+1 ({area}) {exchange}-{line}",
                )
            )
        if style == "e164":
            if self.rng.random() < 0.5:
                return f"+1{area}{exchange}{line}"
            cc, groups = self.choice(_INTL_PHONES)
            return f"+{cc}" + self.digits(sum(groups))
        cc, groups = self.choice(_INTL_PHONES)
        parts = [self.digits(g) for g in groups]
        parts[0] = str(self.rng.randint(1, 9)) + parts[0][1:]
        return f"+{cc} " + " ".join(parts)

    def ipv4(self) -> str:
        while True:
            a = self.rng.randint(1, 223)
            if a not in (10, 127):
                r = self.rng.randint
                return f"{a}.{r(0, 255)}.{r(0, 255)}.{r(1, 254)}"

    def ipv6(self) -> str:
        addr = ipaddress.IPv6Address((0x2001_0DB8 << 96) | self.rng.getrandbits(64))
        return addr.compressed if self.rng.random() < 0.7 else addr.exploded

    def aws_access_key_id(self) -> str:
        return self.choice(("AKIA", "ASIA")) + "".join(
            self.rng.choice(string.ascii_uppercase + "234567") for _ in range(16)
        )

    def github_token(self) -> str:
        if self.rng.random() < 0.2:
            return (
                "github_pat_"
                + "".join(self.rng.choice(_B62) for _ in range(22))
                + "_"
                + "".join(self.rng.choice(_B62) for _ in range(59))
            )
        return self.choice(("ghp_", "gho_", "ghs_")) + "".join(
            self.rng.choice(_B62) for _ in range(36)
        )

    def jwt(self) -> str:
        def b64(obj: object) -> str:
            return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

        header = b64({"alg": self.choice(("HS256", "RS256", "ES256")), "typ": "JWT"})
        payload = b64(
            {
                "sub": str(uuid.UUID(int=self.rng.getrandbits(128))),
                "iat": self.rng.randint(1_600_000_000, 1_800_000_000),
                "scope": "read",
            }
        )
        sig = "".join(self.rng.choice(_B64URL) for _ in range(43))
        return f"{header}.{payload}.{sig}"

    def private_key(self) -> str:
        kind = self.choice(("RSA ", "EC ", "", "OPENSSH "))
        lines = [
            "".join(self.rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(64))
            for _ in range(self.rng.randint(3, 6))
        ]
        return (
            f"-----BEGIN {kind}PRIVATE KEY-----\n"
            + "\n".join(lines)
            + f"\n-----END {kind}PRIVATE KEY-----"
        )

    def google_api_key(self) -> str:
        return "AIza" + "".join(self.rng.choice(_B64URL) for _ in range(35))

    def slack_token(self) -> str:
        return f"xoxb-{self.digits(12)}-{self.digits(13)}-" + "".join(
            self.rng.choice(_B62) for _ in range(24)
        )

    def stripe_key(self) -> str:
        return "sk_live_" + "".join(self.rng.choice(_B62) for _ in range(24))

    # -- hard negatives -----------------------------------------------------------------

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex_digest(self, nbytes: int = 32) -> str:
        return self.rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()

    def timestamp(self) -> str:
        r = self.rng.randint
        base = f"20{r(20, 26)}-{r(1, 12):02d}-{r(1, 28):02d}"
        time_ = f"{r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}"
        return self.choice(
            (f"{base}T{time_}.{self.digits(6)}Z", f"{base}T{time_}+02:00", f"{base} {time_}")
        )

    def price(self) -> str:
        amount = self.rng.randint(1, 999999) / 100
        return self.choice((f"${amount:,.2f}", f"EUR {amount:.2f}", f"{amount:.2f} USD"))

    def order_number(self) -> str:
        return self.choice(
            (
                f"ORD-20{self.rng.randint(20, 26)}-{self.digits(6)}",
                f"#{self.digits(9)}",
                f"PO {self.digits(10)}",
                f"INV-{self.digits(8)}",
            )
        )

    def tracking_number(self) -> str:
        kind = self.rng.randint(0, 2)
        if kind == 0:
            return (
                "1Z"
                + "".join(self.rng.choice(string.ascii_uppercase + string.digits) for _ in range(6))
                + self.digits(10)
            )
        if kind == 1:
            d = self.digits(12)
            return f"{d[:4]} {d[4:8]} {d[8:]}"
        d = self.choice(("9400", "9205", "9361")) + self.digits(18)
        return " ".join(d[i : i + 4] for i in range(0, 22, 4))

    def zip4(self) -> str:
        return f"{self.digits(5)}-{self.digits(4)}"

    def version(self) -> str:
        r = self.rng.randint
        return self.choice(
            (
                f"v{r(0, 9)}.{r(0, 30)}.{r(0, 20)}",
                f"{r(1, 5)}.{r(0, 30)}.{r(0, 20)}",
                f"10.0.{r(17000, 22999)}.{r(1, 999)}",
                f"{r(1, 3)}.{r(0, 9)}.{r(0, 9)}-rc{r(1, 5)}",
            )
        )

    def luhn_invalid_number(self) -> str:
        """A 13-19 digit number with a card-like prefix that fails the Luhn check."""
        number = self.card_number()
        return number[:-1] + str((int(number[-1]) + self.rng.randint(1, 9)) % 10)

    def invalid_ssn(self) -> str:
        d = self.ssn_digits()
        bad = self.choice(
            (
                "000" + d[3:],
                "666" + d[3:],
                f"9{self.digits(2)}" + d[3:],
                d[:3] + "00" + d[5:],
                d[:5] + "0000",
            )
        )
        return f"{bad[:3]}-{bad[3:5]}-{bad[5:]}"

    def bad_iban(self) -> str:
        good = self.iban_compact()
        check = (int(good[2:4]) + self.rng.randint(1, 96)) % 97
        check = check if check >= 2 else check + 2
        bad = f"{good[:2]}{check:02d}{good[4:]}"
        return (
            " ".join(bad[i : i + 4] for i in range(0, len(bad), 4))
            if self.rng.random() < 0.5
            else bad
        )

    def negative(self) -> str:
        """One hard negative of a random kind."""
        kind = self.rng.randint(0, 11)
        makers: list[Callable[[], str]] = [
            self.uuid, self.hex_digest, self.timestamp, self.price, self.order_number,
            self.tracking_number, self.zip4, self.version, self.luhn_invalid_number,
            self.invalid_ssn, self.bad_iban,
            lambda: f"{self.rng.randint(0, 99):02d}.{self.digits(6)}",
        ]  # fmt: skip
        return makers[kind]()

    # -- disguise and free text ---------------------------------------------------------

    def _disguise(self, text: str, type_: str) -> Text:
        """Maybe write the digits of a value differently; returns the text and its span."""
        roll = self.rng.random()
        if type_ in ("CREDIT_CARD", "US_SSN", "PHONE_NUMBER", "IBAN") and roll < self.disguise:
            kind = self.rng.randint(0, 2)
            if kind == 0:
                text = text.translate(_FULLWIDTH)
            elif kind == 1:
                text = text.translate(_ARABIC_INDIC)
            else:
                cut = self.rng.randint(1, len(text) - 1)
                text = text[:cut] + "\u200b" + text[cut:]
        return Text(text, ((0, len(text), type_),))

    def sensitive(self, type_: str | None = None) -> Text:
        """One sensitive value (of ``type_`` or a random type) with its span."""
        makers: dict[str, Callable[[], str]] = {
            "CREDIT_CARD": self.card,
            "US_SSN": self.ssn,
            "IBAN": self.iban,
            "EMAIL_ADDRESS": self.email,
            "PHONE_NUMBER": self.phone,
            "IP_ADDRESS": lambda: self.ipv4() if self.rng.random() < 0.8 else self.ipv6(),
            "AWS_ACCESS_KEY_ID": self.aws_access_key_id,
            "GITHUB_TOKEN": self.github_token,
            "JWT": self.jwt,
            "PRIVATE_KEY": self.private_key,
            "GOOGLE_API_KEY": self.google_api_key,
            "SLACK_TOKEN": self.slack_token,
            "STRIPE_SECRET_KEY": self.stripe_key,
        }
        type_ = type_ or self.choice(list(makers))
        return self._disguise(makers[type_](), type_)

    def free_text(self, *, hide: int | None = None, negatives: int | None = None) -> Text:
        """A few sentences of support-ticket prose. ``hide`` sensitive values are woven in
        (random 0-2 when None) and ``negatives`` hard negatives (random 0-2)."""
        rng = self.rng
        hide = rng.choice((0, 0, 1, 1, 2)) if hide is None else hide
        negatives = rng.choice((0, 1, 1, 2)) if negatives is None else negatives
        intros = {
            "CREDIT_CARD": (
                "please charge card",
                "the card on file is",
                "new card:",
                "use my visa",
            ),
            "US_SSN": ("my SSN is", "social security number", "SSN:", "ssn"),
            "IBAN": ("wire the refund to IBAN", "account", "IBAN:"),
            "EMAIL_ADDRESS": ("email me at", "contact", "cc"),
            "PHONE_NUMBER": ("call me at", "my number is", "phone:", "reach me on"),
            "IP_ADDRESS": ("login from", "request came from", "blocked address"),
            "AWS_ACCESS_KEY_ID": ("leaked key", "aws key"),
            "GITHUB_TOKEN": ("token", "pushed with"),
            "JWT": ("bearer", "session token"),
            "PRIVATE_KEY": ("pasted key", "here is the key"),
            "GOOGLE_API_KEY": ("maps key", "api key"),
            "SLACK_TOKEN": ("bot token", "slack"),
            "STRIPE_SECRET_KEY": ("stripe key", "secret"),
        }
        neg_intros = (
            "order",
            "tracking",
            "ref",
            "at",
            "build",
            "total",
            "id",
            "checksum",
            "invalid value",
            "zip",
        )
        parts: list[tuple[str, str | None]] = []
        items: list[tuple[str, str | None]] = []
        weights = [8, 5, 4, 8, 8, 4, 1, 1, 1, 1, 1, 1, 1]
        types = list(intros)
        for _ in range(hide):
            t = rng.choices(types, weights)[0]
            items.append((t, "pos"))
        for _ in range(negatives):
            items.append(("NEG", "neg"))
        rng.shuffle(items)
        for _ in range(rng.randint(0, 1)):
            parts.append(
                (
                    " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10))).capitalize()
                    + ".",
                    None,
                )
            )
        for t, kind in items:
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(0, 5)))
            lead = words.capitalize() + " " if words else ""
            if kind == "pos":
                parts.append((lead + rng.choice(intros[t]) + " ", None))
                parts.append(("\x00" + t, None))
                parts.append((rng.choice((".", ",", " please.", " thanks!", ";")), None))
            else:
                parts.append((lead + rng.choice(neg_intros) + " " + self.negative() + ".", None))
        out = ""
        spans: list[tuple[int, int, str]] = []
        for piece, _ in parts:
            if piece.startswith("\x00"):
                value = self.sensitive(piece[1:])
                spans.append((len(out), len(out) + len(value.text), piece[1:]))
                out += value.text
            else:
                if out and not out.endswith(" ") and not piece.startswith((".", ",", ";", " ")):
                    out += " "
                out += piece
        return Text(out, tuple(spans))

    # -- records ------------------------------------------------------------------------

    def labelled_event(self) -> tuple[dict[str, Any], list[Label]]:
        """A JSON event (~600 bytes) with structured and free-text fields, and its labels."""
        rng = self.rng
        labels: list[Label] = []

        def put(
            container: dict[str, Any],
            key: str,
            segments: tuple[Segment, ...],
            value: object,
        ) -> None:
            seg = (*segments, (key, len(container)))
            if isinstance(value, Text):
                container[key] = value.text
                path = render_path(seg, frozenset())
                labels.extend(Label(path, t, s, e) for s, e, t in value.spans)
            else:
                container[key] = value

        name = self.full_name()
        ev: dict[str, Any] = {}
        put(ev, "event_id", (), self.uuid())
        put(ev, "ts", (), self.timestamp())
        put(
            ev,
            "type",
            (),
            rng.choice(
                ("order.created", "payment.captured", "ticket.opened", "profile.updated", "login")
            ),
        )
        src: dict[str, Any] = {}
        put(src, "ip", (("source", 3),), self.sensitive("IP_ADDRESS"))
        put(src, "app_version", (("source", 3),), self.version())
        put(ev, "source", (), src)
        cust: dict[str, Any] = {}
        cseg: tuple[Segment, ...] = (("customer", len(ev)),)
        put(cust, "id", cseg, f"cus_{self.hex_digest(6)}")
        put(cust, "name", cseg, name)
        put(cust, "email", cseg, self._labelled(self.email(name), "EMAIL_ADDRESS"))
        if rng.random() < 0.8:
            phone = self.phone()
            if rng.random() < 0.1:
                phone = "".join(c for c in phone if c.isdigit())[-10:]
            put(cust, "phone", cseg, self._disguise(phone, "PHONE_NUMBER"))
        if rng.random() < 0.3:
            put(
                cust,
                "ssn",
                cseg,
                self._disguise(
                    self.ssn(rng.choice(("dashed", "dashed", "spaced", "plain"))), "US_SSN"
                ),
            )
        if rng.random() < 0.4:
            put(cust, "dob", cseg, self.date_of_birth())
        if rng.random() < 0.5:
            addr = self.address()
            put(cust, "address", cseg, addr)
        put(ev, "customer", (), cust)
        if rng.random() < 0.6:
            pay: dict[str, Any] = {}
            pseg: tuple[Segment, ...] = (("payment", len(ev)),)
            roll = rng.random()
            if roll < 0.55:
                number = self.card_number()
                if rng.random() < 0.15:
                    put(pay, "card_number", pseg, int(number))
                    labels.append(
                        Label(
                            render_path((*pseg, ("card_number", 0)), frozenset()),
                            "CREDIT_CARD",
                            0,
                            len(number),
                        )
                    )
                else:
                    put(
                        pay,
                        "card_number",
                        pseg,
                        self._disguise(self.format_card(number), "CREDIT_CARD"),
                    )
                put(pay, "exp", pseg, f"{rng.randint(1, 12):02d}/{rng.randint(25, 32)}")
            elif roll < 0.75:
                put(pay, "iban", pseg, self._disguise(self.iban(), "IBAN"))
            else:
                put(pay, "card_last4", pseg, f"**** **** **** {self.digits(4)}")
                put(pay, "reference", pseg, self.luhn_invalid_number())
            put(pay, "amount", pseg, round(rng.uniform(1, 2000), 2))
            put(pay, "currency", pseg, rng.choice(("USD", "EUR", "GBP")))
            put(ev, "payment", (), pay)
        if rng.random() < 0.5:
            order: dict[str, Any] = {}
            oseg: tuple[Segment, ...] = (("order", len(ev)),)
            put(order, "id", oseg, self.order_number())
            items = [
                {
                    "sku": f"SKU-{self.digits(5)}",
                    "name": rng.choice(_PRODUCTS),
                    "qty": rng.randint(1, 4),
                    "price": round(rng.uniform(2, 300), 2),
                }
                for _ in range(rng.randint(1, 1))
            ]
            put(order, "items", oseg, items)
            put(order, "tracking", oseg, self.tracking_number())
            put(ev, "order", (), order)
        if rng.random() < 0.1:
            put(ev, "headers", (), {})
            hseg: tuple[Segment, ...] = (("headers", len(ev) - 1),)
            header_kind = rng.choice(
                (
                    "JWT",
                    "AWS_ACCESS_KEY_ID",
                    "GITHUB_TOKEN",
                    "GOOGLE_API_KEY",
                    "SLACK_TOKEN",
                    "STRIPE_SECRET_KEY",
                )
            )
            value = self.sensitive(header_kind)
            if header_kind == "JWT":
                value = Text("Bearer " + value.text, ((7, 7 + len(value.text), "JWT"),))
            put(ev["headers"], "authorization", hseg, value)
        if rng.random() < 0.04:
            put(ev, "attachment", (), self.sensitive("PRIVATE_KEY"))
        put(ev, "notes", (), self.free_text())
        meta: dict[str, Any] = {}
        mseg: tuple[Segment, ...] = (("meta", len(ev)),)
        put(meta, "trace_id", mseg, self.hex_digest(16))
        if rng.random() < 0.5:
            put(meta, "checksum", mseg, self.hex_digest())
        if rng.random() < 0.5:
            put(
                meta,
                "latency",
                mseg,
                rng.choice(
                    (f"{rng.randint(0, 99):02d}.{self.digits(6)}", round(rng.random() * 10, 6))
                ),
            )
        if rng.random() < 0.3:
            put(meta, "epoch_ms", mseg, rng.randint(1_600_000_000_000, 1_800_000_000_000))
        put(ev, "meta", (), meta)
        return ev, labels

    def _labelled(self, text: str, type_: str) -> Text:
        return Text(text, ((0, len(text), type_),))

    def event(self) -> dict[str, Any]:
        """A JSON event without its labels."""
        return self.labelled_event()[0]

    def labelled_events(self, n: int) -> list[tuple[dict[str, Any], list[Label]]]:
        return [self.labelled_event() for _ in range(n)]
