"""Realistic events for a topic, driven by its schema: ``trustzones generate``.

Each field gets a value from its ``x-pii`` tag (card numbers of every brand, names, e-mails,
phones, dates of birth, ZIP codes, ...), else from its name (``transaction_id``,
``timestamp``, ``amount``, ``page``, ...), else from its JSON type, ``enum`` and bounds.
Free-text fields (``note``, ``comment``, ``description``, ``message``) sometimes hide a card
number or an SSN, at ``leak_rate``: the records a flow's DLP scan must catch. Every event is
checked against the schema before it is returned.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import jsonschema_rs

from trustzones.config import Config
from trustzones.dlp.synth import CARD_BRANDS, Synth
from trustzones.errors import TrustzonesError

__all__ = ["event_key", "generate_events"]

_FREE_TEXT = ("note", "notes", "comment", "comments", "description", "message", "memo", "text")
_PAGES = (
    "/",
    "/books",
    "/books/42",
    "/music",
    "/cart",
    "/checkout",
    "/account",
    "/search",
    "/deals",
    "/help",
)
_MERCHANTS = (
    ("Book Nook", "books"),
    ("Vinyl Vault", "music"),
    ("Daily Grind", "coffee"),
    ("Green Grocer", "grocery"),
    ("Gadget Hub", "electronics"),
)


class _Gen:
    def __init__(self, synth: Synth, leak_rate: float, base: dt.datetime) -> None:
        self.s = synth
        self.rng = synth.rng
        self.leak_rate = leak_rate
        self.base = base
        self.card_brand: str | None = None
        #: The event's person: born on this day (set by whichever of age and date of birth
        #: comes first, so that the other agrees with it).
        self.born: dt.date | None = None
        #: The event's merchant (name, category), chosen at its first field.
        self.merchant: tuple[str, str] | None = None

    def start_event(self) -> None:
        """Forget the previous event's card brand, person and merchant."""
        self.card_brand = None
        self.born = None
        self.merchant = None

    def value(self, name: str, node: Mapping[str, Any], required: bool) -> Any:
        if "enum" in node:
            return self.rng.choice(list(node["enum"]))
        if "const" in node:
            return node["const"]
        pii = node.get("x-pii")
        t = node.get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), "string")
        if t == "object" or "properties" in node:
            return self.obj(node)
        if t == "array":
            raw_items = node.get("items")
            items: Mapping[str, Any] = raw_items if isinstance(raw_items, Mapping) else {}
            return [self.value(name, items, True) for _ in range(self.rng.randint(1, 3))]
        v = self.by_pii(str(pii), node) if pii else None
        if v is None:
            v = self.by_name(name.lower(), node, t)
        if v is None:
            v = self.by_type(t, node)
        if t == "string" and not isinstance(v, str):
            v = str(v)
        if t == "integer" and not isinstance(v, int):
            v = int(v)
        return v

    def obj(self, node: Mapping[str, Any]) -> dict[str, Any]:
        props = node.get("properties") or {}
        req = set(node.get("required") or ())
        out: dict[str, Any] = {}
        for k, sub in props.items():
            if k not in req and self.rng.random() < 0.1:
                continue
            out[k] = self.value(k, sub, k in req)
        return out

    def by_pii(self, pii: str, node: Mapping[str, Any]) -> Any:
        s = self.s
        if pii == "card_number":
            self.card_brand = self.rng.choice(CARD_BRANDS)
            return s.card(self.card_brand)
        if pii == "card_cvv":
            return s.digits(4 if self.card_brand == "amex" else 3)
        if pii == "card_expiry":
            return f"{self.rng.randint(1, 12):02d}/{self.rng.randint(27, 32)}"
        if pii == "person_name":
            return s.full_name()
        if pii == "email":
            return s.email()
        if pii == "phone":
            return s.phone()
        if pii == "age":
            if self.born is None:
                age = self.rng.choice(
                    (self.rng.randint(18, 89), self.rng.randint(18, 70), self.rng.randint(90, 99))
                )
                # Born on a day between age + 1 years and age years before the event's day.
                today = self.base.date()
                start = _years_before(today, age + 1) + dt.timedelta(days=1)
                end = _years_before(today, age)
                self.born = start + dt.timedelta(days=self.rng.randint(0, (end - start).days))
            return _age(self.born, self.base.date())
        if pii == "date_of_birth":
            if self.born is None:
                self.born = dt.date.fromisoformat(s.date_of_birth())
            return self.born.isoformat()
        if pii == "zip":
            return s.address()["zip"][:5]
        if pii == "ssn":
            return s.ssn()
        if pii == "iban":
            return s.iban()
        if pii == "ip_address":
            return s.ipv4()
        if pii == "address":
            return s.street()
        return None

    def by_name(self, name: str, node: Mapping[str, Any], t: Any) -> Any:
        rng = self.rng
        if name in _FREE_TEXT:
            if rng.random() < self.leak_rate:
                hidden = self.s.card() if rng.random() < 0.6 else self.s.ssn()
                label = "card" if "-" not in hidden or len(hidden) > 11 else "ssn"
                return f"customer asked to keep {label} {hidden} on file for next time"
            return rng.choice(
                (
                    "gift wrap please",
                    "leave at the front desk",
                    "deliver after 6pm",
                    "second order this week",
                    "no note",
                    "customer asked about the loyalty program",
                )
            )
        if name in ("brand",) and self.card_brand:
            return self.card_brand
        if name.endswith("transaction_id") or name == "order_id":
            return f"tx-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
        if name in ("event_id", "id") or name.endswith("_id"):
            prefix = {
                "customer_id": "c",
                "user_id": "u",
                "session_id": "s",
                "event_id": "ev",
                "merchant_id": "m",
            }.get(name, name[:2] or "id")
            return f"{prefix}-{rng.randint(1, 99_999)}"
        if "timestamp" in name or name in ("time", "created_at", "at"):
            when = self.base + dt.timedelta(seconds=rng.randint(0, 86_400))
            return when.isoformat(timespec="seconds").replace("+00:00", "Z")
        if name in ("amount", "price", "total"):
            return round(rng.uniform(1, 500), 2)
        if name == "currency":
            return rng.choice(("EUR", "USD", "GBP"))
        if name == "page" or name == "referrer":
            return rng.choice(_PAGES)
        if name == "country":
            return rng.choice(("US", "GB", "DE", "FR", "NL"))
        if name in ("name", "category"):
            if self.merchant is None:
                self.merchant = rng.choice(_MERCHANTS)
            return self.merchant[0] if name == "name" else self.merchant[1]
        if name.endswith("_ms") or name == "duration":
            return rng.randint(50, 120_000)
        return None

    def by_type(self, t: Any, node: Mapping[str, Any]) -> Any:
        rng = self.rng
        if t == "integer":
            lo = int(node.get("minimum", 0))
            return rng.randint(lo, max(lo, int(node.get("maximum", lo + 1000))))
        if t == "number":
            low = float(node.get("minimum", 0))
            return round(rng.uniform(low, float(node.get("maximum", low + 1000))), 2)
        if t == "boolean":
            return rng.random() < 0.5
        if t == "null":
            return None
        return " ".join(rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(2))


def generate_events(
    config: Config,
    topic: str,
    count: int,
    *,
    seed: int | None = None,
    leak_rate: float = 0.05,
) -> list[dict[str, Any]]:
    """``count`` events valid for ``topic``'s schema."""
    if topic not in config.topics:
        raise TrustzonesError(
            f"unknown topic {topic!r}; declared: {', '.join(sorted(config.topics))}"
        )
    schema = config.schema(topic)
    if not schema:
        raise TrustzonesError(f"topic {topic!r} has no schema to generate events from")
    synth = Synth(seed, disguise=0.0)
    gen = _Gen(synth, leak_rate, dt.datetime(2026, 11, 28, tzinfo=dt.UTC))
    validator = jsonschema_rs.validator_for(dict(schema))
    out = []
    for _ in range(count):
        for _attempt in range(20):
            gen.start_event()
            ev = gen.obj(schema)
            if validator.is_valid(ev):
                out.append(ev)
                break
        else:
            raise TrustzonesError(
                f"could not generate a valid event for {topic!r}: its schema "
                "has constraints the generator does not know"
            )
    return out


def _years_before(day: dt.date, years: int) -> dt.date:
    """``day``, ``years`` years earlier (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def _age(born: dt.date, on: dt.date) -> int:
    """Whole years from ``born`` to ``on``."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def event_key(config: Config, topic: str, event: Mapping[str, Any]) -> bytes | None:
    """A partition key: the customer, user or session the event is about."""
    for path in ("customer.id", "customer_id", "user_id", "session_id"):
        node: Any = event
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, str | int):
            return str(node).encode()
    return None
