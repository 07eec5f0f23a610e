"""The event generator: events valid for their schema, about one coherent person each."""

from __future__ import annotations

import datetime as dt

import jsonschema_rs
from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.flows import generate_events
from trustzones.flows._generate import _MERCHANTS, _age, _years_before
from trustzones.zone import Workspace

#: The day the generator's events happen on (their timestamps fall within it).
EVENT_DAY = dt.date(2026, 11, 28)


def test_each_event_is_about_one_person_and_one_merchant(ws: Workspace) -> None:
    events = generate_events(ws.config, "payments.transactions", 400, seed=21)
    validator = jsonschema_rs.validator_for(dict(ws.config.schema("payments.transactions")))
    both = 0
    ages = []
    for e in events:
        assert validator.is_valid(e)
        customer = e["customer"]
        if "age" in customer:
            ages.append(customer["age"])
        if "age" in customer and "birth_date" in customer:
            both += 1
            born = dt.date.fromisoformat(customer["birth_date"])
            assert customer["age"] == _age(born, EVENT_DAY), customer
    assert both > 300  # optional fields are left out one time in ten
    # A merchant's name goes with its category.
    merchants = {
        (m["name"], m["category"])
        for e in events
        if {"name", "category"} <= set(m := e.get("merchant", {}))
    }
    assert merchants == set(_MERCHANTS)
    # Ages above 89 come up (HIPAA generalises them to 90+), as do ordinary ones.
    assert any(a >= 90 for a in ages) and any(18 <= a < 90 for a in ages)


@given(
    st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31)),
    st.integers(0, 120),
)
@settings(max_examples=300)
def test_years_before_and_age_agree(day: dt.date, years: int) -> None:
    before = _years_before(day, years)
    assert before.year == day.year - years
    assert _age(before, day) == years
    # Born a day later, one is a year younger on ``day``.
    assert _age(before + dt.timedelta(days=1), day) == years - 1
