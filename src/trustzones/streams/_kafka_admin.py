"""Connection settings, error translation and broker-level admin helpers for Apache Kafka.

Shared by the Kafka backend (:mod:`trustzones.streams._kafka`) and by provisioning, which
creates SCRAM users and ACLs from the config. Everything here talks to a real broker through
``confluent-kafka``'s ``AdminClient``; nothing is simulated.

Example::

    conn = KafkaConnection("127.0.0.1:9092", username="admin", password="...")
    with KafkaAdmin(conn) as admin:
        admin.upsert_scram_user("analyst", "s3cret")
        admin.create_acls([AclRule("User:analyst", "topic", "clicks", operation="read")])
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, NoReturn, Self, cast

from pydantic import SecretStr

try:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # implicit re-exports
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "The Kafka backend needs confluent-kafka: pip install 'trustzones[kafka]'"
    ) from exc

from trustzones.errors import (
    AccessDenied,
    AuthenticationFailed,
    StreamError,
    TrustzonesError,
    UnknownTopic,
)

__all__ = [
    "AclRule",
    "KafkaAdmin",
    "KafkaConnection",
    "KafkaUnavailable",
    "translate_kafka_error",
]

log = logging.getLogger("trustzones.streams.kafka")

SecurityProtocol = Literal["SASL_PLAINTEXT", "SASL_SSL", "PLAINTEXT", "SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
ResourceKind = Literal["topic", "group", "transactional_id", "cluster"]
Operation = Literal[
    "all",
    "read",
    "write",
    "create",
    "delete",
    "alter",
    "describe",
    "cluster_action",
    "describe_configs",
    "alter_configs",
    "idempotent_write",
]


class KafkaUnavailable(StreamError):
    """The Kafka cluster could not be reached (or did not answer in time)."""


# -- connection -------------------------------------------------------------------------------
@dataclass(frozen=True)
class KafkaConnection:
    """Where a Kafka cluster is and how to log in. ``extra`` adds librdkafka settings.

    ``repr`` never shows the password (it is a :class:`~pydantic.SecretStr`).
    """

    bootstrap: str
    username: str | None = None
    password: SecretStr | None = None
    security_protocol: SecurityProtocol = "SASL_PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.password, str):  # accept plain strings, keep them secret
            object.__setattr__(self, "password", SecretStr(self.password))
        if not self.bootstrap:
            raise TrustzonesError("Kafka connection: bootstrap servers are empty")
        if self.security_protocol.startswith("SASL") and not self.username:
            raise TrustzonesError(
                f"Kafka connection to {self.bootstrap}: {self.security_protocol} needs a username "
                "and password"
            )

    def client_config(self, client_id: str, errors: _ErrorLog | None = None) -> dict[str, Any]:
        """librdkafka settings for one client (contains the password: never log it)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "client.id": client_id,
            "logger": log,
            # Brokers close idle connections; librdkafka logs each reconnect at warning level.
            "log.connection.close": False,
        }
        if self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.username
            conf["sasl.password"] = self.password.get_secret_value() if self.password else ""
        if errors is not None:
            conf["error_cb"] = errors.record
        conf.update(self.extra)
        return conf

    def describe(self) -> str:
        """Who connects where, for error messages (no secrets)."""
        who = f" as {self.username!r}" if self.username else ""
        return f"{self.bootstrap}{who}"


class _ErrorLog:
    """Collects librdkafka's global errors (``error_cb``) so failures can say why."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: list[Any] = []

    def record(self, err: Any) -> None:
        with self._lock:
            self._errors.append(err)
            del self._errors[:-20]

    def authentication_error(self) -> Any | None:

        with self._lock:
            for err in reversed(self._errors):
                if err.code() in (
                    KafkaError._AUTHENTICATION,
                    KafkaError.SASL_AUTHENTICATION_FAILED,
                ):
                    return err
        return None

    def last(self) -> Any | None:
        with self._lock:
            return self._errors[-1] if self._errors else None


# -- errors -----------------------------------------------------------------------------------
def translate_kafka_error(
    exc: BaseException,
    *,
    action: str,
    conn: KafkaConnection,
    errors: _ErrorLog | None = None,
    zone: str | None = None,
) -> TrustzonesError:
    """Map a confluent-kafka exception to a :class:`TrustzonesError` with a useful message.

    ``action`` says what was attempted ("produce to topic 'x'"). Messages name the cluster and
    user but never the password.
    """

    where = f"Kafka zone {zone!r}" if zone else f"Kafka at {conn.bootstrap}"
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(err, KafkaError):
        return StreamError(f"{where}: could not {action}: {exc}")
    code = err.code()
    detail = f"{err.str()} ({err.name()})"
    auth = errors.authentication_error() if errors is not None else None
    if code in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED) or (
        auth is not None
        and code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN)
    ):
        return AuthenticationFailed(
            f"{where}: could not {action}: the broker at {conn.bootstrap} refused the login of "
            f"{conn.username!r} ({conn.sasl_mechanism}). Check the username and password."
        )
    if code in (
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    ):
        return AccessDenied(
            f"{where}: could not {action}: the broker's ACLs do not allow it for "
            f"{conn.username!r} ({err.name()}). Grant it in trustzones.yaml and apply, or use "
            "a principal that has the grant."
        )
    if code in (
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
    ):
        return UnknownTopic(
            f"{where}: could not {action}: {detail}. Create the topic first (ensure_topic, or "
            "declare it in trustzones.yaml and apply)."
        )
    if code in (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.REQUEST_TIMED_OUT,
    ):
        last = errors.last() if errors is not None else None
        hint = f" Last client error: {last.str()}." if last is not None else ""
        return KafkaUnavailable(
            f"{where}: could not {action}: {detail}. Is the cluster at {conn.bootstrap} "
            f"running and reachable?{hint}"
        )
    return StreamError(f"{where}: could not {action}: {detail}")


def _raise(
    exc: BaseException,
    *,
    action: str,
    conn: KafkaConnection,
    errors: _ErrorLog | None = None,
    zone: str | None = None,
) -> NoReturn:
    raise translate_kafka_error(exc, action=action, conn=conn, errors=errors, zone=zone) from exc


# -- ACL rules --------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class AclRule:
    """One Kafka ACL: ``principal`` may (or may not) do ``operation`` on a resource.

    ``pattern="prefixed"`` matches every resource whose name starts with ``name``; the
    ``cluster`` resource is always named ``kafka-cluster``.
    """

    principal: str
    resource: ResourceKind
    name: str
    pattern: Literal["literal", "prefixed"] = "literal"
    operation: Operation = "read"
    permission: Literal["allow", "deny"] = "allow"
    host: str = "*"

    def __post_init__(self) -> None:
        if ":" not in self.principal:
            raise TrustzonesError(f"ACL principal {self.principal!r} must look like 'User:<name>'")
        if self.resource == "cluster" and self.name != "kafka-cluster":
            raise TrustzonesError("the Kafka cluster resource is named 'kafka-cluster'")

    def to_binding(self) -> AclBinding:
        return AclBinding(
            _RESOURCE[self.resource],
            self.name,
            _PATTERN[self.pattern],
            self.principal,
            self.host,
            AclOperation[self.operation.upper()],
            AclPermissionType[self.permission.upper()],
        )

    @classmethod
    def from_binding(cls, binding: AclBinding) -> AclRule:
        b: Any = binding  # the stubs type these fields as enum | str | int
        kinds = {v: k for k, v in _RESOURCE.items()}
        patterns = {v: k for k, v in _PATTERN.items()}
        return cls(
            principal=b.principal,
            resource=cast(ResourceKind, kinds[b.restype]),
            name=b.name,
            pattern=cast(Literal["literal", "prefixed"], patterns[b.resource_pattern_type]),
            operation=cast(Operation, b.operation.name.lower()),
            permission=cast(Literal["allow", "deny"], b.permission_type.name.lower()),
            host=b.host,
        )


_RESOURCE: dict[str, ResourceType] = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER,  # librdkafka calls Kafka's CLUSTER resource BROKER
}
_PATTERN: dict[str, ResourcePatternType] = {
    "literal": ResourcePatternType.LITERAL,
    "prefixed": ResourcePatternType.PREFIXED,
}


# -- admin ------------------------------------------------------------------------------------
class KafkaAdmin:
    """Broker-level administration: SCRAM users and ACLs (topics live in the backend).

    Changes are made through the controller and reach the broker's caches a moment later;
    with ``wait=True`` (the default) each call returns only once the broker reports them.
    """

    def __init__(self, conn: KafkaConnection, *, timeout_s: float = 30.0) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self._errors = _ErrorLog()
        self._client: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client = None

    @property
    def client(self) -> Any:
        """The underlying ``confluent_kafka.admin.AdminClient`` (created on first use)."""
        if self._client is None:
            self._client = AdminClient(self.conn.client_config("trustzones-admin", self._errors))
        return self._client

    def metadata(self) -> Any:
        """The cluster's metadata (``ClusterMetadata``: every topic it lets this login see)."""
        try:
            return self.client.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            self.client.poll(0)  # serve error_cb so an authentication failure can be named
            _raise(exc, action="list topics", conn=self.conn, errors=self._errors)

    def _result(self, future: Any, action: str) -> Any:
        try:
            return future.result(timeout=self.timeout_s)
        except TimeoutError as exc:
            self.client.poll(0)  # serve error_cb so an authentication failure can be named
            raise KafkaUnavailable(
                f"Kafka at {self.conn.describe()}: could not {action} within {self.timeout_s:.0f}s"
            ) from exc
        except Exception as exc:
            self.client.poll(0)
            _raise(exc, action=action, conn=self.conn, errors=self._errors)

    # -- SCRAM users --------------------------------------------------------------------------
    def upsert_scram_user(
        self,
        name: str,
        password: SecretStr | str,
        *,
        mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512",
        iterations: int = 8192,
        wait: bool = True,
    ) -> None:
        """Create the SCRAM user ``name`` or change its password."""

        secret = password.get_secret_value() if isinstance(password, SecretStr) else password
        mech = ScramMechanism[mechanism.replace("-", "_")]
        upsert = UserScramCredentialUpsertion(
            name, ScramCredentialInfo(mech, iterations), secret.encode()
        )
        futures = self.client.alter_user_scram_credentials([upsert])
        for future in futures.values():
            self._result(future, f"create or update SCRAM user {name!r}")
        if wait:
            self._wait(lambda: mechanism in self.scram_users().get(name, []), f"user {name!r}")

    def delete_scram_user(
        self,
        name: str,
        *,
        mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512",
        wait: bool = True,
    ) -> None:

        deletion = UserScramCredentialDeletion(name, ScramMechanism[mechanism.replace("-", "_")])
        for future in self.client.alter_user_scram_credentials([deletion]).values():
            self._result(future, f"delete SCRAM user {name!r}")
        if wait:
            self._wait(lambda: name not in self.scram_users(), f"deletion of user {name!r}")

    def scram_users(self) -> dict[str, list[str]]:
        """User name → SCRAM mechanisms it has credentials for."""
        future = self.client.describe_user_scram_credentials()
        described = self._result(future, "list SCRAM users")
        out: dict[str, list[str]] = {}
        for user, desc in described.items():
            out[user] = sorted(
                info.mechanism.name.replace("_", "-") for info in desc.scram_credential_infos
            )
        return out

    # -- ACLs ---------------------------------------------------------------------------------
    def create_acls(self, rules: Iterable[AclRule], *, wait: bool = True) -> None:
        rules = list(rules)
        if not rules:
            return
        futures = self.client.create_acls([r.to_binding() for r in rules])
        for binding, future in futures.items():
            self._result(future, f"create ACL {AclRule.from_binding(binding)}")
        if wait:
            wanted = set(rules)
            self._wait(lambda: wanted <= set(self.describe_acls()), f"{len(rules)} ACL(s)")

    def describe_acls(
        self, *, principal: str | None = None, resource: ResourceKind | None = None
    ) -> list[AclRule]:
        """Every ACL on the cluster (optionally of one principal or resource kind)."""

        any_name: Any = None  # None matches any name / principal / host
        flt = AclBindingFilter(
            _RESOURCE[resource] if resource else ResourceType.ANY,
            any_name,
            ResourcePatternType.ANY,
            principal if principal is not None else any_name,
            any_name,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
        bindings = self._result(self.client.describe_acls(flt), "list ACLs")
        return sorted(AclRule.from_binding(b) for b in bindings)

    def delete_acls(self, rules: Iterable[AclRule], *, wait: bool = True) -> None:
        """Delete exactly these ACLs (each rule is matched literally)."""

        rules = list(rules)
        if not rules:
            return
        filters = []
        for r in rules:
            b = r.to_binding()
            filters.append(
                AclBindingFilter(
                    b.restype,
                    b.name,
                    b.resource_pattern_type,
                    b.principal,
                    b.host,
                    b.operation,
                    b.permission_type,
                )
            )
        for future in self.client.delete_acls(filters).values():
            self._result(future, "delete ACLs")
        if wait:
            gone = set(rules)
            self._wait(lambda: not gone & set(self.describe_acls()), "ACL deletion")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka at {self.conn.describe()}: {what} not visible on the broker after "
                    f"{self.timeout_s:.0f}s"
                )
            time.sleep(0.05)
