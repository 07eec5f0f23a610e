"""Provisioning: make Kafka clusters match ``trustzones.yaml`` (topics, SCRAM users, ACLs).

Example::

    from trustzones.provision import apply_plan, make_plan
    from trustzones.zone import Workspace

    with Workspace.open() as ws:
        plans = make_plan(ws.config)          # reads the clusters, changes nothing
        for p in plans:
            print(p.text())
        apply_plan(ws.config, plans, emit=ws.emit)   # each change is audited first

Access rules become least-privilege Kafka ACLs (see :func:`desired_state` for the exact set),
so the broker's StandardAuthorizer enforces the zone boundaries as a second, independent line
of defence. SCRAM passwords are generated at apply time and kept only in
``.trustzones/kafka-credentials.yaml`` (mode 0600); they are never printed or audited.

Threading: not thread-safe; run one ``apply`` at a time per workspace.
"""

from trustzones.provision._desired import ClusterWant, TopicWant, desired_state
from trustzones.provision._plan import (
    CREDENTIALS_FILE,
    Change,
    ClusterPlan,
    ProvisionError,
    apply_plan,
    make_plan,
    read_credentials,
)
from trustzones.provision._quotas import QuotaTool

__all__ = [
    "CREDENTIALS_FILE",
    "Change",
    "ClusterPlan",
    "ClusterWant",
    "ProvisionError",
    "QuotaTool",
    "TopicWant",
    "apply_plan",
    "desired_state",
    "make_plan",
    "read_credentials",
]
