"""Prompt-injection rules: detection and false-positive rates on the labelled corpus, and check latency.

Quality: over tests/policy/data/injection_corpus.jsonl, the share of attacks flagged (detection) and of
benign texts flagged (false positives) per split (dev: tuned on; holdout: measured once the rules were
frozen) and overall, detection per attack style, and every miss and false positive. Latency: each text
is checked `--rounds` times, each check interleaved with the baseline pass that any detector pays first
(`normalise`: NFKD, fold, lower-case), the order alternating per round; p50/p99 per text in µs for the
corpus texts and for 2 KB and 100 KB texts built from them.

    .venv/bin/python bench/injection.py [--rounds 20] [--json] [--classifier]

`--classifier` adds the optional classifier (`tether.policy.injection_classifier`, the semantic extra):
fitted on the dev split (its training time printed), then classifier-alone and rules-OR-classifier rates
per split (dev is its training data) and its latency per corpus text.

Pure Python, offline; targets printed, never asserted: detection >= 90%, false positives <= 2%, a 2 KB
text well under 1 ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.policy.injection import InjectionDetector, InjectionVerdict, Source, normalise

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "policy" / "data" / "injection_corpus.jsonl"
CLIP_CHARS = 110
TARGET_DETECTION = 0.90
TARGET_FALSE_POSITIVES = 0.02
# Support and IT-ops styles: what a typical tether tool output or user message reads like.
TYPICAL_STYLES = (
    "support_ticket",
    "it_ops_runbook",
    "order_note_benign",
    "tool_result_benign",
    "email_benign",
)

Row = dict[str, Any]


def load_corpus() -> list[Row]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= CLIP_CHARS else flat[: CLIP_CHARS - 1] + "…"


def rates(rows: list[Row]) -> dict[str, Any]:
    attacks = [row for row in rows if row["label"] == "attack"]
    benign = [row for row in rows if row["label"] == "benign"]
    detected = sum(row["verdict"].is_injection for row in attacks)
    flagged = sum(row["verdict"].is_injection for row in benign)
    return {
        "attacks": len(attacks),
        "detected": detected,
        "detection_rate": detected / len(attacks) if attacks else None,
        "benign": len(benign),
        "false_positives": flagged,
        "false_positive_rate": flagged / len(benign) if benign else None,
    }


def quality(detector: InjectionDetector, rows: list[Row]) -> dict[str, Any]:
    for row in rows:
        row["verdict"] = detector.check(row["text"], source=row["source"])
    by_split = {split: rates([r for r in rows if r["split"] == split]) for split in ("dev", "holdout")}
    per_style: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["label"] == "attack":
            counts = per_style.setdefault(row["style"], {"attacks": 0, "detected": 0})
            counts["attacks"] += 1
            counts["detected"] += row["verdict"].is_injection

    def listed(label: str, flagged: bool) -> list[dict[str, Any]]:
        verdicts: list[tuple[Row, InjectionVerdict]] = [(r, r["verdict"]) for r in rows]
        return [
            {
                "split": r["split"],
                "style": r["style"],
                "source": r["source"],
                "score": v.score,
                "rules": list(v.rules),
                "text": clip(r["text"]),
            }
            for r, v in verdicts
            if r["label"] == label and v.is_injection == flagged
        ]

    return {
        "splits": by_split | {"all": rates(rows)},
        "per_style": dict(sorted(per_style.items())),
        "misses": listed("attack", False),
        "false_positives": listed("benign", True),
        "composition": {
            "by_label_split": {
                f"{label}/{split}": n
                for (label, split), n in sorted(Counter((r["label"], r["split"]) for r in rows).items())
            },
            "by_style": {
                f"{label}/{style}": n
                for (label, style), n in sorted(Counter((r["label"], r["style"]) for r in rows).items())
            },
        },
    }


def timed_pair(detector: InjectionDetector, text: str, source: str, check_first: bool) -> tuple[int, int]:
    """(baseline ns, check ns) for one text, in the order given."""
    kind: Source = "tool" if source == "tool" else "user"
    calls: list[Callable[[], object]] = [lambda: normalise(text), lambda: detector.check(text, source=kind)]
    if check_first:
        calls.reverse()
    spent = []
    for call in calls:
        start = time.perf_counter_ns()
        call()
        spent.append(time.perf_counter_ns() - start)
    return (spent[1], spent[0]) if check_first else (spent[0], spent[1])


def percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": statistics.median(ordered) / 1e3,
        "p99_us": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] / 1e3,
        "n": len(ordered),
    }


def joined(rows: list[Row], size: int) -> str:
    text = " ".join(row["text"] for row in rows)
    while len(text) < size:
        text = f"{text} {text}"
    return text[:size]


def latency(detector: InjectionDetector, rows: list[Row], rounds: int, seed: int) -> dict[str, Any]:
    typical = [r for r in rows if r["style"] in TYPICAL_STYLES]
    benign = [r for r in rows if r["label"] == "benign"]
    attacks = [r for r in rows if r["label"] == "attack"]
    sets: dict[str, list[tuple[str, str]]] = {
        "corpus texts": [(r["text"], r["source"]) for r in rows],
        "2 KB typical support/IT": [
            (joined(typical[i:] + typical[:i], 2048), "tool") for i in range(0, 50, 5)
        ],
        "2 KB hard look-alikes": [(joined(benign[i:] + benign[:i], 2048), "tool") for i in range(0, 50, 5)],
        "2 KB attack-dense": [(joined(attacks[i:] + attacks[:i], 2048), "tool") for i in range(0, 50, 5)],
        "100 KB typical support/IT": [(joined(typical, 100_000), "tool")],
        "100 KB hard look-alikes": [(joined(benign, 100_000), "tool")],
    }
    rng = random.Random(seed)
    for texts in sets.values():  # warm-up
        for text, source in texts[:20]:
            timed_pair(detector, text, source, check_first=False)
    results = {}
    for name, texts in sets.items():
        set_rounds = rounds if len(texts[0][0]) < 10_000 else max(3, rounds // 4)
        baseline_ns, check_ns = [], []
        for round_no in range(set_rounds):
            order = list(texts)
            rng.shuffle(order)
            gc.collect()
            for text, source in order:
                base, check = timed_pair(detector, text, source, check_first=round_no % 2 == 1)
                baseline_ns.append(base)
                check_ns.append(check)
        results[name] = {
            "chars": round(statistics.mean(len(t) for t, _ in texts)),
            "check": percentiles_us(check_ns),
            "baseline": percentiles_us(baseline_ns),
        }
    return results


def flag_rates(rows: list[Row], key: str) -> dict[str, Any]:
    attacks = [row[key] for row in rows if row["label"] == "attack"]
    benign = [row[key] for row in rows if row["label"] == "benign"]
    return {
        "attacks": len(attacks),
        "detected": sum(attacks),
        "detection_rate": sum(attacks) / len(attacks),
        "benign": len(benign),
        "false_positives": sum(benign),
        "false_positive_rate": sum(benign) / len(benign),
    }


def classifier_quality(rows: list[Row], rounds: int) -> dict[str, Any]:
    """Fit on dev, then rates alone and OR the rules (run `quality` first), and latency per text."""
    from tether.policy.injection_classifier import InjectionClassifier

    dev = [r for r in rows if r["split"] == "dev"]
    classifier = InjectionClassifier()
    classifier.embedder.embed(["warm-up"])  # loading the model (~0.5 s) is kept out of the training time
    start = time.perf_counter()
    classifier.fit([r["text"] for r in dev], [r["label"] == "attack" for r in dev])
    fit_s = time.perf_counter() - start
    assert classifier.threshold is not None
    for row, score in zip(rows, classifier.scores([r["text"] for r in rows]), strict=True):
        row["classifier"] = score >= classifier.threshold
        row["either"] = row["classifier"] or row["verdict"].is_injection
    splits: dict[str, dict[str, Any]] = {}
    for key in ("classifier", "either"):
        for split in ("dev", "holdout", "all"):
            chosen = rows if split == "all" else [r for r in rows if r["split"] == split]
            splits[f"{key}/{split}"] = flag_rates(chosen, key)
    for row in rows:
        del row["classifier"], row["either"]
    spent_ns = []
    for _ in range(rounds):
        for row in rows:
            start_ns = time.perf_counter_ns()
            classifier.score(row["text"])
            spent_ns.append(time.perf_counter_ns() - start_ns)
    return {
        "embedder": classifier.embedder.name,
        "threshold": classifier.threshold,
        "fit_texts": len(dev),
        "fit_s": fit_s,
        "splits": splits,
        "latency": percentiles_us(spent_ns),
    }


def print_classifier(c: dict[str, Any]) -> None:
    print(
        f"\nclassifier ({c['embedder']} + word hashing, ridge), fitted on {c['fit_texts']} dev texts in "
        f"{c['fit_s']:.1f} s, threshold {c['threshold']:.3f}; dev is its training data"
    )
    print(f"{'rows':28} {'detection':>20} {'false positives':>20}")
    for name, r in c["splits"].items():
        label = name.replace("either/", "rules OR classifier/")
        print(
            f"{label:28} {r['detected']:>5}/{r['attacks']:<4} {r['detection_rate']:>7.1%}"
            f"   {r['false_positives']:>5}/{r['benign']:<4} {r['false_positive_rate']:>7.1%}"
        )
    lat = c["latency"]
    p50_ms, p99_ms = lat["p50_us"] / 1e3, lat["p99_us"] / 1e3
    print(f"classifier latency per corpus text: p50 {p50_ms:.1f} ms, p99 {p99_ms:.1f} ms ({lat['n']} calls)")


def print_report(report: dict[str, Any]) -> None:
    q = report["quality"]
    print(f"corpus: {report['corpus']} ({report['rows']} texts)")
    for key, n in q["composition"]["by_label_split"].items():
        print(f"  {key:16} {n}")
    print(f"\n{'split':8} {'detection':>20} {'false positives':>20}")
    for split, r in q["splits"].items():
        print(
            f"{split:8} {r['detected']:>5}/{r['attacks']:<4} {r['detection_rate']:>7.1%}"
            f"   {r['false_positives']:>5}/{r['benign']:<4} {r['false_positive_rate']:>7.1%}"
        )
    print(f"targets: detection >= {TARGET_DETECTION:.0%}, false positives <= {TARGET_FALSE_POSITIVES:.0%}")
    print("\ndetection per attack style (all splits)")
    for style, c in q["per_style"].items():
        print(f"  {style:24} {c['detected']:>3}/{c['attacks']:<3} {c['detected'] / c['attacks']:>7.1%}")
    for title, key in (("misses", "misses"), ("false positives", "false_positives")):
        print(f"\n{title} ({len(q[key])})")
        for item in q[key]:
            print(f"  [{item['split']:7}] {item['score']:.2f} {item['style']:22} {item['text']}")
            if item["rules"]:
                print(f"  {'':31}rules: {', '.join(item['rules'])}")
    rounds = report["rounds"]
    print(
        f"\nlatency per text, µs (each check interleaved with the baseline `normalise` pass; {rounds} rounds)"
    )
    print(f"  {'texts':26} {'chars':>7} {'check p50':>10} {'p99':>9} {'baseline p50':>13} {'p99':>9}")
    for name, r in report["latency"].items():
        print(
            f"  {name:26} {r['chars']:>7} {r['check']['p50_us']:>10.1f} {r['check']['p99_us']:>9.1f}"
            f" {r['baseline']['p50_us']:>13.1f} {r['baseline']['p99_us']:>9.1f}"
        )
    print("target: a 2 KB text well under 1 ms")
    if "classifier" in report:
        print_classifier(report["classifier"])
    print(f"\n{report['python']} on {report['platform']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds over each set of texts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--classifier", action="store_true", help="add the optional classifier (needs the semantic extra)"
    )
    parser.add_argument("--classifier-rounds", type=int, default=2, help="timed rounds of the classifier")
    args = parser.parse_args()
    rows = load_corpus()
    detector = InjectionDetector()
    report = {
        "corpus": str(CORPUS.relative_to(Path.cwd()) if CORPUS.is_relative_to(Path.cwd()) else CORPUS),
        "rows": len(rows),
        "threshold": detector.threshold,
        "quality": quality(detector, rows),
        "rounds": args.rounds,
        "latency": latency(detector, rows, args.rounds, args.seed),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if args.classifier:
        report["classifier"] = classifier_quality(rows, args.classifier_rounds)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
