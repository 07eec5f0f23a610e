"""Zones on Kafka through the Workspace: dedicated clusters and virtual clusters by prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from kafka_fixtures import Layout, connection, kafka_zones
from trustzones.errors import AccessDenied
from trustzones.flows import generate_events
from trustzones.streams._kafka_admin import KafkaConnection
from trustzones.zone import Workspace

pytestmark = pytest.mark.kafka


def _cluster_topics(conn: KafkaConnection) -> set[str]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient(conn.client_config("test-list")).list_topics(timeout=20)
    return set(md.topics)


@pytest.mark.parametrize("layout", ["dedicated", "virtual"])
def test_produce_and_consume_through_the_workspace_on_kafka(
    layout: Layout,
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backends = kafka_zones(
        workspace_dir, kafka_clusters, monkeypatch, layout=layout, prefix=kafka_prefix
    )
    with Workspace.open() as ws:
        ws.ensure_topics()
        clicks = [orjson.dumps(e) for e in generate_events(ws.config, "analytics.clickstream", 5)]
        pays = [orjson.dumps(e) for e in generate_events(ws.config, "payments.transactions", 5)]
        # Schema checks at ingress, as on the embedded backend.
        res = ws.produce(
            "analytics.clickstream", [*clicks, b'{"nope": 1}'], principal="clickstream-service"
        )
        assert len(res.accepted) == 5
        assert [r.index for r in res.rejected] == [5]
        assert (
            len(ws.produce("payments.transactions", pays, principal="payments-service").accepted)
            == 5
        )
        # Authorization before any I/O: the analyst reads analytics, never payments.
        with pytest.raises(AccessDenied, match="marketing-analyst"):
            ws.consumer("payments.transactions", principal="marketing-analyst")
        with pytest.raises(AccessDenied, match="marketing-analyst"):
            ws.produce("analytics.clickstream", clicks[:1], principal="marketing-analyst")
        got = list(ws.consumer("analytics.clickstream", principal="marketing-analyst"))
        assert sorted(r.value for r in got) == sorted(clicks)
        assert {r.header("tz.producer") for r in got} == {b"clickstream-service"}

    # The records are where the config says: the right cluster, under the right prefix.
    pay_name = backends["payments"]["prefix"] + "payments.transactions"
    click_name = backends["analytics"]["prefix"] + "analytics.clickstream"
    on0 = _cluster_topics(connection(kafka_clusters[0]))
    on1 = _cluster_topics(connection(kafka_clusters[1]))
    assert pay_name in on0
    if layout == "dedicated":
        assert click_name in on1 and click_name not in on0
        assert pay_name not in on1
    else:
        assert click_name in on0
        assert backends["payments"]["prefix"] != backends["analytics"]["prefix"]


def test_missing_password_env_says_what_to_do(
    workspace_dir: Path,
    kafka_clusters: list[Any],
    kafka_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka_zones(workspace_dir, kafka_clusters, monkeypatch, layout="virtual", prefix=kafka_prefix)
    monkeypatch.delenv("TZ_TEST_KAFKA_0_PASSWORD")
    from trustzones.errors import StreamError

    with Workspace.open() as ws, pytest.raises(StreamError, match="TZ_TEST_KAFKA_0_PASSWORD"):
        ws.backend("payments")
