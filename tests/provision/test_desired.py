"""The ACLs derived from the config, without a broker: exactly least privilege."""

from __future__ import annotations

from pathlib import Path

import yaml

from trustzones.config import Config
from trustzones.provision import desired_state
from trustzones.streams._kafka_admin import AclRule


def _kafka_config(workspace_dir: Path) -> Config:
    path = workspace_dir / "trustzones.yaml"
    doc = yaml.safe_load(path.read_text())
    for i, zone in enumerate(doc["zones"]):
        zone["backend"] = {
            "type": "kafka",
            "bootstrap": f"broker{i}:9092",
            "password_env": "X",
            "prefix": "",
        }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Config.from_yaml(path)


def test_flow_principal_gets_exactly_its_path(workspace_dir: Path) -> None:
    wants = desired_state(_kafka_config(workspace_dir))
    user = "User:flow-payments-to-analytics"
    src = {r for r in wants["broker0:9092"].acls if r.principal == user}
    dst = {r for r in wants["broker1:9092"].acls if r.principal == user}
    g = "tz.flow.payments-to-analytics"
    assert src == {
        AclRule(user, "topic", "payments.transactions", operation="read"),
        AclRule(user, "topic", "tz.quarantine.payments-to-analytics", operation="write"),
        AclRule(
            user, "topic", "tz.quarantine.payments-to-analytics.decisions", operation="describe"
        ),
        AclRule(user, "group", f"{g}.quarantine", operation="read"),
        AclRule(user, "transactional_id", f"{g}.", pattern="prefixed", operation="write"),
    }
    assert dst == {
        AclRule(user, "topic", "analytics.transactions", operation="write"),
        AclRule(user, "topic", "__tz-offsets.payments.payments.transactions", operation="read"),
        AclRule(user, "group", g, operation="read"),
        AclRule(user, "transactional_id", g, operation="write"),
        AclRule(user, "transactional_id", f"{g}.p", pattern="prefixed", operation="write"),
    }
    # The anchor topic is created by apply, with a partition per source partition.
    assert (
        wants["broker1:9092"].topics["__tz-offsets.payments.payments.transactions"].partitions == 3
    )


def test_people_get_no_broker_access_to_mfa_or_jit_zones(workspace_dir: Path) -> None:
    wants = desired_state(_kafka_config(workspace_dir))
    pay = wants["broker0:9092"]
    assert not {r for r in pay.acls if r.principal == "User:security-officer"}
    assert "security-officer" not in pay.users and "ciso" not in pay.users
    analyst = {r for r in wants["broker1:9092"].acls if r.principal == "User:marketing-analyst"}
    assert {(r.resource, r.name, r.operation) for r in analyst} == {
        ("topic", "analytics.clickstream", "read"),
        ("topic", "analytics.transactions", "read"),
        ("group", "marketing-analyst.", "read"),
    }
    assert "marketing-analyst" not in pay.users
