"""A Kafka cluster that does not answer: clear errors that name it, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from trustzones.audit._kafka import _scan
from trustzones.cli import main
from trustzones.provision._plan import _topics
from trustzones.streams._kafka_admin import KafkaAdmin, KafkaConnection, KafkaUnavailable

PASSWORD = "not-the-real-one-9f2c"


def _closed_port() -> str:
    """A loopback address where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _connection() -> KafkaConnection:
    return KafkaConnection(_closed_port(), username="tz-admin", password=PASSWORD)


def test_listing_topics_of_a_cluster_that_does_not_answer() -> None:
    conn = _connection()
    with KafkaAdmin(conn, timeout_s=2.0) as admin, pytest.raises(KafkaUnavailable) as err:
        admin.metadata()
    assert conn.bootstrap in str(err.value) and "running and reachable" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_reading_the_audit_topic_of_a_cluster_that_does_not_answer() -> None:
    conn = _connection()
    with pytest.raises(KafkaUnavailable) as err:
        list(_scan(conn, "tz.audit", timeout_s=2.0))
    assert "audit topic 'tz.audit'" in str(err.value) and conn.bootstrap in str(err.value)
    assert PASSWORD not in str(err.value)


@pytest.mark.parametrize("down", [True, False])
def test_the_cli_turns_a_raw_kafka_error_into_a_message(
    workspace_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    down: bool,
) -> None:
    from confluent_kafka import KafkaError, KafkaException

    import trustzones.provision as provision

    code = KafkaError._TRANSPORT if down else KafkaError.INVALID_CONFIG
    reason = "Broker transport failure" if down else "Invalid configuration"

    def fails(_config: object) -> object:
        raise KafkaException(KafkaError(code, reason))

    monkeypatch.setattr(provision, "make_plan", fails)
    capsys.readouterr()
    assert main(["plan"]) == 1
    out = capsys.readouterr()
    assert f"error: Kafka: {reason}" in out.err
    assert "Traceback" not in out.err
    # The hint only where the cluster did not answer.
    assert ("running and reachable" in out.err) is down


def test_plan_reads_a_cluster_that_does_not_answer_as_an_error() -> None:
    # `trustzones plan` lists each cluster's topics first (its admin waits 30 s; 2 s here).
    conn = _connection()
    with KafkaAdmin(conn, timeout_s=2.0) as admin, pytest.raises(KafkaUnavailable) as err:
        _topics(admin, ["payments.transactions"])
    assert "could not list topics" in str(err.value) and conn.bootstrap in str(err.value)
