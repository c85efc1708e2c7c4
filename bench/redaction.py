"""What PII and secret redaction costs per event payload: `Redactor().redact_json(payload)`.

Payloads shaped like tether's events, of about 200 B and 500 B (model.response), 2 KB (a model.request
with a short conversation) and 20 KB (a tool.result listing orders), each in two variants: "clean" (order ids,
SKUs, dates, timestamps, prices, token counts, tracking numbers, UUIDs: nothing to mask, the common case)
and "pii" (the same with an e-mail address, a phone number, a card number, an OpenAI key and a password
planted in it). Contenders, run round-robin within each round, the starting one rotating:

    json         the floor: json.dumps + json.loads of the payload (what recording it costs anyway)
    tether       Redactor().redact_json(payload), all kinds on
    presidio     Presidio's AnalyzerEngine (no-op NLP engine, offline) + AnonymizerEngine on every string
                 of the payload; only with --presidio-python (a venv holding presidio-analyzer and
                 presidio-anonymizer, run as a child with its own json floor), skipped with a note otherwise

    .venv/bin/python bench/redaction.py [--rounds 30] [--json]
    .venv/bin/python bench/redaction.py --presidio-python /tmp/presidio-venv/bin/python

Checks, so nothing wins by doing less: tether must return every clean payload unchanged (no false
positive) and leave none of the planted values in any pii payload; Presidio's misses, and the clean
strings it changed, are counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

SIZES = ("200B", "500B", "2KB", "20KB")
PLANTED = {
    "email": "jane.doe@example.com",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
    "api_key": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f",
    "password": "hunter2!",
}
SYSTEM = (
    "You are the support agent of an online shop. Answer briefly, cite the order id, never promise a "
    "refund above $500 without approval, and hand the conversation to a person when asked."
)


def order(rng: random.Random) -> dict[str, Any]:
    number = rng.randrange(1000, 99999)
    return {
        "order_id": f"A-{number}",
        "status": rng.choice(["placed", "shipped", "delivered", "returned"]),
        "placed_at": f"2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
        f"{rng.randrange(60):02d}:{rng.randrange(60):02d}Z",
        "items": [
            {"sku": f"SKU-{rng.randrange(10000, 99999)}", "qty": rng.randrange(1, 5), "price_usd": 19.99},
            {"sku": f"SKU-{rng.randrange(10000, 99999)}", "qty": 1, "price_usd": 249.0},
        ],
        "total": f"${rng.randrange(20, 2000):,}.{rng.randrange(100):02d}",
        "tracking": f"1Z{rng.randrange(100, 999)}AA1{rng.randrange(10**9, 10**10)}",
        "warehouse_id": f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-4{rng.getrandbits(12):03x}-"
        f"a{rng.getrandbits(12):03x}-{rng.getrandbits(48):012x}",
        "created_at_epoch_ms": 1_732_363_200_000 + rng.randrange(10**9),
    }


def payload(size: str, rng: random.Random, *, pii: bool) -> dict[str, Any]:
    """One event payload of about `size` when serialised; with `pii`, PLANTED is in it."""
    who = (
        f"Reach me at {PLANTED['email']} or {PLANTED['phone']}; charge card {PLANTED['card']}."
        if pii
        else "Reach me here; charge the card on file."
    )
    if size == "200B":
        return {
            "content": f"Order A-{rng.randrange(1000, 9999)} ships on 2026-11-23. {who}",
            "usage": {"input_tokens": rng.randrange(100, 2000), "output_tokens": 64, "cost_usd": 0.00042},
            "model": "gpt-4o-mini",
        }
    if size == "500B":
        order_id = f"A-{rng.randrange(1000, 9999)}"
        return {
            "content": f"Your order {order_id} placed on 2026-11-23 ships tomorrow; the refund of $1,250.00 "
            f"goes to the card on file. Tracking 1Z999AA1{rng.randrange(10**9, 10**10)}. {who}",
            "tool_calls": [
                {
                    "id": f"call_{rng.getrandbits(32):08x}",
                    "name": "lookup_order",
                    "arguments": {"order_id": order_id},
                    "raw_arguments": json.dumps({"order_id": order_id}),
                }
            ],
            "usage": {"input_tokens": rng.randrange(100, 2000), "output_tokens": 64, "cost_usd": 0.00042},
            "model": "gpt-4o-mini",
            "finish_reason": "tool_calls",
            "confidence": 0.91,
        }
    if size == "2KB":
        turns = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Where is my order A-{rng.randrange(1000, 9999)}? {who}"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": f"call_{rng.getrandbits(32):08x}",
                        "name": "lookup_order",
                        "arguments": {"order_id": "A-1002", "password": PLANTED["password"] if pii else None},
                    }
                ],
            },
            {"role": "tool", "content": json.dumps(order(rng))},
            {"role": "assistant", "content": "It shipped on 2026-11-23 and should arrive within 3 days."},
            {"role": "user", "content": "Thanks. Can you also check the refund of $1,250.00 from last week?"},
        ]
        return {"messages": turns, "model": "gpt-4o-mini", "tools": ["lookup_order", "refund"], "attempt": 1}
    orders = [order(rng) for _ in range(48)]
    note = f"api_key={PLANTED['api_key']} {who}" if pii else "no notes"
    return {
        "call_id": f"call_{rng.getrandbits(32):08x}",
        "tool": "list_orders",
        "output": orders,
        "note": note,
    }


def build(seed: int, per_size: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    return {
        f"{size}/{variant}": [payload(size, rng, pii=variant == "pii") for _ in range(per_size)]
        for size in SIZES
        for variant in ("clean", "pii")
    }


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": statistics.median(ordered) / 1e3,
        "p99_us": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] / 1e3,
        "n": len(ordered),
    }


def measure(
    contenders: dict[str, Callable[[Any], Any]], payloads: dict[str, list[Any]], rounds: int, warmup: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Per contender and payload set, p50/p99 over every timed call; contenders interleaved."""
    samples: dict[str, dict[str, list[int]]] = {name: {key: [] for key in payloads} for name in contenders}
    names = list(contenders)
    for round_index in range(warmup + rounds):
        order_ = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order_:
            call = contenders[name]
            gc.collect()
            for key, items in payloads.items():
                for item in items:
                    start = time.perf_counter_ns()
                    call(item)
                    elapsed = time.perf_counter_ns() - start
                    if round_index >= warmup:
                        samples[name][key].append(elapsed)
    return {
        name: {key: percentiles(values) for key, values in by_key.items()} for name, by_key in samples.items()
    }


def json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def strings_of(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings_of(item)]
    if isinstance(value, list):
        return [text for item in value for text in strings_of(item)]
    return []


def presidio_child(seed: int, per_size: int, rounds: int) -> dict[str, Any]:
    """Run in the Presidio venv (stdlib + Presidio only): its timings, floor and misses as JSON."""
    os.environ["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] = ""  # before tldextract loads: no first-use download
    from importlib.metadata import version

    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_anonymizer import AnonymizerEngine

    engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "no_op"}])
    engine.load()
    analyzer = AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])
    anonymizer = AnonymizerEngine()

    def anonymize(value: Any) -> list[str]:
        return [
            anonymizer.anonymize(text=text, analyzer_results=analyzer.analyze(text, language="en")).text
            for text in strings_of(value)
        ]

    payloads = build(seed, per_size)
    results = measure({"presidio": anonymize, "json": json_round_trip}, payloads, rounds, 1)
    missed: dict[str, list[str]] = {}
    changed: dict[str, str] = {}
    for key, items in payloads.items():
        if key.endswith("/pii"):
            out = json.dumps([anonymize(item) for item in items])
            missed[key] = sorted(kind for kind, planted in PLANTED.items() if planted in out)
        else:
            before = [text for item in items for text in strings_of(item)]
            after = [text for item in items for text in anonymize(item)]
            changed[key] = f"{sum(a != b for a, b in zip(before, after, strict=True))}/{len(before)}"
    return {"results": results, "missed": missed, "changed": changed, "version": version("presidio-analyzer")}


def verify(redact: Callable[[Any], Any], payloads: dict[str, list[Any]]) -> str:
    for key, items in payloads.items():
        for item in items:
            out = redact(item)
            if key.endswith("/clean") and out != item:
                raise SystemExit(f"tether masked something in a clean {key} payload: {json.dumps(out)[:300]}")
            left = [kind for kind, planted in PLANTED.items() if planted in json.dumps(out)]
            if key.endswith("/pii") and left:
                raise SystemExit(f"tether left {left} in a {key} payload")
    return "every clean payload came back unchanged; no planted value was left in any pii payload"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first (default 2)")
    parser.add_argument("--per-size", type=int, default=10, help="payloads per size and variant (default 10)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--presidio-python", help="a python whose venv holds presidio-analyzer/-anonymizer")
    parser.add_argument("--presidio-rounds", type=int, default=3, help="rounds for Presidio (default 3)")
    parser.add_argument("--presidio-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.presidio_child:
        print(json.dumps(presidio_child(args.seed, args.per_size, args.presidio_rounds)))
        return 0

    from tether.policy.redaction import Redactor

    payloads = build(args.seed, args.per_size)
    redactor = Redactor()
    verified = verify(redactor.redact_json, payloads)
    results = measure(
        {"json": json_round_trip, "tether": redactor.redact_json}, payloads, args.rounds, args.warmup
    )
    presidio: dict[str, Any] = {"skipped": "no --presidio-python given (Presidio is not a tether dependency)"}
    if args.presidio_python:
        child = [args.presidio_python, __file__, "--presidio-child", f"--seed={args.seed}"]
        child += [f"--per-size={args.per_size}", f"--presidio-rounds={args.presidio_rounds}"]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            presidio = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            presidio = {"skipped": f"the child failed: {done.stderr.strip().splitlines()[-1:]}"}
    summary = {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "rounds": args.rounds,
        "payloads": {
            key: round(statistics.mean(len(json.dumps(p)) for p in items)) for key, items in payloads.items()
        },
        "results": results,
        "presidio": presidio,
        "verified": verified,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


def print_table(summary: dict[str, Any]) -> None:
    print(f"redaction per event payload: {summary['rounds']} interleaved rounds; p50 / p99 in µs")
    print(f"python {summary['python']} on {summary['platform']}")
    print(f"command: {summary['command']}")
    print()
    results, presidio = summary["results"], summary["presidio"]
    header = f"{'payload':<12}{'bytes':>7}{'json p50':>10}{'p99':>8}{'tether p50':>12}{'p99':>8}"
    header += f"{'tether/json':>13}"
    if "results" in presidio:
        header += f"{'presidio p50':>14}{'p99':>9}{'its json':>10}"
    print(header)
    print("-" * len(header))
    for key, size in summary["payloads"].items():
        floor, ours = results["json"][key], results["tether"][key]
        line = (
            f"{key:<12}{size:>7}{floor['p50_us']:>10.1f}{floor['p99_us']:>8.1f}{ours['p50_us']:>12.1f}"
            f"{ours['p99_us']:>8.1f}{ours['p50_us'] / floor['p50_us']:>12.1f}×"
        )
        if "results" in presidio:
            theirs, their_floor = presidio["results"]["presidio"][key], presidio["results"]["json"][key]
            line += f"{theirs['p50_us']:>14.0f}{theirs['p99_us']:>9.0f}{their_floor['p50_us']:>10.1f}"
        print(line)
    print()
    if "results" in presidio:
        print(
            f"presidio-analyzer {presidio['version']}: planted values it left in place (per pii payload set):"
        )
        for key, kinds in presidio["missed"].items():
            print(f"  {key:<10} {', '.join(kinds) or 'none'}")
        print("and the strings of the clean payloads it changed (false positives; tether: none):")
        for key, share in presidio["changed"].items():
            print(f"  {key:<10} {share}")
    else:
        print(f"presidio: skipped: {presidio['skipped']}")
    print(f"verified: {summary['verified']}")


if __name__ == "__main__":
    raise SystemExit(main())
