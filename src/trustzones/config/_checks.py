"""Cross-reference and security checks run after every section has parsed.

Each check adds an :class:`~trustzones.config._config.Issue` and carries on, so the user sees
every problem at once. The rules are the invariants of DESIGN.md that can be decided before a
single record moves: no grant above clearance, no flow upward, and no write down.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trustzones.config.model import ConfigFile
from trustzones.config.schema import SchemaField, field_map

if TYPE_CHECKING:
    from trustzones.config._config import _Collector

TRANSFORM_TYPES = (
    "mask",
    "hash",
    "tokenize",
    "encrypt_fpe",
    "generalize",
    "date_shift",
    "suppress",
    "redact_text",
)


def _choices(name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    listed = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
    return f"{hint}declared: {listed or '(none)'}"


def _dupes(col: _Collector, section: str, names: Sequence[str], what: str) -> None:
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            col.add(
                (section, i, "name"),
                f"duplicate {what} name {n!r} (first declared as {section}[{seen[n]}]).",
                f"rename one of them; {what} names must be unique",
            )
        else:
            seen[n] = i


def check_all(m: ConfigFile, schemas: Mapping[str, Mapping[str, Any]], col: _Collector) -> None:
    levels = {c: i for i, c in enumerate(m.classifications)}
    zones = {z.name: z for z in m.zones}
    topics = {t.name: t for t in m.topics}
    principals = {p.name: p for p in m.principals}

    _dupes(col, "zones", [z.name for z in m.zones], "zone")
    _dupes(col, "topics", [t.name for t in m.topics], "topic")
    _dupes(col, "principals", [p.name for p in m.principals], "principal")
    _dupes(col, "flows", [f.name for f in m.flows], "flow")

    def level_ok(loc: tuple[str | int, ...], value: str) -> bool:
        if value in levels:
            return True
        col.add(
            loc,
            f"unknown classification {value!r}.",
            f"use one of {', '.join(m.classifications)} (or add it to `classifications`)",
        )
        return False

    for i, z in enumerate(m.zones):
        level_ok(("zones", i, "classification"), z.classification)
    for i, pr in enumerate(m.principals):
        level_ok(("principals", i, "clearance"), pr.clearance)

    for i, t in enumerate(m.topics):
        if t.zone not in zones:
            col.add(
                ("topics", i, "zone"),
                f"topic {t.name!r} is in zone {t.zone!r}, which does not exist.",
                f"declare zone {t.zone!r} under zones, or {_choices(t.zone, zones)}",
            )
            continue
        schema = schemas.get(t.name)
        if schema:
            zlevel = zones[t.zone].classification
            for sf in field_map(schema, default=zlevel).values():
                if sf.classification not in levels:
                    col.add(
                        ("topics", i, "schema"),
                        f"field {sf.path!r} has unknown x-classification {sf.classification!r}.",
                        f"use one of {', '.join(m.classifications)}",
                    )

    def zone_rank(zone: str) -> int | None:
        z = zones.get(zone)
        return levels.get(z.classification) if z else None

    # -- grants -----------------------------------------------------------------------------
    for i, g in enumerate(m.grants):
        loc: tuple[str | int, ...] = ("grants", i)
        gp = principals.get(g.principal)
        if gp is None:
            col.add(
                (*loc, "principal"),
                f"unknown principal {g.principal!r}.",
                f"declare it under principals, or {_choices(g.principal, principals)}",
            )
        if (g.topic is None) == (g.zone is None):
            col.add(
                loc,
                "a grant names exactly one of `topic` or `zone`.",
                "keep `topic: NAME` or `zone: NAME`, not both or neither",
            )
            continue
        if g.topic is not None and g.topic not in topics:
            col.add(
                (*loc, "topic"),
                f"unknown topic {g.topic!r}.",
                f"declare it under topics, or {_choices(g.topic, topics)}",
            )
            continue
        if g.zone is not None and g.zone not in zones:
            col.add(
                (*loc, "zone"),
                f"unknown zone {g.zone!r}.",
                f"declare it under zones, or {_choices(g.zone, zones)}",
            )
            continue
        target_zone = g.zone if g.zone is not None else topics[g.topic].zone  # type: ignore[index]
        zr = zone_rank(target_zone)
        if (
            gp is not None
            and zr is not None
            and gp.clearance in levels
            and levels[gp.clearance] < zr
        ):
            col.add(
                (*loc, "principal"),
                f"principal {gp.name!r} has clearance {gp.clearance!r} but "
                f"is granted {g.topic or g.zone!r} in zone {target_zone!r} "
                f"({zones[target_zone].classification}).",
                f"raise the principal's clearance to {zones[target_zone].classification!r} "
                "or remove the grant",
            )

    # -- flows ------------------------------------------------------------------------------
    for i, f in enumerate(m.flows):
        loc = ("flows", i)
        ok = True
        for key in ("source", "destination"):
            t = getattr(f, key)
            if t not in topics:
                col.add(
                    (*loc, key),
                    f"unknown topic {t!r}.",
                    f"declare it under topics, or {_choices(t, topics)}",
                )
                ok = False
        p = principals.get(f.principal)
        if p is None:
            col.add(
                (*loc, "principal"),
                f"unknown principal {f.principal!r}.",
                f"declare a service principal {f.principal!r} under principals",
            )
        if not ok:
            continue
        src, dst = topics[f.source], topics[f.destination]
        if src.zone not in zones or dst.zone not in zones:
            continue  # reported with the topic
        s_rank, d_rank = zone_rank(src.zone), zone_rank(dst.zone)
        if s_rank is None or d_rank is None:
            continue
        s_cls, d_cls = zones[src.zone].classification, zones[dst.zone].classification
        if f.source == f.destination:
            col.add(
                (*loc, "destination"),
                "a flow cannot write to its own source topic.",
                "choose another destination topic",
            )
            continue
        if d_rank > s_rank:
            col.add(
                (*loc, "destination"),
                f"flow goes up: destination zone {dst.zone!r} "
                f"({d_cls}) is classified higher than source zone {src.zone!r} ({s_cls}); "
                "a flow only declassifies.",
                "data moving up needs no flow: produce to the higher zone with a grant",
            )
            continue
        if p is not None and p.clearance in levels and levels[p.clearance] < s_rank:
            col.add(
                (*loc, "principal"),
                f"flow principal {p.name!r} has clearance "
                f"{p.clearance!r}, below its source zone {src.zone!r} ({s_cls}).",
                f"give {p.name!r} clearance {s_cls!r}; flows run with source-zone rights",
            )
        _check_transforms(f.transforms, i, col)
        dschema = schemas.get(f.destination)
        if not dschema:
            col.add(
                (*loc, "destination"),
                f"destination topic {f.destination!r} has no schema, so "
                "nothing proves what may be written down.",
                "give the destination topic a schema whose fields carry x-classification tags",
            )
            continue
        dfields = field_map(dschema, default=d_cls)
        for fld in dfields.values():
            if fld.classification in levels and levels[fld.classification] > d_rank:
                col.add(
                    (*loc, "destination"),
                    f"write down: destination field "
                    f"{f.destination}.{fld.path} is tagged {fld.classification!r}, above "
                    f"zone {dst.zone!r} ({d_cls}).",
                    f"tag it {d_cls!r} or lower and transform the source field, or remove it",
                )
        sschema = schemas.get(f.source)
        sfields = field_map(sschema, default=s_cls)
        for key in f.transforms:
            if sfields and key not in sfields:
                col.add(
                    (*loc, "transforms", key),
                    f"field {key!r} is not in the schema of {f.source!r}.",
                    f"use a declared field path: {_choices(key, sfields)}",
                )
        _check_write_down(
            f.transforms,
            f.drop_unlisted,
            sfields,
            dfields,
            dschema,
            levels,
            d_rank,
            d_cls,
            f.source,
            f.destination,
            loc,
            col,
        )


def _check_transforms(transforms: Mapping[str, Mapping[str, Any]], i: int, col: _Collector) -> None:
    from trustzones.config._transforms import transform_problem

    for key, spec in transforms.items():
        problem = transform_problem(spec)
        if problem:
            col.add(
                ("flows", i, "transforms", key),
                problem,
                f"use one of: {', '.join(TRANSFORM_TYPES)} with its documented options",
            )


def _transformed(path: str, transforms: Mapping[str, Any]) -> bool:
    return any(
        path == t or path.startswith(t + ".") or path.startswith(t + "[") for t in transforms
    )


def _closed(schema: Mapping[str, Any], path: str) -> bool:
    """True when the destination schema refuses ``path`` as an extra property."""
    node: Mapping[str, Any] | None = schema
    parts = path.replace("[*]", ".[*]").split(".")
    for part in parts:
        if node is None:
            return False
        if part == "[*]":
            items = node.get("items")
            node = items if isinstance(items, Mapping) else None
            continue
        props = node.get("properties")
        if isinstance(props, Mapping) and part in props:
            sub = props[part]
            node = sub if isinstance(sub, Mapping) else None
            continue
        return (
            node.get("additionalProperties") is False or node.get("unevaluatedProperties") is False
        )
    return False


def _check_write_down(
    transforms: Mapping[str, Any],
    drop_unlisted: bool,
    sfields: Mapping[str, SchemaField],
    dfields: Mapping[str, SchemaField],
    dschema: Mapping[str, Any],
    levels: Mapping[str, int],
    d_rank: int,
    d_cls: str,
    source: str,
    destination: str,
    loc: tuple[str | int, ...],
    col: _Collector,
) -> None:
    for sf in sfields.values():
        if not sf.is_leaf or sf.classification not in levels:
            continue
        if levels[sf.classification] <= d_rank or _transformed(sf.path, transforms):
            continue
        in_dest = sf.path in dfields
        if in_dest or not (drop_unlisted or _closed(dschema, sf.path)):
            how = (
                f"copied untransformed into {destination}.{sf.path}"
                if in_dest
                else f"copied as an extra field, because {destination}'s schema does not close it"
            )
            col.add(
                (*loc, "transforms"),
                f"write down: source field {source}.{sf.path} "
                f"({sf.classification}) would be {how}, which is in a "
                f"{d_cls} zone.",
                f"add a transform for {sf.path!r} (mask, hash, tokenize, suppress, ...)"
                + ("" if in_dest else ", or set drop_unlisted: true"),
            )
