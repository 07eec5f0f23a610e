"""Glue to the optional native core, the ``trustzones_native`` module built from
``native/`` in the source tree (Rust, pyo3; ``python -m pip install ./native``).

``trustzones`` installs and works without it; when it imports, the scanner and the hot
transforms use it. It is loaded through :func:`importlib.import_module` and typed here by
protocols, so that this package type-checks whether or not it is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, NoReturn, Protocol, cast

__all__ = [
    "ExecutorStep",
    "NativeEngine",
    "NativeExecutor",
    "NativeFF1",
    "NativeHmac",
    "NativeModule",
    "load_native",
    "native_available",
]


class NativeEngine(Protocol):
    """``trustzones_native.Engine``: the scanner core (see ``native/src/engine.rs``). Its
    findings are the ``Finding`` type it was built with (typed ``Any`` here, so that the
    scanner returns them without a ``cast`` call on its hot path)."""

    def scan_records(self, objs: Sequence[object]) -> list[list[Any]]: ...
    def scan_record(self, obj: object) -> list[Any]: ...
    def scan_text(self, text: str, ctx: Iterable[str]) -> list[Any]: ...
    def detects(self, text: str) -> bool: ...


class NativeFF1(Protocol):
    """``trustzones_native.FF1``: FF1 on one AES key and radix (``native/src/transforms.rs``)."""

    def encrypt_digits(self, text: str, tweak: bytes) -> str: ...
    def decrypt_digits(self, text: str, tweak: bytes) -> str: ...
    def encrypt_numerals(self, numerals: list[int], tweak: bytes) -> list[int]: ...
    def decrypt_numerals(self, numerals: list[int], tweak: bytes) -> list[int]: ...


class NativeHmac(Protocol):
    """``trustzones_native.HmacSha256``: HMAC-SHA-256 with one key."""

    def digest(self, data: bytes) -> bytes: ...
    def hash_text(self, text: str, *, hex: bool, length: int | None, prefix: str) -> str: ...


class NativeExecutor(Protocol):
    """``trustzones_native.PlanExecutor``: ``apply_record`` for a plan of key paths."""

    def apply(self, record: object) -> object: ...


#: One step of a :class:`NativeExecutor`: segments, native op, call, subject.
ExecutorStep = tuple[
    list[str],
    tuple[object, ...] | None,
    Callable[[object, object], object],
    Callable[[object], object] | None,
]


class NativeModule(Protocol):
    """What trustzones uses of ``trustzones_native``."""

    __version__: str

    def Engine(
        self,
        rules: list[tuple[str, str, str, str | None, bool, bool]],
        keywords: list[tuple[str, str]],
        near: list[tuple[str, str]],
        types: list[str],
        *,
        min_confidence: float,
        scan_keys: bool,
        finding: object,
        map_char: object,
        normalize: object,
        field_context: object,
        dumps: object,
    ) -> NativeEngine: ...

    def FF1(self, key: bytes, radix: int) -> NativeFF1: ...
    def HmacSha256(self, key: bytes) -> NativeHmac: ...
    def PlanExecutor(
        self,
        steps: list[ExecutorStep],
        suppressed: object,
        fail: Callable[[int, int, object], NoReturn],
    ) -> NativeExecutor: ...
    def mask_ascii(
        self, text: str, *, keep_first: int, keep_last: int, char: str, keep_separators: bool
    ) -> str | None: ...
    def float_text(self, x: float) -> str | None: ...
    def preserving_token(
        self, value: str, keep_last: int, min_random: int, random: bytes
    ) -> str | None: ...


_loaded: list[ModuleType | None] = []


def load_native() -> NativeModule | None:
    """The native module, or None when it is not installed (or fails to load)."""
    if not _loaded:
        try:
            _loaded.append(importlib.import_module("trustzones_native"))
        except ImportError:
            _loaded.append(None)
    return cast("NativeModule | None", _loaded[0])


def native_available() -> bool:
    """True when ``trustzones_native`` imports here."""
    return load_native() is not None
