"""Flows: the only way data moves down between zones.

A flow consumes its source topic as its service principal, sanitises each record (field
transforms), enforces the destination (schema, field classifications), DLP-scans the output,
watermarks it and produces it to the destination; refused records are quarantined in the
source zone with their reason. Flows run only once their exact definition is approved.

Example::

    from trustzones.flows import open_flow, require_approved
    from trustzones.zone import Workspace

    with Workspace.open() as ws:
        runner = open_flow(ws, "payments-to-analytics")
        require_approved(ws, runner)          # raises ApprovalRequired saying who must approve
        stats = runner.run(once=True)

Ordering and threading: one runner per process and flow; a runner processes partitions
round-robin and commits per batch, in source order (see :mod:`trustzones.flows._runner` for
the exactly-once protocol). ``run`` writes each batch from one writer thread of its own while
it decides the next; a runner is not meant to be shared between threads.
"""

from trustzones.flows._approvals import ApprovalRequest, Approvals
from trustzones.flows._factory import (
    flow_status,
    identify_leak,
    open_approvals,
    open_flow,
    open_quarantine,
    request_flow_approval,
    require_approved,
)
from trustzones.flows._generate import event_key, generate_events
from trustzones.flows._quarantine import HeldRecord, Quarantine
from trustzones.flows._runner import FlowBlocked, FlowRunner, FlowStats
from trustzones.flows._watermark import Attribution, Watermarker

__all__ = [
    "ApprovalRequest",
    "Approvals",
    "Attribution",
    "FlowBlocked",
    "FlowRunner",
    "FlowStats",
    "HeldRecord",
    "Quarantine",
    "Watermarker",
    "event_key",
    "flow_status",
    "generate_events",
    "identify_leak",
    "open_approvals",
    "open_flow",
    "open_quarantine",
    "request_flow_approval",
    "require_approved",
]
