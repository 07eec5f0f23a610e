"""How a flow handles a batch: provisional tokens, per-message audit, watermarks, GC."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from typing import Any

import orjson
import pytest
from flow_helpers import all_records, approve, payment
from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.audit.log import AuditReader
from trustzones.flows import Watermarker, generate_events, open_flow
from trustzones.zone import Workspace

FLOW = "payments-to-analytics"


def _events(ws: Workspace, n: int, seed: int) -> list[bytes]:
    events = generate_events(ws.config, "payments.transactions", n, seed=seed, leak_rate=0.2)
    return [orjson.dumps(e) for e in events]


def test_provisional_tokens_decide_exactly_as_checked_tokens(ws: Workspace) -> None:
    values = _events(ws, 120, seed=5)
    # A runner without the vault handle checks each new token on its own when it makes it.
    checked = open_flow(ws, FLOW)
    checked._vault = None
    first = checked.decide_many(values)
    # A fresh runner (empty token cache) whose provisional tokens all turn out to exist:
    # every record is transformed again with the stored tokens, so the bytes are the same.
    again = open_flow(ws, FLOW).decide_many(values)
    assert [(o.kind, o.reason, o.value) for o in again] == [
        (o.kind, o.reason, o.value) for o in first
    ]
    assert {o.kind for o in first} == {"deliver", "quarantine"}
    # And the other way round: provisional tokens first, checked runner after.
    more = _events(ws, 120, seed=6)
    provisional = open_flow(ws, FLOW).decide_many(more)
    checked = open_flow(ws, FLOW)
    checked._vault = None
    assert [(o.kind, o.reason, o.value) for o in checked.decide_many(more)] == [
        (o.kind, o.reason, o.value) for o in provisional
    ]


def test_a_token_is_checked_in_the_field_it_is_written_to(ws: Workspace) -> None:
    """19-digit cards with dashes: a random token's first 16 digits may pass Luhn, and in
    ``card.number`` the scanner reads such a run as a card (alone it does not). Such a
    token must be drawn again, or every payment with that card would be held back."""
    import random

    from trustzones.dlp._validators import luhn_check_digit

    rng = random.Random(4)
    cards = []
    for _ in range(150):
        body = "4" + "".join(rng.choice("0123456789") for _ in range(17))
        digits = body + luhn_check_digit(body)
        cards.append("-".join(digits[i : i + 4] for i in range(0, 19, 4)))
    values = [payment(i, card={"number": c, "brand": "visa"}) for i, c in enumerate(cards)]
    outcomes = open_flow(ws, FLOW).decide_many(values)
    held = [o.findings for o in outcomes if o.kind == "quarantine"]
    assert not [f for f in held if any(x["path"] == "card.number" for x in f)]
    assert all(o.kind == "deliver" for o in outcomes), held


def test_a_fresh_runner_delivers_the_tokens_already_issued(ws: Workspace) -> None:
    approve(ws)
    card = "4716 2210 9735 5563"
    values = [payment(i, card={"number": card, "brand": "visa"}) for i in range(6)]
    ws.produce("payments.transactions", values[:3], principal="payments-service")
    open_flow(ws, FLOW).run(once=True)
    ws.produce("payments.transactions", values[3:], principal="payments-service")
    open_flow(ws, FLOW).run(once=True)
    out = [orjson.loads(r.value) for r in all_records(ws, "analytics.transactions")]
    assert sorted(d["transaction_id"] for d in out) == [f"tx-{i}" for i in range(6)]
    (token,) = {d["card"]["number"] for d in out}
    assert token != card and token.endswith("5563")


def test_every_record_is_audited_where_the_zone_asks_per_message(ws: Workspace) -> None:
    approve(ws)
    leak = payment(2, note="card 4111-1111-1111-1111 please")
    values = [payment(0), payment(1), leak]
    res = ws.produce("payments.transactions", values, principal="payments-service")
    stats = open_flow(ws, FLOW).run(once=True)
    assert (stats.delivered, stats.quarantined) == (2, 1)
    reader = AuditReader(ws.audit.db, principal="auditor", authorize=lambda _p, _op: True)
    events = reader.search(action="flow.transfer", limit=100)
    seen = {}
    for stored in events:
        data = stored.event.data
        extra = data.extra
        if "source_offset" not in extra:
            continue  # the batch summary
        seen[(extra["source_partition"], extra["source_offset"])] = (
            data.decision,
            data.reason,
            extra["content_hash"],
            extra["flow"],
        )
    by_position = {(p.partition, p.offset): v for p, v in zip(res.accepted, values, strict=True)}
    assert set(seen) == set(by_position)
    for where, value in by_position.items():
        decision, reason, content_hash, flow = seen[where]
        assert flow == FLOW
        assert content_hash.endswith(hashlib.sha256(value).hexdigest())
        if value is leak:
            assert (decision, reason) == ("quarantine", "DLP found CREDIT_CARD in the output")
        else:
            assert (decision, reason) == ("allow", None)
    bodies = b"".join(orjson.dumps(e.event.model_dump()) for e in events)
    assert b"4111" not in bodies and b"Ada" not in bodies


def test_a_zone_without_per_message_audit_gets_no_transfer_events(workspace_dir: Any) -> None:
    p = workspace_dir / "trustzones.yaml"
    p.write_text(p.read_text().replace("audit_level: per-message", "audit_level: aggregate"))
    with Workspace.open() as w:
        approve(w)
        w.produce("payments.transactions", [payment(0)], principal="payments-service")
        open_flow(w, FLOW).run(once=True)
        reader = AuditReader(w.audit.db, principal="auditor", authorize=lambda _p, _op: True)
        per_record = [
            e
            for e in reader.search(action="flow.transfer", limit=100)
            if "source_offset" in e.event.data.extra
        ]
        assert per_record == []
        assert len(all_records(w, "analytics.transactions")) == 1


def test_a_batch_is_audited_in_one_transaction_before_it_is_written(
    ws: Workspace, monkeypatch: Any
) -> None:
    """The rights checks, the batch summary and the per-record events of a batch go to the
    audit log together, in one durable append, before anything of the batch is written."""
    approve(ws)
    ws.produce("payments.transactions", _events(ws, 30, seed=8), principal="payments-service")
    quarantine = "tz.quarantine.payments-to-analytics"

    def moved() -> int:  # records in the destination and the quarantine so far
        held = all_records(ws, quarantine, "payments") if quarantine in _topics(ws) else []
        return len(all_records(ws, "analytics.transactions")) + len(held)

    log = ws.audit.log()
    real = log.append_many
    appends: list[tuple[list[str], int]] = []

    def spying(evs: Any) -> Any:
        # A CanonicalEvent (the per-record events) or an AuditEvent (everything else).
        kinds = [e.event().type if hasattr(e, "event") else e.type for e in evs]
        appends.append((kinds, moved()))
        return real(evs)

    runner = open_flow(ws, FLOW)
    runner.prepare()
    monkeypatch.setattr(log, "append_many", spying)
    for _ in range(3):
        assert runner.step(10).read == 10
    # One append a batch (writing may record events of its own, such as a new data key).
    batches = [(k, m) for k, m in appends if "io.trustzones.flow.transfer" in k]
    assert len(batches) == 3
    for i, (kinds, moved_before) in enumerate(batches):
        assert moved_before == 10 * i  # nothing of this batch written yet
        assert kinds.count("io.trustzones.access.decision") == 2  # the rights checks
        # The batch summary and one event per record.
        assert kinds.count("io.trustzones.flow.transfer") == 1 + 10
    assert moved() == 30


def test_rights_checks_are_recorded_even_when_the_batch_fails(
    ws: Workspace, monkeypatch: Any
) -> None:
    approve(ws)
    ws.produce("payments.transactions", _events(ws, 5, seed=9), principal="payments-service")
    runner = open_flow(ws, FLOW)
    reader = AuditReader(ws.audit.db, principal="auditor", authorize=lambda _p, _op: True)

    def checks() -> int:
        found = reader.search(principal="flow-payments-to-analytics", limit=1000)
        return sum(e.event.type == "io.trustzones.access.decision" for e in found)

    before = checks()

    def failing(*_a: Any) -> Any:
        raise RuntimeError("the batch could not be decided")

    monkeypatch.setattr(runner, "_decide_batch", failing)
    with pytest.raises(RuntimeError):
        runner.step(10)
    assert checks() == before + 2  # read and write rights, checked and recorded
    assert runner._carry is None
    with pytest.raises(RuntimeError):
        runner.run(once=True)
    assert checks() == before + 6  # prepare's two checks and _begin's two
    # A batch decided but not written: its rights checks are recorded all the same.
    monkeypatch.undo()
    runner = open_flow(ws, FLOW)

    def not_writing(*_a: Any) -> Any:
        raise RuntimeError("the batch could not be written")

    monkeypatch.setattr(runner, "_write_batch", not_writing)
    with pytest.raises(RuntimeError):
        runner.step(10)
    assert checks() == before + 8
    assert runner._carry is None
    with pytest.raises(RuntimeError):
        runner.run(once=True)
    # prepare, _begin (carried by the batch that failed to write) and the second round
    assert checks() == before + 14
    assert runner._carry is None


def test_when_the_carried_events_cannot_be_recorded_either_it_says_so(
    ws: Workspace, monkeypatch: Any, caplog: Any
) -> None:
    approve(ws)
    ws.produce("payments.transactions", _events(ws, 5, seed=10), principal="payments-service")
    runner = open_flow(ws, FLOW)

    def failing(*_a: Any) -> Any:
        raise RuntimeError("the batch could not be decided")

    def unrecordable(_events: Any) -> Any:
        raise OSError("the audit disk is full")

    monkeypatch.setattr(runner, "_decide_batch", failing)
    monkeypatch.setattr(ws.audit.log(), "append_many", unrecordable)
    with pytest.raises(RuntimeError, match="could not be decided"):  # the first error
        runner.step(10)
    said = re.search(
        r"'payments-to-analytics': (\d+) audit events .* could not be recorded", caplog.text
    )
    assert said is not None and int(said.group(1)) >= 2  # the two rights checks at least
    assert runner._carry is None


def _topics(ws: Workspace) -> set[str]:
    b = ws.backend("payments")
    return {t for t in ("tz.quarantine.payments-to-analytics",) if b.partition_count(t)}


# -- the watermark ----------------------------------------------------------------------


@given(
    body=st.text(alphabet="0123456789abcdef", min_size=8, max_size=64),
    key=st.binary(min_size=16, max_size=100),
)
@settings(max_examples=200, deadline=None)
def test_watermark_tag_is_the_hmac_of_the_body(body: str, key: bytes) -> None:
    # A second implementation: the standard library's HMAC.
    value = body + "0000"
    marked = {"h": value}
    Watermarker(key, ["h"]).mark(marked)
    expected = hmac.new(key, body.encode(), hashlib.sha256).digest()[:2].hex()
    assert marked["h"] == body + expected
    assert Watermarker(key, []).carries(marked["h"])


def test_run_undoes_its_gc_freeze_and_switch_interval(ws: Workspace) -> None:
    import gc
    import sys

    approve(ws)
    ws.produce("payments.transactions", [payment(0)], principal="payments-service")
    runner = open_flow(ws, FLOW)
    seen: list[tuple[int, float]] = []
    before = sys.getswitchinterval()
    runner.run(
        once=True,
        on_progress=lambda _s: seen.append((gc.get_freeze_count(), sys.getswitchinterval())),
    )
    assert seen and seen[0][0] > 0 and seen[0][1] <= 0.001  # while it ran
    assert gc.get_freeze_count() == 0
    assert sys.getswitchinterval() == before
    gc.freeze()
    try:
        runner.run(once=True)
        assert gc.get_freeze_count() > 0  # the process's own freeze stays
    finally:
        gc.unfreeze()


def test_run_writes_inline_on_the_embedded_backend_and_on_a_thread_where_overlap_pays(
    ws: Workspace,
) -> None:
    approve(ws)
    ws.produce(
        "payments.transactions", [payment(i) for i in range(40)], principal="payments-service"
    )
    writers: dict[str, set[str]] = {}
    for mode in ("inline", "threaded"):
        r = open_flow(ws, FLOW)
        assert r._overlap_pays() is False  # every zone of the test workspace is embedded
        if mode == "threaded":
            r._overlap_pays = lambda: True  # type: ignore[method-assign]  # as on Kafka
        write = r._write_batch

        def spy(*args: Any, _write: Any = write, _mode: str = mode) -> None:
            writers.setdefault(_mode, set()).add(threading.current_thread().name)
            _write(*args)

        r._write_batch = spy  # type: ignore[method-assign]
        assert r.run(once=True, batch=7).read == 40
        if mode == "inline":
            ws.produce(
                "payments.transactions",
                [payment(i) for i in range(40, 80)],
                principal="payments-service",
            )
    assert writers["inline"] == {threading.current_thread().name}
    assert len(writers["threaded"]) == 1
    assert next(iter(writers["threaded"])).startswith("tz-flow-payments-to-analytics")
    out = [
        orjson.loads(r.value)["transaction_id"] for r in all_records(ws, "analytics.transactions")
    ]
    assert sorted(out) == sorted(f"tx-{i}" for i in range(80))
