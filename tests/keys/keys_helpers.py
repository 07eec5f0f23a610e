"""Helpers shared by the keys tests (a uniquely named module: tests import it by name)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class AuditLog:
    """Collects audit events (the audit part provides the real sink)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: Mapping[str, object]) -> None:
        self.events.append(dict(event))

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def last(self, type_: str) -> dict[str, Any]:
        found = self.of(type_)
        assert found, f"no {type_} event in {[e['type'] for e in self.events]}"
        return found[-1]


class FakeClock:
    """Explicit time for age-based rotation and cache expiry."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Bao:
    """Address and root token of the OpenBao server the tests use."""

    def __init__(self, addr: str, token: str) -> None:
        self.addr = addr
        self.token = token
