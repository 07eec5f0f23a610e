"""DLP benchmark: accuracy on a held-out generated corpus, and throughput against Presidio's
pattern recognizers and a plain ``re`` baseline, all in one run.

    python benchmarks/dlp.py                # everything
    python benchmarks/dlp.py --quick        # fewer records
    python benchmarks/dlp.py --skip-presidio

Accuracy: events from :mod:`trustzones.dlp.synth` with a seed (``--seed``, default
20261128) that was never used while the detectors were written (seeds 1 and 5 were); a
finding counts as a true positive only when path, type, start and end all equal a label.

Throughput: the same ~600-byte JSON events (generated with another seed, sizes 400-800
bytes) for every contender, one process, one thread:
- Presidio ``AnalyzerEngine`` with the no-op NLP engine and its predefined recognizers,
  analysing each record's JSON text in one call (its most favourable setting);
- plain ``re``: our rules' regular expressions and validators run over each record's JSON
  text with ``re.finditer`` (no normalisation, no paths);
- trustzones ``Scanner.scan_record`` on the decoded record (decode included) with each
  engine: ``native`` (the Rust core ``trustzones_native``, when installed), ``hyperscan``
  and the pure-Python reference, and ``scan_records`` on batches of 256;
- scan + transforms: decode, apply a flow-like plan (mask, hash, FF1, generalize, date
  shift, redact_text), scan the output, encode; with the native scanner and native
  transforms, with the native scanner and the Python transforms, and with Hyperscan and
  the Python transforms (the configuration without the native core).
Figures are printed with their ratio to the baselines measured in this run.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from trustzones.dlp import (
    InMemoryKeys,
    Scanner,
    TokenVault,
    Transformer,
    TransformPlan,
    aesgcm_cipher,
    native_available,
)
from trustzones.dlp._rules import RULES
from trustzones.dlp.synth import Synth
from trustzones.errors import TransformError

PLAN: dict[str, Any] = {
    "customer.email": {"type": "hash", "normalize": "casefold", "length": 32},
    "customer.phone": {"type": "mask", "keep_last": 2},
    "customer.ssn": {"type": "mask", "keep_last": 4},
    "customer.dob": {"type": "generalize", "method": "date", "granularity": "year"},
    "customer.address.zip": {"type": "generalize", "method": "zip"},
    "customer.address.street": {"type": "suppress"},
    "payment.card_number": {"type": "encrypt_fpe", "keep_last": 4},
    "payment.iban": {"type": "mask", "keep_last": 4},
    "source.ip": {"type": "hash", "length": 16},
    "ts": {"type": "date_shift", "subject": "customer.id", "max_days": 15},
    "notes": {"type": "redact_text"},
}


def presidio_analyzer() -> Any:
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    # Presidio's e-mail recognizer asks tldextract, which would try to download the public
    # suffix list (no network here); use the list bundled with tldextract instead.
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())  # type: ignore[assignment]

    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
    nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


def rate(fn: Callable[[], int], min_seconds: float) -> tuple[float, int]:
    """Run ``fn`` (which processes some records and returns how many) until
    ``min_seconds`` of this process's CPU time have passed; return records per CPU second
    and the count. CPU time, not wall time: the machine is shared, and time spent
    descheduled would otherwise count against whichever contender ran then."""
    n = 0
    start = time.process_time()
    while True:
        n += fn()
        elapsed = time.process_time() - start
        if elapsed >= min_seconds:
            return n / elapsed, n


def accuracy(seed: int, n: int) -> None:
    print(f"== accuracy: {n} held-out events, seed {seed} ==")
    synth = Synth(seed)
    scanner = Scanner()
    tp: collections.Counter[str] = collections.Counter()
    fp: collections.Counter[str] = collections.Counter()
    fn: collections.Counter[str] = collections.Counter()
    size = 0
    for _ in range(n):
        record, labels = synth.labelled_event()
        size += len(orjson.dumps(record))
        got = {(f.path, f.type, f.start, f.end) for f in scanner.scan_record(record)}
        want = {(lb.path, lb.type, lb.start, lb.end) for lb in labels}
        for x in got & want:
            tp[x[1]] += 1
        for x in got - want:
            fp[x[1]] += 1
        for x in want - got:
            fn[x[1]] += 1
    print(f"mean event size {size / n:.0f} bytes")
    print(
        f"{'type':20s} {'labels':>7s} {'TP':>6s} {'FP':>5s} {'FN':>5s} "
        f"{'precision':>10s} {'recall':>8s}"
    )
    for t in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 1.0
        r = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 1.0
        labels_t = tp[t] + fn[t]
        print(f"{t:20s} {labels_t:7d} {tp[t]:6d} {fp[t]:5d} {fn[t]:5d} {p:10.4f} {r:8.4f}")
    T, F, N = sum(tp.values()), sum(fp.values()), sum(fn.values())
    print(f"{'OVERALL':20s} {T + N:7d} {T:6d} {F:5d} {N:5d} {T / (T + F):10.4f} {T / (T + N):8.4f}")


def presidio_accuracy(seed: int, n: int, analyzer: Any) -> None:
    """Presidio on the same kind of corpus, per string field, for the types it has."""
    mapping = {
        "CREDIT_CARD": "CREDIT_CARD",
        "US_SSN": "US_SSN",
        "IBAN_CODE": "IBAN",
        "EMAIL_ADDRESS": "EMAIL_ADDRESS",
        "PHONE_NUMBER": "PHONE_NUMBER",
        "IP_ADDRESS": "IP_ADDRESS",
    }
    print(f"== Presidio accuracy, same generator, {n} events, seed {seed}, per field ==")
    synth = Synth(seed)
    tp = fp = fn = 0
    per: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])

    def fields(node: object, path: str) -> list[tuple[str, str]]:
        if isinstance(node, dict):
            out = []
            for k, v in node.items():
                out += fields(v, f"{path}.{k}" if path else k)
            return out
        if isinstance(node, list):
            out = []
            for i, v in enumerate(node):
                out += fields(v, f"{path}[{i}]")
            return out
        if isinstance(node, str):
            return [(path, node)]
        if isinstance(node, int | float) and not isinstance(node, bool):
            return [(path, str(node))]
        return []

    for _ in range(n):
        record, labels = synth.labelled_event()
        want = {
            (lb.path, lb.type, lb.start, lb.end) for lb in labels if lb.type in mapping.values()
        }
        got = set()
        for path, text in fields(record, ""):
            for r in analyzer.analyze(text=text, language="en", entities=list(mapping)):
                if r.score >= 0.5 or r.entity_type == "PHONE_NUMBER":
                    got.add((path, mapping[r.entity_type], r.start, r.end))
        for x in got & want:
            per[x[1]][0] += 1
        for x in got - want:
            per[x[1]][1] += 1
        for x in want - got:
            per[x[1]][2] += 1
    for t, (a, b, c) in sorted(per.items()):
        tp, fp, fn = tp + a, fp + b, fn + c
        p = a / (a + b) if a + b else 1.0
        r = a / (a + c) if a + c else 1.0
        print(f"{t:20s} TP {a:5d} FP {b:5d} FN {c:5d} precision {p:.4f} recall {r:.4f}")
    print(
        f"{'OVERALL':20s} TP {tp:5d} FP {fp:5d} FN {fn:5d} "
        f"precision {tp / (tp + fp):.4f} recall {tp / (tp + fn):.4f}"
    )


def throughput(seed: int, n_events: int, seconds: float, with_presidio: bool) -> None:
    synth = Synth(seed)
    lines: list[bytes] = []
    while len(lines) < n_events:
        raw = orjson.dumps(synth.event())
        if 400 <= len(raw) <= 800:
            lines.append(raw)
    texts = [ln.decode() for ln in lines]
    nbytes = sum(map(len, lines))
    mean = nbytes / len(lines)
    print(
        f"== throughput: {len(lines)} events, mean {mean:.0f} bytes (400-800), one thread, "
        "per CPU second =="
    )

    results: dict[str, float] = {}

    def report(name: str, rps: float) -> None:
        results[name] = rps
        print(f"{name:44s} {rps:12,.0f} records/s {rps * mean / 1e6:8.2f} MB/s", flush=True)

    # Plain re: our expressions and validators over the JSON text.
    compiled = [(re.compile(r.regex, re.ASCII), r.validate) for r in RULES if not r.context_only]

    def plain_re() -> int:
        for text in texts:
            for rx, validate in compiled:
                for m in rx.finditer(text):
                    validate(text, m.start(), m.end(), False)
        return len(texts)

    report("plain re (rules + validators, JSON text)", rate(plain_re, seconds)[0])

    engines = (["native"] if native_available() else []) + ["hyperscan", "python"]
    if "native" not in engines:
        print("(trustzones_native is not installed: python -m pip install ./native)")
    scanners = {engine: Scanner(engine=engine) for engine in engines}

    def scan_with(scanner: Scanner) -> Callable[[], int]:
        def run() -> int:
            for line in lines:
                scanner.scan_record(orjson.loads(line))
            return len(lines)

        return run

    def scan_batches(scanner: Scanner) -> Callable[[], int]:
        def run() -> int:
            for i in range(0, len(lines), 256):
                scanner.scan_records([orjson.loads(x) for x in lines[i : i + 256]])
            return len(lines)

        return run

    for engine, scanner in scanners.items():
        report(f"scan_record, {engine}", rate(scan_with(scanner), seconds)[0])
        if engine != "python":
            report(f"scan_records x256, {engine}", rate(scan_batches(scanner), seconds)[0])

    keys = InMemoryKeys(b"benchmark master key, not a secret")
    plan = TransformPlan.compile(PLAN)
    pipelines: list[tuple[str, str, bool]] = []
    if "native" in engines:
        pipelines += [
            ("transform + scan + encode, all native", "native", True),
            ("transform + scan + encode, native scan only", "native", False),
        ]
    pipelines.append(("transform + scan + encode, hyperscan + py", "hyperscan", False))

    for name, engine, native_transforms in pipelines:
        scanner = scanners[engine]
        transformer = Transformer(keys=keys, scanner=scanner)
        if not native_transforms:
            transformer._native = None  # the Python transforms, as without the native core
        refused = [0]

        def scan_and_transform(
            transformer: Transformer = transformer,
            scanner: Scanner = scanner,
            refused: list[int] = refused,
        ) -> int:
            for line in lines:
                try:
                    out = transformer.apply_record(orjson.loads(line), plan)
                except TransformError:
                    refused[0] += 1  # a flow quarantines it (e.g. FF1 on full-width digits)
                    continue
                scanner.scan_record(out)
                orjson.dumps(out)
            return len(lines)

        rps, n_done = rate(scan_and_transform, seconds)
        report(name, rps)
        print(f"  ({refused[0]} of {n_done} records refused by a transform, fail closed)")

    if with_presidio:
        analyzer = presidio_analyzer()
        sample = texts[: max(50, min(len(texts), 300))]

        def presidio() -> int:
            for text in sample:
                analyzer.analyze(text=text, language="en")
            return len(sample)

        analyzer.analyze(text=sample[0], language="en")  # warm up
        report("presidio analyze (pattern recognizers)", rate(presidio, max(seconds, 3.0))[0])

    print("== ratios (same run) ==")
    base_re = results["plain re (rules + validators, JSON text)"]
    base_hs = results["scan_record, hyperscan"]
    for name, value in results.items():
        if name.startswith(("plain re", "presidio")):
            continue
        line = f"{name:44s} {value / base_re:7.2f}x plain re"
        if "presidio analyze (pattern recognizers)" in results:
            base_presidio = results["presidio analyze (pattern recognizers)"]
            line += f"  {value / base_presidio:8.1f}x Presidio"
        if name.startswith("scan_record"):
            line += f"  {value / base_hs:6.2f}x hyperscan scan_record"
        print(line)

    # Per-value transform rates, for reference.
    print("== single transforms on a 16-digit PAN (values/s) ==")
    from trustzones.dlp import parse_transform

    pan = "4111111111111111"
    with tempfile.TemporaryDirectory() as tmp:
        vault = TokenVault(Path(tmp) / "tokens.sqlite3", cipher=aesgcm_cipher(bytes(32)))
        tv = Transformer(keys=keys, vault=vault)
        tv_py = Transformer(keys=keys, vault=vault)
        tv_py._native = None
        for spec in (
            {"type": "mask"},
            {"type": "hash"},
            {"type": "encrypt_fpe"},
            {"type": "tokenize"},
        ):
            parsed = parse_transform(spec)
            with_native = tv._native is not None and spec["type"] != "tokenize"
            rates: dict[str, float] = {}
            for t, label in ((tv, "native"), (tv_py, "python")) if with_native else ((tv, ""),):

                def one(parsed: Any = parsed, t: Transformer = t) -> int:
                    for _ in range(200):
                        t.apply(parsed, pan)
                    return 200

                rates[label] = vps = rate(one, max(seconds / 4, 0.3))[0]
                note = " (existing token: a vault lookup)" if spec["type"] == "tokenize" else ""
                print(f"{(spec['type'] + ' ' + label).strip():22s} {vps:12,.0f} values/s{note}")
            if with_native:
                ratio = rates["native"] / rates["python"]
                print(f"{spec['type'] + ' native/python':22s} {ratio:12.2f}x")
        fresh = iter(range(10**9))
        tok = parse_transform({"type": "tokenize"})

        def new_tokens() -> int:
            for _ in range(50):
                tv.apply(tok, f"4111{next(fresh):012d}")
            return 50

        print(
            f"{'tokenize':14s} {rate(new_tokens, max(seconds / 4, 0.3))[0]:12,.0f} values/s "
            "(new token: insert + commit)"
        )

        def new_tokens_batched() -> int:
            with vault.batch():  # as a flow does: one commit per batch of records
                for _ in range(500):
                    tv.apply(tok, f"4111{next(fresh):012d}")
            return 500

        print(
            f"{'tokenize':14s} {rate(new_tokens_batched, max(seconds / 4, 0.3))[0]:12,.0f} "
            "values/s (new tokens in a vault batch: one commit per 500)"
        )
        vault.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=20261128, help="held-out accuracy seed")
    parser.add_argument("--events", type=int, default=5000, help="accuracy corpus size")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per throughput figure")
    parser.add_argument("--quick", action="store_true", help="smaller corpus, shorter runs")
    parser.add_argument("--skip-presidio", action="store_true")
    parser.add_argument("--presidio-accuracy", type=int, default=300, help="events (0: skip)")
    args = parser.parse_args()
    if args.quick:
        args.events, args.seconds, args.presidio_accuracy = 1000, 1.0, 100
    print(f"python {sys.version.split()[0]}")
    accuracy(args.seed, args.events)
    throughput(args.seed + 1, 1000, args.seconds, not args.skip_presidio)
    if not args.skip_presidio and args.presidio_accuracy:
        presidio_accuracy(args.seed, args.presidio_accuracy, presidio_analyzer())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
