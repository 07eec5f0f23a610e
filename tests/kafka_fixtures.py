"""Pytest plugin: real Apache Kafka clusters for tests marked ``kafka``.

Loaded from ``tests/conftest.py`` (``pytest_plugins = ["kafka_fixtures"]``). The session
fixture :func:`kafka_clusters` starts two single-node KRaft clusters with
``scripts/kafka.py`` (SASL/SCRAM, StandardAuthorizer, deny by default) and stops them at the
end of the session; if ``TRUSTZONES_KAFKA_STATE`` names a state file written by
``python scripts/kafka.py start``, those running clusters are used instead (and left running).

If no broker can be started the fixture fails the tests that need it: it never skips.

Helpers: :func:`kafka_zones` moves the example workspace's zones onto these clusters
(dedicated clusters or virtual clusters by prefix); :func:`approve` approves a flow.

Per test: :func:`kafka_prefix` (a fresh virtual-cluster prefix, so each test has its own topics,
groups and transactional ids), :func:`kafka_topic` / :func:`kafka_group` (fresh names), and
:func:`kafka_backend` (a factory of opened ``KafkaBackend`` objects, closed after the test).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

import pytest
import yaml
from pydantic import SecretStr

from trustzones.streams._kafka import KafkaBackend
from trustzones.streams._kafka_admin import KafkaAdmin, KafkaConnection

ROOT = Path(__file__).resolve().parents[1]
STATE_ENV = "TRUSTZONES_KAFKA_STATE"
CLUSTERS = 2


def _load_script() -> ModuleType:
    name = "trustzones_kafka_script"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "kafka.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class KafkaCluster(Protocol):
    """One running cluster (``scripts/kafka.py``'s ``Cluster``)."""

    name: str
    bootstrap: str
    username: str
    password: str

    def client_config(self) -> dict[str, str]: ...


@pytest.fixture(scope="session")
def kafka_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[KafkaCluster]]:
    """Two running Kafka clusters (admin credentials included)."""
    script = _load_script()
    state = os.environ.get(STATE_ENV)
    if state:
        try:
            clusters = script.load_state(Path(state))
        except script.KafkaScriptError as exc:
            pytest.fail(f"{STATE_ENV}={state}: {exc}", pytrace=False)
        if len(clusters) < CLUSTERS:
            pytest.fail(
                f"{STATE_ENV}={state} describes {len(clusters)} cluster(s); the Kafka tests "
                f"need {CLUSTERS} (python scripts/kafka.py start --clusters {CLUSTERS} ...)",
                pytrace=False,
            )
        dead = [c.name for c in clusters if not script._alive(c)]
        if dead:
            pytest.fail(f"{STATE_ENV}={state}: cluster(s) {dead} are not running", pytrace=False)
        yield clusters
        return
    state_dir = tmp_path_factory.mktemp("kafka")
    try:
        clusters = script.start(CLUSTERS, state_dir, die_with_parent=True, quiet=True)
    except script.KafkaScriptError as exc:
        pytest.fail(f"could not start Kafka for the tests marked 'kafka':\n{exc}", pytrace=False)
    try:
        yield clusters
    finally:
        script.stop(state_dir)


def connection(cluster: KafkaCluster, username: str | None = None, password: str = "") -> Any:
    """A :class:`KafkaConnection` to ``cluster`` as admin, or as another SCRAM user."""
    if username is None:
        return KafkaConnection(
            cluster.bootstrap, username=cluster.username, password=SecretStr(cluster.password)
        )
    return KafkaConnection(cluster.bootstrap, username=username, password=SecretStr(password))


def _unique(kind: str) -> str:
    return f"{kind}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def kafka_prefix() -> str:
    """A fresh virtual-cluster prefix, e.g. ``t3f9a0c1d2e.``."""
    return _unique("t") + "."


@pytest.fixture
def kafka_topic() -> str:
    return _unique("topic-")


@pytest.fixture
def kafka_group() -> str:
    return _unique("group-")


class BackendFactory(Protocol):
    def __call__(
        self,
        zone: str = "z",
        *,
        cluster: int = 0,
        prefix: str | None = None,
        username: str | None = None,
        password: str = "",
        open: bool = True,
    ) -> KafkaBackend: ...


@pytest.fixture
def kafka_backend(
    kafka_clusters: list[KafkaCluster], kafka_prefix: str
) -> Iterator[BackendFactory]:
    """Factory of ``KafkaBackend`` objects; by default admin on cluster 0 under this test's
    prefix. All are closed after the test."""
    made: list[KafkaBackend] = []

    def make(
        zone: str = "z",
        *,
        cluster: int = 0,
        prefix: str | None = None,
        username: str | None = None,
        password: str = "",
        open: bool = True,
    ) -> KafkaBackend:
        conn = connection(kafka_clusters[cluster], username, password)
        backend = KafkaBackend.from_connection(
            zone, conn, prefix=kafka_prefix if prefix is None else prefix, timeout_s=20.0
        )
        made.append(backend)
        if open:
            backend.open()
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def kafka_admin(kafka_clusters: list[KafkaCluster]) -> Callable[[int], KafkaAdmin]:
    """``kafka_admin(i)``: a :class:`KafkaAdmin` logged in as the super user of cluster ``i``."""

    def make(cluster: int = 0) -> KafkaAdmin:
        return KafkaAdmin(connection(kafka_clusters[cluster]), timeout_s=20.0)

    return make


# -- workspaces on Kafka ------------------------------------------------------------------
Layout = Literal["dedicated", "virtual"]


def kafka_zones(
    workspace: Path,
    clusters: Sequence[Any],
    monkeypatch: pytest.MonkeyPatch,
    *,
    layout: Layout,
    prefix: str,
) -> dict[str, dict[str, Any]]:
    """Point the zones of ``workspace/trustzones.yaml`` at Kafka; returns zone → backend.

    ``dedicated``: payments on cluster 0, analytics on cluster 1 (``prefix`` only keeps tests
    apart on the shared test clusters; pass ``""`` for a whole cluster per zone).
    ``virtual``: both zones on cluster 0, as virtual clusters ``<prefix>payments.`` and
    ``<prefix>analytics.``. Passwords come from environment variables (``password_env``).
    """
    path = workspace / "trustzones.yaml"
    doc = yaml.safe_load(path.read_text())
    backends: dict[str, dict[str, Any]] = {}
    for i, zone in enumerate(doc["zones"]):
        name = zone["name"]
        index = i if layout == "dedicated" else 0
        cluster = clusters[index]
        env = f"TZ_TEST_KAFKA_{index}_PASSWORD"
        monkeypatch.setenv(env, cluster.password)
        backend = {
            "type": "kafka",
            "bootstrap": cluster.bootstrap,
            "username": cluster.username,
            "password_env": env,
            "prefix": prefix if layout == "dedicated" else f"{prefix}{name}.",
        }
        zone["backend"] = backend
        backends[name] = backend
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return backends


def approve(ws: Any, flow: str = "payments-to-analytics") -> None:
    """Approve the flow's current definition as the security officer (as an operator would)."""
    from trustzones.errors import ApprovalRequired
    from trustzones.flows import open_approvals, open_flow, require_approved

    runner = open_flow(ws, flow)
    try:
        require_approved(ws, runner)
    except ApprovalRequired:
        store = open_approvals(ws)
        (req,) = [r for r in store.list() if r.subject == flow]
        store.approve(req.id, approver="security-officer")
        store.close()
    require_approved(ws, runner)
