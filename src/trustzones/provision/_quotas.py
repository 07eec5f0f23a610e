"""Kafka client quotas through Kafka's own ``ConfigCommand`` (confluent-kafka has no quota API).

The tool is found as ``kafka-configs.sh`` on ``PATH`` (a Kafka installation), or as the jars in
``$TRUSTZONES_KAFKA_LIBS`` (for example the ``libs`` folder ``scripts/kafka.py fetch`` fills),
run with ``java``. Each call starts a JVM (~3 s), so quotas are read once per cluster and
written once per user. The admin password goes to a 0600 temporary client config file that is
deleted right after the call; it is never on the command line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from trustzones.errors import TrustzonesError
from trustzones.streams._kafka_admin import KafkaConnection

__all__ = ["LIBS_ENV", "QuotaTool"]

LIBS_ENV = "TRUSTZONES_KAFKA_LIBS"
_LINE = re.compile(r"Quota configs for user-principal '([^']+)' are (.*)$")


class QuotaTool:
    """Reads and sets per-user client quotas (``producer_byte_rate``, ``consumer_byte_rate``)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command

    @classmethod
    def find(cls) -> QuotaTool | None:
        script = shutil.which("kafka-configs.sh")
        if script:
            return cls([script])
        libs = os.environ.get(LIBS_ENV)
        java = shutil.which("java")
        if not libs or not java or not Path(libs).is_dir():
            return None
        tools = any(Path(libs).glob("kafka-tools-*.jar"))  # Kafka 4.x moved the tool here
        main = "org.apache.kafka.tools.ConfigCommand" if tools else "kafka.admin.ConfigCommand"
        return cls([java, "-Xmx256m", "-cp", f"{libs}/*", main])

    def _run(self, conn: KafkaConnection, args: list[str]) -> str:
        fd, path = tempfile.mkstemp(prefix="tz-kafka-", suffix=".properties")  # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"security.protocol={conn.security_protocol}\n")
                if conn.security_protocol.startswith("SASL"):
                    pw = conn.password.get_secret_value() if conn.password else ""
                    module = (
                        "org.apache.kafka.common.security.plain.PlainLoginModule"
                        if conn.sasl_mechanism == "PLAIN"
                        else "org.apache.kafka.common.security.scram.ScramLoginModule"
                    )
                    fh.write(f"sasl.mechanism={conn.sasl_mechanism}\n")
                    esc = pw.replace("\\", "\\\\").replace('"', '\\"')
                    fh.write(
                        f'sasl.jaas.config={module} required username="{conn.username}" '
                        f'password="{esc}";\n'
                    )
                if ca := conn.extra.get("ssl.ca.location"):
                    fh.write(f"ssl.truststore.type=PEM\nssl.truststore.location={ca}\n")
            proc = subprocess.run(
                [
                    *self.command,
                    "--bootstrap-server",
                    conn.bootstrap,
                    "--command-config",
                    path,
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            os.unlink(path)
        if proc.returncode != 0:
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
            raise TrustzonesError(
                f"Kafka at {conn.describe()}: kafka-configs failed ({' | '.join(last)[:400]})"
            )
        return proc.stdout

    def user_quotas(self, conn: KafkaConnection) -> dict[str, dict[str, int]]:
        """User → quota name → value, for every user with a quota."""
        out: dict[str, dict[str, int]] = {}
        for line in self._run(conn, ["--describe", "--entity-type", "users"]).splitlines():
            m = _LINE.search(line.strip())
            if m:
                values = dict(kv.split("=", 1) for kv in m.group(2).split(", ") if "=" in kv)
                out[m.group(1)] = {k: int(float(v)) for k, v in values.items()}
        return out

    def set_user_quotas(self, conn: KafkaConnection, user: str, quotas: dict[str, int]) -> None:
        config = ",".join(f"{k}={v}" for k, v in sorted(quotas.items()))
        self._run(
            conn,
            ["--alter", "--add-config", config, "--entity-type", "users", "--entity-name", user],
        )
