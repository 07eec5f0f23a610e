"""The synthetic data generator: deterministic, valid values, labels that match."""

from __future__ import annotations

import orjson

from trustzones.dlp import Scanner
from trustzones.dlp._paths import parse_path
from trustzones.dlp._validators import card_brand, iban_valid, luhn_valid, ssn_valid
from trustzones.dlp.synth import CARD_BRANDS, Synth


def test_seeded_and_deterministic() -> None:
    assert Synth(3).labelled_events(5) == Synth(3).labelled_events(5)
    assert Synth(3).event() != Synth(4).event()


def test_values_are_valid() -> None:
    s = Synth(11)
    for brand in CARD_BRANDS:
        for _ in range(20):
            number = s.card_number(brand)
            assert luhn_valid(number) and card_brand(number) == brand
    for _ in range(50):
        assert iban_valid(s.iban_compact())
        assert ssn_valid(s.ssn_digits())
        assert not iban_valid(s.bad_iban().replace(" ", ""))
        assert not luhn_valid(s.luhn_invalid_number())
        assert not ssn_valid(s.invalid_ssn().replace("-", ""))


def test_labels_point_at_the_values() -> None:
    s = Synth(12, disguise=0.3)
    for _ in range(100):
        record, labels = s.labelled_event()
        orjson.dumps(record)
        for label in labels:
            node: object = record
            for kind, arg in parse_path(label.path):
                assert kind != "pos"
                node = node[arg]  # type: ignore[index]
            text = node if isinstance(node, str) else str(node)
            assert 0 <= label.start < label.end <= len(text)


def test_scanner_finds_the_labels_of_a_small_corpus() -> None:
    # A smoke check only; the accuracy figures come from benchmarks/dlp.py on a held-out seed.
    s = Synth(13)
    scanner = Scanner()
    hits = total = 0
    for _ in range(200):
        record, labels = s.labelled_event()
        found = {(f.path, f.type, f.start, f.end) for f in scanner.scan_record(record)}
        total += len(labels)
        hits += sum((lb.path, lb.type, lb.start, lb.end) in found for lb in labels)
    assert total > 500 and hits / total > 0.98
