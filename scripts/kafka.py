#!/usr/bin/env python3
"""Real single-node Apache Kafka clusters on loopback, for development, tests and CI.

No Docker and no tarball: the broker is Apache Kafka's ``kafka_2.13`` artifact and its
runtime dependencies, resolved from Maven Central with ``mvn`` (``scripts/kafka/pom.xml``) into
a cache directory that later runs reuse. Each cluster is one KRaft node (broker + controller)
with

* a ``CLIENT`` listener on 127.0.0.1 (SASL_PLAINTEXT, SCRAM-SHA-512), also inter-broker;
* a ``CONTROLLER`` listener on 127.0.0.1 (SASL_PLAINTEXT, PLAIN with a static JAAS user, since
  SCRAM credentials live in the metadata the controller itself serves);
* the StandardAuthorizer with ``allow.everyone.if.no.acl.found=false`` and the super user
  ``admin``, whose SCRAM credential is written at format time (KIP-900 ``--add-scram``);
* replication factor 1 for the offsets and transaction state topics, so transactions work;
* a small heap. Ports are chosen by the OS.

Usage::

    python scripts/kafka.py fetch                       # only resolve the jars
    python scripts/kafka.py start --clusters 2 --state-dir /tmp/tz-kafka
    python scripts/kafka.py status --state-dir /tmp/tz-kafka
    python scripts/kafka.py stop --state-dir /tmp/tz-kafka
    python scripts/kafka.py start --clusters 1 --state-dir /tmp/tz-kafka --foreground

``start`` writes ``<state-dir>/kafka.json`` (mode 0600: it holds the admin passwords), prints it,
and returns with the brokers running in the background; ``stop`` reads it. Tests point
``TRUSTZONES_KAFKA_STATE`` at that file to reuse running clusters.

Environment: ``TRUSTZONES_KAFKA_CACHE`` (jar cache, default ``~/.cache/trustzones/kafka``),
``TRUSTZONES_KAFKA_VERSION`` (default: the version in the pom), ``JAVA_HOME``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
POM = HERE / "kafka" / "pom.xml"
LOG4J_CONFIG = HERE / "kafka" / "log4j2.properties"
STATE_FILE = "kafka.json"
CDS_DUMP = "classes.jsa"
ADMIN_USER = "admin"
CONTROLLER_USER = "controller"
MECHANISM = "SCRAM-SHA-512"
SECURITY_PROTOCOL = "SASL_PLAINTEXT"
DEFAULT_HEAP = "512m"


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Brokers started by this process, by pid."""


class KafkaScriptError(RuntimeError):
    """Something went wrong resolving, starting or stopping a broker; the message says what."""


# -- jars -------------------------------------------------------------------------------------
def pom_version() -> str:
    """The Kafka version pinned in ``scripts/kafka/pom.xml``."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise KafkaScriptError(f"{POM}: no <kafka.version> property")
    return match.group(1).strip()


def default_version() -> str:
    return os.environ.get("TRUSTZONES_KAFKA_VERSION") or pom_version()


def cache_root() -> Path:
    if env := os.environ.get("TRUSTZONES_KAFKA_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trustzones" / "kafka"


def _pom_digest() -> str:
    data = POM.read_bytes() + LOG4J_CONFIG.read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(version: str | None = None, *, quiet: bool = False) -> Path:
    """Resolve the broker jars into the cache (once) and return the ``libs`` directory."""
    version = version or default_version()
    root = cache_root() / version
    libs = root / "libs"
    marker = libs / ".complete"
    digest = _pom_digest()
    if marker.exists() and marker.read_text().strip() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaScriptError(
            "mvn (Apache Maven) is not on PATH; install it (apt-get install maven) to resolve "
            "the Kafka broker jars from Maven Central"
        )
    with _file_lock(root / ".lock"):
        if marker.exists() and marker.read_text().strip() == digest:
            return libs
        tmp = root / f"libs.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
            f"-Dkafka.version={version}",
        ]
        if not quiet:
            print(f"resolving org.apache.kafka:kafka_2.13:{version} with mvn ...", file=sys.stderr)
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise KafkaScriptError(
                f"mvn could not resolve Kafka {version} (exit {proc.returncode}):\n{tail}"
            )
        if not any(tmp.glob("kafka_2.13-*.jar")):
            raise KafkaScriptError(f"mvn finished but {tmp} holds no kafka_2.13 jar")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        marker.write_text(digest + "\n")
        if not quiet:
            took = time.monotonic() - started
            print(f"resolved {len(list(libs.glob('*.jar')))} jars in {took:.1f}s", file=sys.stderr)
    return libs


# -- clusters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cluster:
    """One running single-node cluster, as recorded in the state file."""

    name: str
    bootstrap: str
    controller: str
    username: str
    password: str
    mechanism: str
    security_protocol: str
    pid: int
    dir: str

    def client_config(self) -> dict[str, str]:
        """librdkafka / confluent-kafka settings to connect as the admin super user."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
        }


def _java() -> str:
    if home := os.environ.get("JAVA_HOME"):
        candidate = Path(home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaScriptError("java is not on PATH; Kafka 4.x brokers need Java 17 or newer")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _random_cluster_id() -> str:
    # Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding, never
    # starting with '-' (so command lines do not take it for an option).
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _jaas_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _server_properties(
    *, data_dir: Path, broker_port: int, controller_port: int, admin_pw: str, ctrl_pw: str
) -> str:
    scram_jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN_USER}" password="{_jaas_quote(admin_pw)}";'
    )
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{CONTROLLER_USER}" password="{_jaas_quote(ctrl_pw)}" '
        f'user_{CONTROLLER_USER}="{_jaas_quote(ctrl_pw)}";'
    )
    props = {
        "node.id": "1",
        "process.roles": "broker,controller",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"CLIENT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"CLIENT://127.0.0.1:{broker_port}",
        "listener.security.protocol.map": "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "inter.broker.listener.name": "CLIENT",
        "controller.listener.names": "CONTROLLER",
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.client.sasl.enabled.mechanisms": MECHANISM,
        "listener.name.client.scram-sha-512.sasl.jaas.config": scram_jaas,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain_jaas,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN_USER};User:{CONTROLLER_USER}",
        "log.dirs": str(data_dir),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # One node: internal topics must not ask for three replicas, or groups and
        # transactions never become available.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Small machine: fewer threads, and a small log cleaner buffer (default 128 MiB).
        "num.network.threads": "2",
        "num.io.threads": "4",
        "background.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    lines = ["# written by scripts/kafka.py"]
    for key, value in props.items():
        # java.util.Properties: escape backslashes; the values hold no newlines.
        lines.append(f"{key}={value.replace(chr(92), chr(92) * 2)}")
    return "\n".join(lines) + "\n"


def _jvm_options(heap: str) -> list[str]:
    return [
        f"-Xms{min_heap(heap)}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        # C1 only: on two shared cores the C2 compiler threads roughly double the start-up
        # time. Pass --jvm-opt=-XX:TieredStopAtLevel=4 for peak throughput (benchmarks).
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
    ]


def _cds_archive(java: str, libs: Path) -> Path:
    """Where the class-data-sharing archive of this JVM and these jars lives.

    Loading Kafka's classes from a CDS archive instead of ~90 jars saves several seconds of
    start-up. The archive is made by the JVM itself when the first broker without one exits
    (``-XX:ArchiveClassesAtExit``); see :func:`stop_cluster`.
    """
    jvm = Path(java).resolve()
    key = hashlib.sha256(f"{jvm}:{jvm.stat().st_mtime_ns}:{_pom_digest()}".encode()).hexdigest()
    return libs.parent / f"classes-{key[:12]}.jsa"


def min_heap(heap: str) -> str:
    match = re.fullmatch(r"(\d+)([mMgG])", heap)
    if not match:
        raise KafkaScriptError(f"--heap {heap!r}: use a size like 512m or 1g")
    mib = int(match.group(1)) * (1024 if match.group(2).lower() == "g" else 1)
    return f"{max(64, mib // 2)}m"


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Launch:
    name: str
    dir: Path
    props: Path
    broker_port: int
    controller_port: int
    admin_password: str
    proc: subprocess.Popen[bytes] | None = None


def _prepare(name: str, cluster_dir: Path) -> _Launch:
    shutil.rmtree(cluster_dir, ignore_errors=True)
    (cluster_dir / "logs").mkdir(parents=True)
    broker_port = _free_port()
    controller_port = _free_port()
    while controller_port == broker_port:
        controller_port = _free_port()
    admin_pw = secrets.token_urlsafe(18)
    ctrl_pw = secrets.token_urlsafe(18)
    props = cluster_dir / "server.properties"
    props.write_text(
        _server_properties(
            data_dir=cluster_dir / "data",
            broker_port=broker_port,
            controller_port=controller_port,
            admin_pw=admin_pw,
            ctrl_pw=ctrl_pw,
        )
    )
    props.chmod(0o600)
    return _Launch(name, cluster_dir, props, broker_port, controller_port, admin_pw)


def _format(java: str, libs: Path, launch: _Launch) -> subprocess.Popen[bytes]:
    scram = f'{MECHANISM}=[name="{ADMIN_USER}",password="{launch.admin_password}"]'
    archive = _cds_archive(java, libs)
    cds = [f"-XX:SharedArchiveFile={archive}"] if archive.exists() else []
    cmd = [
        java,
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",
        *cds,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={launch.dir / 'logs'}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        _random_cluster_id(),
        "--config",
        str(launch.props),
        "--add-scram",
        scram,
    ]
    with (launch.dir / "logs" / "format.out").open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _launch_broker(
    java: str,
    libs: Path,
    launch: _Launch,
    heap: str,
    die_with_parent: bool,
    extra: Sequence[str],
) -> subprocess.Popen[bytes]:
    cmd = [
        java,
        *_jvm_options(heap),
        *extra,
        f"-Dkafka.logs.dir={launch.dir / 'logs'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(launch.props),
    ]
    with (launch.dir / "logs" / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_set_parent_death_signal if die_with_parent else None,
        )
    _CHILDREN[proc.pid] = proc  # keep it (and reap it in stop_cluster), never leak a Popen
    return proc


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} is missing)"
    return "\n".join(text.splitlines()[-lines:])


def _cluster_of(launch: _Launch) -> Cluster:
    assert launch.proc is not None
    return Cluster(
        name=launch.name,
        bootstrap=f"127.0.0.1:{launch.broker_port}",
        controller=f"127.0.0.1:{launch.controller_port}",
        username=ADMIN_USER,
        password=launch.admin_password,
        mechanism=MECHANISM,
        security_protocol=SECURITY_PROTOCOL,
        pid=launch.proc.pid,
        dir=str(launch.dir),
    )


def _probe(cluster: Cluster, timeout: float) -> str | None:
    """``None`` when the broker answers an admin request as ``admin``, else why not."""
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = dict(cluster.client_config())
    conf["log_level"] = 0
    admin = AdminClient(conf)
    try:
        admin.describe_cluster(request_timeout=timeout).result(timeout=timeout + 1)
    except Exception as exc:  # any failure means "not ready yet"
        return f"{type(exc).__name__}: {exc}"
    return None


def warm_up(cluster: Cluster, timeout: float = 60.0) -> None:
    """Create and load the group and transaction coordinators' internal topics now.

    Otherwise the first consumer-group or transactional request of a test pays for it
    (COORDINATOR_LOAD_IN_PROGRESS retries). This goes through a consumer on purpose:
    librdkafka 2.16's admin ListConsumerGroupOffsets can crash the process (SIGSEGV) when
    the coordinator answers COORDINATOR_LOAD_IN_PROGRESS, which is exactly the state here.
    """
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    conf: dict[str, Any] = dict(cluster.client_config())
    conf["log_level"] = 0
    deadline = time.monotonic() + timeout
    consumer = Consumer({**conf, "group.id": "__trustzones-warm-up", "enable.auto.commit": False})
    try:
        while True:
            try:
                consumer.committed([TopicPartition("__trustzones-warm-up", 0)], timeout=5)
                break
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise KafkaScriptError(
                        f"{cluster.name}: the group coordinator did not load: {exc}"
                    ) from exc
                time.sleep(0.2)
    finally:
        consumer.close()
    producer = Producer({**conf, "transactional.id": "__trustzones-warm-up"})
    try:
        producer.init_transactions(max(1.0, deadline - time.monotonic()))
        producer.begin_transaction()
        producer.commit_transaction(max(1.0, deadline - time.monotonic()))
    except KafkaException as exc:
        raise KafkaScriptError(
            f"{cluster.name}: the transaction coordinator did not load: {exc}"
        ) from exc
    finally:
        producer.flush(1)


def _warm_all(clusters: Sequence[Cluster], timeout: float) -> None:
    errors: list[BaseException] = []

    def run(cluster: Cluster) -> None:
        try:
            warm_up(cluster, timeout)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in clusters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _wait_ready(launches: Sequence[_Launch], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(launches)
    last: dict[str, str] = {}
    while pending:
        for launch in list(pending):
            assert launch.proc is not None
            if launch.proc.poll() is not None:
                raise _BrokerDied(launch)
            reason = _probe(_cluster_of(launch), timeout=2.0)
            if reason is None:
                pending.remove(launch)
            else:
                last[launch.name] = reason
        if pending and time.monotonic() > deadline:
            names = ", ".join(launch.name for launch in pending)
            details = "\n".join(
                f"{launch.name}: {last.get(launch.name)}\n"
                + _tail(launch.dir / "logs" / "server.log")
                for launch in pending
            )
            raise KafkaScriptError(
                f"Kafka cluster(s) {names} did not answer within {timeout:.0f}s:\n{details}"
            )
        if pending:
            time.sleep(0.25)


class _BrokerDied(KafkaScriptError):
    def __init__(self, launch: _Launch) -> None:
        self.launch = launch
        assert launch.proc is not None
        logs = launch.dir / "logs"
        super().__init__(
            f"Kafka broker {launch.name} exited with code {launch.proc.returncode} during "
            f"start-up.\n--- {logs / 'stdout.log'}\n{_tail(logs / 'stdout.log')}\n"
            f"--- {logs / 'server.log'}\n{_tail(logs / 'server.log')}"
        )


def _port_clash(launch: _Launch) -> bool:
    text = _tail(launch.dir / "logs" / "server.log", 200) + _tail(
        launch.dir / "logs" / "stdout.log", 200
    )
    return "Address already in use" in text or "BindException" in text


def start(
    clusters: int,
    state_dir: Path,
    *,
    version: str | None = None,
    heap: str = DEFAULT_HEAP,
    timeout: float = 120.0,
    die_with_parent: bool = False,
    warm: bool = True,
    jvm_options: Sequence[str] = (),
    quiet: bool = False,
) -> list[Cluster]:
    """Format and start ``clusters`` single-node clusters; return once all answer as admin.

    Writes ``state_dir/kafka.json``. ``die_with_parent`` makes the brokers get SIGTERM when
    the calling process dies (for test fixtures); ``warm`` loads the group and transaction
    coordinators before returning; ``jvm_options`` are added to every broker's command line.
    """
    if clusters < 1:
        raise KafkaScriptError("--clusters must be at least 1")
    state_dir = Path(state_dir).resolve()
    state_path = state_dir / STATE_FILE
    if state_path.exists() and any(_alive(c) for c in load_state(state_path)):
        raise KafkaScriptError(
            f"{state_path} describes running brokers; run `python scripts/kafka.py stop "
            f"--state-dir {state_dir}` first"
        )
    libs = fetch(version, quiet=quiet)
    java = _java()
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    launches = [_prepare(f"cluster-{i}", state_dir / f"cluster-{i}") for i in range(clusters)]
    attempts = 0
    while True:
        attempts += 1
        formats = [(launch, _format(java, libs, launch)) for launch in launches]
        for launch, proc in formats:
            if proc.wait() != 0:
                raise KafkaScriptError(
                    f"formatting KRaft storage of {launch.name} failed (exit {proc.returncode}):"
                    f"\n{_tail(launch.dir / 'logs' / 'format.out')}"
                )
        archive = _cds_archive(java, libs)
        for i, launch in enumerate(launches):
            if archive.exists():
                cds = [f"-XX:SharedArchiveFile={archive}"]
            elif i == 0:  # one broker writes the archive when it exits
                cds = [f"-XX:ArchiveClassesAtExit={launch.dir / CDS_DUMP}"]
                (launch.dir / (CDS_DUMP + ".target")).write_text(str(archive))
            else:
                cds = []
            launch.proc = _launch_broker(
                java, libs, launch, heap, die_with_parent, [*cds, *jvm_options]
            )
        try:
            _wait_ready(launches, timeout)
            if warm:
                _warm_all([_cluster_of(launch) for launch in launches], timeout)
            break
        except _BrokerDied as died:
            # Another process may have taken a port between our probe and the broker's bind.
            _stop_launches(launches)
            if attempts >= 3 or not _port_clash(died.launch):
                raise
            launches = [_prepare(launch.name, launch.dir) for launch in launches]
        except BaseException:
            _stop_launches(launches)
            raise
    result = [_cluster_of(launch) for launch in launches]
    _write_state(state_path, result)
    if not quiet:
        took = time.monotonic() - started
        print(f"started {clusters} Kafka cluster(s) in {took:.1f}s", file=sys.stderr)
    return result


def _stop_launches(launches: Sequence[_Launch]) -> None:
    for launch in launches:
        if launch.proc is not None:
            if launch.proc.poll() is None:
                launch.proc.kill()
            launch.proc.wait()
            _CHILDREN.pop(launch.proc.pid, None)


def _write_state(path: Path, clusters: Sequence[Cluster]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"clusters": [asdict(c) for c in clusters]}, fh, indent=2)
        fh.write("\n")
    tmp.replace(path)


def load_state(path: Path) -> list[Cluster]:
    """The clusters recorded in a state file written by :func:`start`."""
    try:
        data = json.loads(Path(path).read_text())
        return [Cluster(**entry) for entry in data["clusters"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KafkaScriptError(f"{path}: not a Kafka state file written by start ({exc})") from exc


def _alive(cluster: Cluster) -> bool:
    """True if ``cluster.pid`` is still the broker we started (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{cluster.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return (cluster.dir + "/server.properties").encode() in cmdline


def stop_cluster(cluster: Cluster, timeout: float = 30.0) -> None:
    """SIGTERM (controlled shutdown), wait up to ``timeout``, then SIGKILL."""
    if not _alive(cluster):
        _reap(cluster.pid)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(cluster.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    clean = False
    while time.monotonic() < deadline:
        if not _alive(cluster) or _zombie(cluster.pid):
            clean = True
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(cluster.pid, signal.SIGKILL)
    _reap(cluster.pid)
    _keep_cds_archive(Path(cluster.dir), complete=clean)


def _reap(pid: int) -> None:
    """Wait for ``pid`` if this process started it (the fixture's case); otherwise init does."""
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()


def _keep_cds_archive(cluster_dir: Path, *, complete: bool) -> None:
    """Move the class-data archive a broker wrote on a clean exit into the jar cache."""
    dump = cluster_dir / CDS_DUMP
    target_file = cluster_dir / (CDS_DUMP + ".target")
    try:
        if complete and dump.exists() and target_file.exists():
            target = Path(target_file.read_text().strip())
            if not target.exists():
                os.replace(dump, target)
    except OSError:
        pass  # only a speed-up
    dump.unlink(missing_ok=True)
    target_file.unlink(missing_ok=True)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def stop(state_dir: Path, timeout: float = 30.0) -> list[Cluster]:
    """Stop every cluster recorded in ``state_dir/kafka.json`` (all at once)."""
    state_path = Path(state_dir) / STATE_FILE
    if not state_path.exists():
        return []
    clusters = load_state(state_path)
    for cluster in clusters:
        if _alive(cluster):
            with contextlib.suppress(ProcessLookupError):
                os.kill(cluster.pid, signal.SIGTERM)
    for cluster in clusters:
        stop_cluster(cluster, timeout)
    return clusters


# -- command line -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="resolve the broker jars into the cache")
    p_start = sub.add_parser("start", help="format and start clusters")
    p_stop = sub.add_parser("stop", help="stop the clusters of a state dir")
    p_status = sub.add_parser("status", help="print the state file and whether brokers run")
    for p in (p_fetch, p_start):
        p.add_argument("--version", default=None, help="Kafka version (default: the pom's)")
    p_start.add_argument("--clusters", type=int, default=1)
    p_start.add_argument("--heap", default=DEFAULT_HEAP, help="max heap per broker, e.g. 512m")
    p_start.add_argument("--timeout", type=float, default=120.0)
    p_start.add_argument(
        "--jvm-opt",
        action="append",
        default=[],
        help="extra JVM option for the brokers (repeatable), e.g. -XX:TieredStopAtLevel=4",
    )
    p_start.add_argument(
        "--foreground", action="store_true", help="stay until SIGINT/SIGTERM, then stop"
    )
    for p in (p_start, p_stop, p_status):
        p.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch(args.version))
        elif args.command == "start":
            clusters = start(
                args.clusters,
                args.state_dir,
                version=args.version,
                heap=args.heap,
                timeout=args.timeout,
                jvm_options=args.jvm_opt,
            )
            print((args.state_dir.resolve() / STATE_FILE).read_text(), end="")
            if args.foreground:
                _wait_for_signal()
                stop(args.state_dir)
                del clusters
        elif args.command == "stop":
            stopped = stop(args.state_dir)
            print(f"stopped {len(stopped)} cluster(s)", file=sys.stderr)
        elif args.command == "status":
            path = args.state_dir / STATE_FILE
            for cluster in load_state(path):
                state = "running" if _alive(cluster) else "stopped"
                print(f"{cluster.name}\t{cluster.bootstrap}\tpid {cluster.pid}\t{state}")
    except KafkaScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _wait_for_signal() -> None:
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not received:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
