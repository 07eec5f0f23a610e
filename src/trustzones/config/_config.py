"""Loading ``trustzones.yaml`` into a validated :class:`Config`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import rfc8785
import yaml
from pydantic import ValidationError

from trustzones.config._source import Located, parse_yaml
from trustzones.config.model import (
    ConfigFile,
    FlowSpec,
    GrantSpec,
    PrincipalSpec,
    TopicSpec,
    ZoneSpec,
)
from trustzones.config.schema import SchemaField, field_map
from trustzones.errors import ConfigError

__all__ = ["CONFIG_FILENAME", "Config", "Issue"]

CONFIG_FILENAME = "trustzones.yaml"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a config file: where, what, and how to fix it."""

    file: str
    line: int
    where: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.where}: {self.problem} Fix: {self.fix}"


def _loc_str(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


@dataclass
class _Collector:
    src: Located
    issues: list[Issue] = field(default_factory=list)

    def add(self, loc: tuple[str | int, ...], problem: str, fix: str) -> None:
        self.issues.append(Issue(self.src.file, self.src.line_of(loc), _loc_str(loc), problem, fix))


def _pydantic_issues(err: ValidationError, col: _Collector) -> None:
    for e in err.errors():
        loc = tuple(
            p
            for p in e["loc"]
            if not (
                isinstance(p, str) and p in {"EmbeddedBackend", "KafkaBackend", "embedded", "kafka"}
            )
        )
        kind = e["type"]
        bad = e.get("input")
        shown = "" if isinstance(bad, dict | list) else f" (got {bad!r})"
        if kind == "extra_forbidden":
            fix = "remove it, or check its spelling against the documented keys"
            problem = f"unknown key {loc[-1]!r}."
        elif kind == "missing":
            fix = f"add {loc[-1]!r}"
            problem = "required key is missing."
        else:
            fix = "correct the value"
            problem = f"{e['msg']}{shown}."
        col.add(loc, problem, fix)


@dataclass(frozen=True)
class Config:
    """A validated configuration. Holding one means every check has passed.

    Build it with :meth:`from_yaml` or :meth:`from_text`; both raise :class:`ConfigError` listing
    every problem (file, line, offending value, fix) when the file is invalid.
    """

    file: ConfigFile
    path: Path
    schemas: Mapping[str, Mapping[str, Any]]

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"{p}: no such file. Create one with `trustzones init`, or point --config "
                "(TRUSTZONES_CONFIG) at an existing trustzones.yaml."
            ) from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read it ({exc.strerror}).") from exc
        return cls.from_text(text, p)

    @classmethod
    def from_text(cls, text: str, path: str | Path = CONFIG_FILENAME) -> Config:
        p = Path(path)
        try:
            src = parse_yaml(text, str(p))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError(
                f"{p}:{line}: (YAML): {problem}. Fix: correct the YAML syntax at that line.",
                [f"{p}:{line}: {problem}"],
            ) from None
        col = _Collector(src)
        for dup_path, line in src.duplicates:
            col.issues.append(
                Issue(
                    str(p),
                    line,
                    _loc_str(dup_path),
                    f"key {dup_path[-1]!r} appears twice.",
                    "keep one of them; YAML would silently use the last",
                )
            )
        data = src.data if src.data is not None else {}
        if not isinstance(data, dict):
            col.add(
                (),
                "the file must be a mapping of sections (zones, topics, ...).",
                "start from `trustzones init`",
            )
            raise _raise(col)
        try:
            model = ConfigFile.model_validate(data)
        except ValidationError as err:
            _pydantic_issues(err, col)
            raise _raise(col) from None
        from trustzones.config._checks import check_all

        schemas = _load_schemas(model, p.parent, col)
        check_all(model, schemas, col)
        if col.issues:
            raise _raise(col)
        return cls(file=model, path=p, schemas=schemas)

    # -- lookups --------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.path.parent

    @cached_property
    def classifications(self) -> tuple[str, ...]:
        return self.file.classifications

    def level(self, classification: str) -> int:
        """Rank of a classification (0 = lowest)."""
        return self.file.classifications.index(classification)

    @cached_property
    def zones(self) -> dict[str, ZoneSpec]:
        return {z.name: z for z in self.file.zones}

    @cached_property
    def topics(self) -> dict[str, TopicSpec]:
        return {t.name: t for t in self.file.topics}

    @cached_property
    def principals(self) -> dict[str, PrincipalSpec]:
        return {p.name: p for p in self.file.principals}

    @cached_property
    def flows(self) -> dict[str, FlowSpec]:
        return {f.name: f for f in self.file.flows}

    @property
    def grants(self) -> tuple[GrantSpec, ...]:
        return self.file.grants

    def zone_of(self, topic: str) -> ZoneSpec:
        return self.zones[self.topics[topic].zone]

    def zone_level(self, zone: str) -> int:
        return self.level(self.zones[zone].classification)

    def schema(self, topic: str) -> Mapping[str, Any] | None:
        return self.schemas.get(topic)

    def fields(self, topic: str) -> dict[str, SchemaField]:
        return field_map(self.schema(topic), default=self.zone_of(topic).classification)

    def data_dir(self, zone: str) -> Path:
        z = self.zones[zone]
        from trustzones.config.model import EmbeddedBackend

        if isinstance(z.backend, EmbeddedBackend) and z.backend.data_dir:
            return (self.root / z.backend.data_dir).resolve()
        return (self.root / self.file.data_dir / zone).resolve()

    @property
    def audit_dir(self) -> Path:
        return (self.root / self.file.audit.data_dir).resolve()

    @property
    def state_dir(self) -> Path:
        """Workspace state that lives outside every zone: secrets, signing keys, profiles."""
        return (self.root / ".trustzones").resolve()

    # -- versions -------------------------------------------------------------------------
    @cached_property
    def policy_version(self) -> str:
        """A short hash of the whole configuration (schemas included)."""
        doc = {"config": self.file.model_dump(mode="json", by_alias=True), "schemas": self.schemas}
        return hashlib.sha256(rfc8785.dumps(doc)).hexdigest()[:16]

    def flow_hash(self, flow: str) -> str:
        """Hash of one flow's definition, including both schemas: what approvers approve."""
        f = self.flows[flow]
        doc = {
            "flow": f.model_dump(mode="json"),
            "source_zone": self.topics[f.source].zone,
            "destination_zone": self.topics[f.destination].zone,
            "source_schema": self.schemas.get(f.source),
            "destination_schema": self.schemas.get(f.destination),
        }
        return hashlib.sha256(rfc8785.dumps(doc)).hexdigest()


def _raise(col: _Collector) -> ConfigError:
    lines = [str(i) for i in col.issues]
    n = len(lines)
    head = f"{col.src.file}: {n} problem{'s' if n != 1 else ''} found:"
    return ConfigError("\n".join([head, *("  " + x for x in lines)]), lines)


def _load_schemas(model: ConfigFile, base: Path, col: _Collector) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {}
    for i, t in enumerate(model.topics):
        loc: tuple[str | int, ...] = ("topics", i, "schema")
        raw = t.schema_
        if raw is None:
            continue
        if isinstance(raw, str):
            sp = base / raw
            try:
                text = sp.read_text(encoding="utf-8")
            except OSError:
                col.add(
                    loc,
                    f"schema file {raw!r} cannot be read.",
                    f"create {sp} or correct the path (relative to {base})",
                )
                continue
            try:
                doc = json.loads(text) if sp.suffix == ".json" else yaml.safe_load(text)
            except (ValueError, yaml.YAMLError) as exc:
                col.add(
                    loc,
                    f"schema file {raw!r} is not valid JSON/YAML ({exc}).",
                    "fix the schema file's syntax",
                )
                continue
        else:
            doc = raw
        if not isinstance(doc, dict):
            col.add(loc, "a schema must be a JSON Schema object.", "write an object schema")
            continue
        try:
            jsonschema.Draft202012Validator.check_schema(doc)
        except jsonschema.SchemaError as exc:
            col.add(
                loc,
                f"not a valid JSON Schema: {exc.message}.",
                "correct the schema (draft 2020-12)",
            )
            continue
        out[t.name] = doc
    return out
