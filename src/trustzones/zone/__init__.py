"""The zone runtime: authorized produce and consume with ingress checks and lineage.

Threading: a :class:`Workspace` is used from one thread; open one per thread or process.
"""

from trustzones.zone._authz import Authorizer, Decision, GrantAuthorizer
from trustzones.zone._workspace import ProduceResult, Workspace, ZoneConsumer, find_config

__all__ = [
    "Authorizer",
    "Decision",
    "GrantAuthorizer",
    "ProduceResult",
    "Workspace",
    "ZoneConsumer",
    "find_config",
]
