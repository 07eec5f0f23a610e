"""Building flows from a workspace: keys, token vault, scanner, approvals, watermarks."""

from __future__ import annotations

from typing import Any

from trustzones.dlp import Finding, Scanner
from trustzones.dlp.redact import redact_findings
from trustzones.dlp.transforms import HashSpec, Transformer, parse_transform
from trustzones.dlp.vault import TokenVault, VaultCipher
from trustzones.errors import AccessDenied, ApprovalRequired
from trustzones.flows._approvals import ApprovalRequest, Approvals
from trustzones.flows._quarantine import Quarantine
from trustzones.flows._runner import FlowRunner
from trustzones.flows._watermark import Attribution, Watermarker, identify
from trustzones.keys import KeyRing
from trustzones.zone import Workspace

__all__ = [
    "flow_status",
    "identify_leak",
    "open_approvals",
    "open_flow",
    "open_quarantine",
    "request_flow_approval",
    "require_approved",
]


class _ZoneSecrets:
    """DLP transform keys derived from one zone's keys (HKDF, purpose-separated)."""

    def __init__(self, ring: KeyRing, zone: str) -> None:
        self._ring = ring
        self._zone = zone

    def __repr__(self) -> str:
        return f"_ZoneSecrets(zone={self._zone!r})"

    def secret(self, purpose: str) -> bytes:
        return self._ring.secret(self._zone, f"dlp/{purpose}")


def _vault(ws: Workspace, zone: str) -> TokenVault:
    cipher = ws.keys.ring(zone).cipher(zone)

    def seal(plaintext: bytes, aad: bytes) -> bytes:
        return cipher.seal(plaintext, aad=b"tz-vault\x00" + aad)

    def open_(sealed: bytes, aad: bytes) -> bytes:
        return cipher.open(sealed, aad=b"tz-vault\x00" + aad)

    d = ws.config.data_dir(zone)
    d.mkdir(parents=True, exist_ok=True)
    return TokenVault(d / f"{zone}.vault.db", cipher=VaultCipher(seal=seal, open=open_))


def watermark_key(ws: Workspace, flow: str) -> bytes:
    f = ws.config.flows[flow]
    zone = ws.config.topics[f.source].zone
    return ws.keys.ring(zone).secret(zone, f"watermark/{flow}/{f.destination}")


def open_flow(ws: Workspace, name: str) -> FlowRunner:
    """A runner for flow ``name``, wired to its source zone's keys and token vault."""
    c = ws.config
    if name not in c.flows:
        from trustzones.errors import FlowError

        raise FlowError(f"no flow named {name!r}; declared: {', '.join(sorted(c.flows))}")
    spec = c.flows[name]
    source_zone = c.topics[spec.source].zone
    ring = ws.keys.ring(source_zone)
    scanner = Scanner(min_confidence=spec.dlp.min_confidence)
    vault = _vault(ws, source_zone)
    transformer = Transformer(keys=_ZoneSecrets(ring, source_zone), vault=vault, scanner=scanner)
    wm = None
    if spec.watermark.enabled:
        hashed = [p for p, t in spec.transforms.items() if isinstance(parse_transform(t), HashSpec)]
        wm = Watermarker(watermark_key(ws, name), hashed)

    def redactor(out: Any, findings: list[Finding]) -> Any:
        return redact_findings(out, findings, style=spec.dlp.redact_style)

    return FlowRunner(
        ws,
        name,
        transformer=transformer,
        scanner=scanner,
        watermarker=wm,
        redactor=redactor,
        on_event=ws.emit,
        vault=vault,
    )


def open_approvals(ws: Workspace) -> Approvals:
    c = ws.config

    def roles(p: str) -> frozenset[str]:
        spec = c.principals.get(p)
        return frozenset(spec.roles) if spec else frozenset()

    return Approvals(
        c.state_dir / "approvals.db",
        holds_zone=lambda p, z: ws.access.holds_zone(p, z),
        roles=roles,
        on_event=ws.emit,
    )


def request_flow_approval(
    ws: Workspace, flow: str, *, requester: str, reason: str = ""
) -> ApprovalRequest:
    c = ws.config
    f = c.flows[flow]
    if requester not in c.principals:
        raise AccessDenied(f"unknown principal {requester!r}")
    return open_approvals(ws).request(
        "flow",
        flow,
        c.flow_hash(flow),
        zone=c.topics[f.source].zone,
        requester=requester,
        required=f.approvals.count,
        approver_role=f.approvals.approver_role,
        reason=reason or f"run flow {flow} as defined in {c.path.name}",
    )


def require_approved(ws: Workspace, runner: FlowRunner) -> None:
    """Raise :class:`ApprovalRequired` unless this exact flow definition is approved."""
    c = ws.config
    h = c.flow_hash(runner.name)
    store = open_approvals(ws)
    try:
        if store.is_approved("flow", runner.name, h):
            return
        req = store.find("flow", runner.name, h)
        if req is None or req.status == "denied":
            req = request_flow_approval(ws, runner.name, requester=runner.spec.principal)
        if req.status == "approved":
            return
        raise ApprovalRequired(
            f"flow {runner.name!r} (definition {h[:12]}) is new or changed and has not been "
            f"approved: request {req.id} waits for {req.describe_needs()}"
        )
    finally:
        store.close()


def open_quarantine(ws: Workspace, flow: str) -> Quarantine:
    return Quarantine(open_flow(ws, flow), open_approvals(ws))


def flow_status(ws: Workspace, name: str) -> dict[str, Any]:
    c = ws.config
    runner = open_flow(ws, name)
    runner.prepare()
    store = open_approvals(ws)
    try:
        approved = store.is_approved("flow", name, c.flow_hash(name))
    finally:
        store.close()
    src = ws.backend(runner.source_zone)
    held = sum(src.end_offsets(runner.quarantine_topic).values())
    return {
        "flow": name,
        "definition": c.flow_hash(name)[:12],
        "approved": approved,
        "positions": {str(p): o for p, o in runner.positions().items()},
        "lag": runner.lag(),
        "quarantined": held,
    }


def identify_leak(ws: Workspace, records: list[Any]) -> list[Attribution]:
    keys = {
        f"{f.name} → {f.destination}": watermark_key(ws, f.name)
        for f in ws.config.flows.values()
        if f.watermark.enabled
    }
    return identify(records, keys)
