"""Load-time checks of trustzones.yaml: each rule, with the exact error text and line."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from trustzones.config import Config
from trustzones.errors import ConfigError

SCHEMA_SRC = """{"type": "object", "additionalProperties": false, "properties": {
  "id": {"type": "string", "x-classification": "public"},
  "card": {"type": "string", "x-classification": "restricted", "x-pii": "card_number"},
  "note": {"type": "string", "x-classification": "public"}}}"""

SCHEMA_DST = """{"type": "object", "additionalProperties": false, "x-classification": "public",
  "properties": {"id": {"type": "string"}, "card": {"type": "string"},
  "note": {"type": "string"}}}"""

BASE = """\
zones:
  - {name: payments, classification: restricted}
  - {name: analytics, classification: public}
topics:
  - {name: pay, zone: payments, schema: src.json}
  - {name: out, zone: analytics, schema: dst.json}
principals:
  - {name: svc, kind: service, clearance: restricted}
  - {name: analyst, clearance: public}
  - {name: flowbot, kind: service, clearance: restricted}
grants:
  - {principal: analyst, zone: analytics, access: [read]}
flows:
  - name: f
    source: pay
    destination: out
    principal: flowbot
    transforms:
      card: {type: mask, keep_last: 4}
"""


def load(tmp_path: Path, text: str, *, src: str = SCHEMA_SRC, dst: str = SCHEMA_DST) -> Config:
    (tmp_path / "src.json").write_text(src)
    (tmp_path / "dst.json").write_text(dst)
    p = tmp_path / "trustzones.yaml"
    p.write_text(dedent(text))
    return Config.from_yaml(p)


def errors(tmp_path: Path, text: str, **kw: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kw)
    return info.value.issues


def test_valid_base_loads(tmp_path: Path) -> None:
    c = load(tmp_path, BASE)
    assert c.zones["payments"].classification == "restricted"
    assert c.level("restricted") == 3
    assert c.fields("pay")["card"].pii == "card_number"
    assert len(c.policy_version) == 16


def test_example_workspace_is_valid() -> None:
    from importlib import resources

    p = resources.files("trustzones.config").joinpath("examples", "ecommerce", "trustzones.yaml")
    c = Config.from_yaml(Path(str(p)))
    assert set(c.zones) == {"payments", "analytics"}
    assert c.flows["payments-to-analytics"].source == "payments.transactions"


def test_unknown_reference_names_file_line_value_and_fix(tmp_path: Path) -> None:
    text = BASE.replace(
        "{principal: analyst, zone: analytics", "{principal: analystt, zone: analytics"
    )
    errs = errors(tmp_path, text)
    assert errs == [
        f"{tmp_path / 'trustzones.yaml'}:12: grants[0].principal: unknown principal 'analystt'. "
        "Fix: declare it under principals, or did you mean 'analyst'? declared: analyst, "
        "flowbot, svc"
    ]


def test_topic_in_missing_zone(tmp_path: Path) -> None:
    errs = errors(
        tmp_path, BASE.replace("{name: out, zone: analytics", "{name: out, zone: analytic")
    )
    assert len(errs) == 1
    assert errs[0].endswith(
        ":6: topics[1].zone: topic 'out' is in zone 'analytic', which does not exist. "
        "Fix: declare zone 'analytic' under zones, or did you mean 'analytics'? "
        "declared: analytics, payments"
    )


def test_flow_upwards_is_refused(tmp_path: Path) -> None:
    text = BASE.replace("source: pay\n    destination: out", "source: out\n    destination: pay")
    errs = errors(tmp_path, text)
    assert any(
        e.endswith(
            ":16: flows[0].destination: flow goes up: destination zone 'payments' "
            "(restricted) is classified higher than source zone 'analytics' (public); "
            "a flow only declassifies. Fix: data moving up needs no flow: produce to the "
            "higher zone with a grant"
        )
        for e in errs
    ), errs


def test_destination_field_tagged_above_destination_zone(tmp_path: Path) -> None:
    dst = SCHEMA_DST.replace(
        '"card": {"type": "string"}',
        '"card": {"type": "string", "x-classification": "confidential"}',
    )
    errs = errors(tmp_path, BASE, dst=dst)
    assert errs == [
        f"{tmp_path / 'trustzones.yaml'}:16: flows[0].destination: write down: destination "
        "field out.card is tagged 'confidential', above zone 'analytics' (public). Fix: tag it "
        "'public' or lower and transform the source field, or remove it"
    ]


def test_untransformed_restricted_field_is_write_down(tmp_path: Path) -> None:
    text = BASE.replace("    transforms:\n      card: {type: mask, keep_last: 4}\n", "")
    errs = errors(tmp_path, text)
    assert errs == [
        f"{tmp_path / 'trustzones.yaml'}:14: flows[0].transforms: write down: "
        "source field pay.card (restricted) would be copied untransformed into out.card, "
        "which is in a public zone. "
        "Fix: add a transform for 'card' (mask, hash, tokenize, suppress, ...)"
    ]


def test_untagged_source_field_inherits_zone_classification(tmp_path: Path) -> None:
    # `note` loses its tag: untagged data is as sensitive as its zone (fail closed).
    src = SCHEMA_SRC.replace(
        '"note": {"type": "string", "x-classification": "public"}', '"note": {"type": "string"}'
    )
    errs = errors(tmp_path, BASE, src=src)
    assert len(errs) == 1 and "source field pay.note (restricted)" in errs[0]


def test_extra_field_into_open_destination_schema(tmp_path: Path) -> None:
    src = SCHEMA_SRC.replace(
        '"note": {', '"secret": {"type": "string", "x-classification": "restricted"}, "note": {'
    )
    dst = SCHEMA_DST.replace('"additionalProperties": false, ', "")
    errs = errors(tmp_path, BASE, src=src, dst=dst)
    assert len(errs) == 1
    assert "source field pay.secret (restricted) would be copied as an extra field" in errs[0]
    assert errs[0].endswith("or set drop_unlisted: true")
    # Closing the destination schema (the default test schema) makes the same source valid.
    assert load(tmp_path, BASE, src=src).flows["f"].source == "pay"


def test_duplicate_names(tmp_path: Path) -> None:
    text = BASE.replace(
        "  - {name: analyst, clearance: public}\n",
        "  - {name: analyst, clearance: public}\n  - {name: analyst, clearance: internal}\n",
    )
    errs = errors(tmp_path, text)
    assert errs[0].endswith(
        ":10: principals[2].name: duplicate principal name 'analyst' (first declared as "
        "principals[1]). Fix: rename one of them; principal names must be unique"
    )


def test_duplicate_yaml_keys_are_reported(tmp_path: Path) -> None:
    text = BASE.replace(
        "  - {name: payments, classification: restricted}",
        "  - {name: payments, classification: restricted, classification: public}",
    )
    errs = errors(tmp_path, text)
    assert any("zones[0].classification: key 'classification' appears twice" in e for e in errs)


def test_grant_above_clearance(tmp_path: Path) -> None:
    text = BASE.replace(
        "  - {principal: analyst, zone: analytics, access: [read]}",
        "  - {principal: analyst, zone: analytics, access: [read]}\n"
        "  - {principal: analyst, topic: pay, access: [read]}",
    )
    errs = errors(tmp_path, text)
    assert errs == [
        f"{tmp_path / 'trustzones.yaml'}:13: grants[1].principal: principal 'analyst' has "
        "clearance 'public' but is granted 'pay' in zone 'payments' (restricted). Fix: raise "
        "the principal's clearance to 'restricted' or remove the grant"
    ]


def test_all_errors_reported_at_once(tmp_path: Path) -> None:
    text = (
        BASE.replace("classification: restricted}", "classification: secret}")
        .replace("{principal: analyst,", "{principal: nobody,")
        .replace("principal: flowbot", "principal: ghost")
    )
    errs = errors(tmp_path, text)
    joined = "\n".join(errs)
    assert "unknown classification 'secret'" in joined
    assert "unknown principal 'nobody'" in joined
    assert "unknown principal 'ghost'" in joined
    assert len(errs) >= 3


def test_shape_errors_have_lines(tmp_path: Path) -> None:
    text = BASE.replace(
        "  - {name: out, zone: analytics, schema: dst.json}",
        "  - {name: out, zone: analytics, schema: dst.json, partitons: 3}",
    )
    errs = errors(tmp_path, text)
    assert errs == [
        f"{tmp_path / 'trustzones.yaml'}:6: topics[1].partitons: unknown key 'partitons'. "
        "Fix: remove it, or check its spelling against the documented keys"
    ]


def test_unknown_transform_and_field(tmp_path: Path) -> None:
    text = BASE.replace(
        "card: {type: mask, keep_last: 4}", "card: {type: scramble}\n      cardd: {type: suppress}"
    )
    errs = errors(tmp_path, text)
    assert any("flows[0].transforms.card: unknown transform type 'scramble'." in e for e in errs)
    assert any("field 'cardd' is not in the schema of 'pay'" in e for e in errs)


def test_destination_without_schema_is_refused(tmp_path: Path) -> None:
    text = BASE.replace(
        "{name: out, zone: analytics, schema: dst.json}", "{name: out, zone: analytics}"
    )
    errs = errors(tmp_path, text)
    assert any("destination topic 'out' has no schema" in e for e in errs)


def test_flow_principal_below_source_zone(tmp_path: Path) -> None:
    text = BASE.replace(
        "{name: flowbot, kind: service, clearance: restricted}",
        "{name: flowbot, kind: service, clearance: public}",
    )
    errs = errors(tmp_path, text)
    assert any(
        "flow principal 'flowbot' has clearance 'public', below its source zone" in e for e in errs
    )


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trustzones.yaml:3: \(YAML\)"):
        load(tmp_path, "zones:\n  - {name: a\n  - b: [\n")


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trustzones init"):
        Config.from_yaml(tmp_path / "nope.yaml")


def test_flow_hash_changes_with_definition(tmp_path: Path) -> None:
    a = load(tmp_path, BASE).flow_hash("f")
    b = load(tmp_path, BASE.replace("keep_last: 4", "keep_last: 2")).flow_hash("f")
    assert a != b and len(a) == 64
