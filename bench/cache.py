"""Cache latency and semantic-cache quality: embedder, exact and semantic lookups, false-hit rates.

Latency: the embedder alone (one query per call), an exact-cache lookup, and a semantic-cache lookup
in a scope holding `--entries` answers, each query new (no memoised embedding), so the figure includes
embedding, nearest-neighbour search and the hit guard. Quality: over the labelled pairs in
tests/gateway/data/semantic_pairs.jsonl, the share of paraphrases served (hit rate) and of opposites,
different entities and unrelated pairs served (false-hit rate), per threshold and per split, each pair
in its own scope; then "pooled": every `a` in one scope, every `b` looked up among all of them.

    .venv/bin/python bench/cache.py [--entries 1000] [--queries 300] [--json]

Needs the semantic extra (`pip install -e '.[semantic]'`); runs offline.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tether.gateway.cache import (
    DEFAULT_SIMILARITY_THRESHOLD,
    CacheHit,
    CacheScope,
    ExactCache,
    HitGuard,
    SemanticCache,
)
from tether.gateway.embeddings import OnnxMiniLMEmbedder, default_embedder
from tether.types import Message, ModelRequest, ModelResponse, Usage

PAIRS = Path(__file__).resolve().parent.parent / "tests" / "gateway" / "data" / "semantic_pairs.jsonl"
THRESHOLDS = (0.55, 0.60, 0.62, 0.65, 0.70, 0.75, 0.80, 0.85)
ANSWER = ModelResponse(content="Here is what to do.", usage=Usage(100, 20, 0.001), model="bench")
TOPICS = (
    "order {n} has not arrived yet",
    "reset the password for user{n}@example.com",
    "invoice INV-{n} shows the wrong amount",
    "server web-{n} is returning errors",
    "claim CLM-{n} needs a status update",
    "refund ${n} to my card",
    "my VPN drops every {n} minutes",
    "add {n} seats to our plan",
)


def ask(text: str, tenant: str = "bench") -> ModelRequest:
    return ModelRequest(messages=(Message("system", "Support."), Message("user", text)), tenant=tenant)


def percentiles_ms(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_ms": statistics.median(ordered) / 1e6,
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] / 1e6,
        "n": len(ordered),
    }


async def timed(calls: list[Callable[[], Awaitable[Any]]]) -> list[int]:
    samples = []
    for call in calls:
        start = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - start)
    return samples


def load_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


async def latency(embedder: OnnxMiniLMEmbedder, entries: int, queries: int) -> dict[str, Any]:
    pairs = load_pairs()
    # Distinct texts never stored nor embedded before by the cache: every lookup embeds (no memo).
    fresh = list(dict.fromkeys(p["b"] for p in pairs))[:queries]
    embedder.embed(["warm-up"])
    embed_ns = []
    for text in fresh[:queries]:
        start = time.perf_counter_ns()
        embedder.embed([text])
        embed_ns.append(time.perf_counter_ns() - start)

    exact = ExactCache()
    stored = [ask(TOPICS[i % len(TOPICS)].format(n=1000 + i)) for i in range(entries)]
    for request in stored:
        await exact.store(request, CacheScope.of(request, "bench"), ANSWER)
    scope = CacheScope.of(stored[0], "bench")
    exact_hit = await timed([lambda r=r: exact.lookup(r, scope) for r in stored[:queries]])
    exact_miss = await timed(
        [lambda i=i: exact.lookup(ask(f"never asked {i}"), scope) for i in range(queries)]
    )

    semantic = SemanticCache(embedder)
    for request in stored + [ask(p["a"]) for p in pairs]:
        await semantic.store(request, scope, ANSWER)
    lookups = [ask(text) for text in fresh[:queries]]
    found: list[Any] = []

    async def lookup(request: ModelRequest) -> None:
        found.append(await semantic.lookup(request, scope))

    semantic_ns = await timed([lambda r=r: lookup(r) for r in lookups])
    guard = HitGuard()
    guard_ns = []
    for pair in pairs:
        start = time.perf_counter_ns()
        guard.check(pair["a"], pair["b"])
        guard_ns.append(time.perf_counter_ns() - start)
    return {
        "embedder_one_query": percentiles_ms(embed_ns),
        "exact_lookup_hit": percentiles_ms(exact_hit),
        "exact_lookup_miss": percentiles_ms(exact_miss),
        "semantic_lookup": {
            **percentiles_ms(semantic_ns),
            "entries_in_scope": entries + len(pairs),
            "hits": sum(isinstance(f, CacheHit) for f in found),
        },
        "guard_check_both_texts": percentiles_ms(guard_ns),
    }


async def pairwise(embedder: OnnxMiniLMEmbedder) -> tuple[list[dict[str, Any]], list[str]]:
    """Each pair in its own scope: store `a`, look up `b`; record similarity and the guard's verdict."""
    cache = SemanticCache(embedder, threshold=-1.0)  # every candidate reaches the guard; cut later
    results = []
    for index, pair in enumerate(load_pairs()):
        scope = CacheScope.of(ask(pair["a"], f"pair-{index}"), "bench")
        await cache.store(ask(pair["a"], f"pair-{index}"), scope, ANSWER)
        found = await cache.lookup(ask(pair["b"], f"pair-{index}"), scope)
        assert found is not None
        verdict_ok = isinstance(found, CacheHit)
        results.append({**pair, "similarity": found.similarity, "guard_ok": verdict_ok})
    splits = sorted({r.get("split", "all") for r in results})
    return results, splits


def rates(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    paraphrases = [r for r in rows if r["label"] == "paraphrase"]
    negatives = [r for r in rows if r["label"] != "paraphrase"]
    hits = sum(r["guard_ok"] and r["similarity"] >= threshold for r in paraphrases)
    false_hits = [r for r in negatives if r["guard_ok"] and r["similarity"] >= threshold]
    raw = sum(r["similarity"] >= threshold for r in negatives)
    return {
        "paraphrase_hit_rate": hits / len(paraphrases),
        "false_hit_rate": len(false_hits) / len(negatives),
        "false_hit_rate_without_guard": raw / len(negatives),
        "paraphrases": len(paraphrases),
        "negatives": len(negatives),
        "false_hits": [f"{r['similarity']:.2f} {r['label']}: {r['a']} | {r['b']}" for r in false_hits],
    }


async def pooled(embedder: OnnxMiniLMEmbedder) -> dict[str, dict[str, Any]]:
    """All `a` queries in one scope, every `b` looked up among them, per threshold.

    A paraphrase counts as hit only when served its own `a`; any other entry served to it, or any entry
    but an identical text served to an opposite / different-entity / unrelated `b`, counts as a false
    hit. Conservative: some of those entries are true paraphrases of `b` from other pairs.
    """
    pairs = load_pairs()
    cache = SemanticCache(embedder)
    scope = CacheScope.of(ask("x"), "bench")
    for pair in pairs:
        await cache.store(ask(pair["a"]), scope, ANSWER)
    paraphrases = sum(p["label"] == "paraphrase" for p in pairs)
    sweep = {}
    for threshold in THRESHOLDS:
        cache.threshold = threshold
        right = wrong = 0
        for pair in pairs:
            found = await cache.lookup(ask(pair["b"]), scope)
            if isinstance(found, CacheHit) and found.matched_query != pair["b"]:
                is_right = pair["label"] == "paraphrase" and found.matched_query == pair["a"]
                right, wrong = right + is_right, wrong + (not is_right)
        sweep[f"{threshold:.2f}"] = {
            "entries": len({p["a"] for p in pairs}),
            "paraphrase_hit_rate": right / paraphrases,
            "wrong_entry_served_per_lookup": wrong / len(pairs),
        }
    return sweep


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # latency figures mean little on a busy machine
    embedder = default_embedder()
    assert isinstance(embedder, OnnxMiniLMEmbedder)
    start = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "command": shlex.join([".venv/bin/python", "bench/cache.py", *sys.argv[1:]]),
        "machine": f"{platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}",
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        "embedder": embedder.name,
        "embedder_load_s": load_s,
        "default_threshold": DEFAULT_SIMILARITY_THRESHOLD,
        "latency": await latency(embedder, args.entries, args.queries),
    }
    rows, splits = await pairwise(embedder)
    report["pairwise"] = {
        f"{threshold:.2f}": {"all": rates(rows, threshold)}
        | {split: rates([r for r in rows if r.get("split") == split], threshold) for split in splits}
        for threshold in THRESHOLDS
    }
    report["pooled"] = await pooled(embedder)
    report["load_average_1m_before_after"] = [load_before, os.getloadavg()[0]]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"$ {report['command']}")
    print(f"python {report['machine']}; onnxruntime {report['onnxruntime']}; {report['embedder']}")
    print(f"embedder load (first use): {load_s * 1000:.0f} ms")
    for name, figures in report["latency"].items():
        extra = {k: v for k, v in figures.items() if k not in ("p50_ms", "p99_ms", "n")}
        tail = f"  {extra}" if extra else ""
        p50, p99, n = figures["p50_ms"], figures["p99_ms"], figures["n"]
        print(f"{name:<24} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  (n={n}){tail}")
    print(f"\nlabelled pairs, one scope per pair ({len(rows)} pairs; splits: {', '.join(splits)})")
    print(
        "threshold  paraphrase hits  false hits  (without guard)   "
        + "  ".join(f"{s}: hit/false" for s in splits)
    )
    for threshold, by_split in report["pairwise"].items():
        total = by_split["all"]
        per_split = "  ".join(
            f"{s}: {by_split[s]['paraphrase_hit_rate']:.0%}/{by_split[s]['false_hit_rate']:.1%}"
            for s in splits
        )
        print(
            f"{threshold:>9}  {total['paraphrase_hit_rate']:>15.1%}  {total['false_hit_rate']:>10.2%}"
            f"  ({total['false_hit_rate_without_guard']:>6.1%})         {per_split}"
        )
    default = report["pairwise"][f"{DEFAULT_SIMILARITY_THRESHOLD:.2f}"]["all"]
    print(f"false hits at the default threshold {DEFAULT_SIMILARITY_THRESHOLD}:")
    for line in default["false_hits"]:
        print(f"  {line}")
    entries = next(iter(report["pooled"].values()))["entries"]
    print(f"\npooled: the {entries} distinct `a` in one scope, each `b` looked up among them")
    print("threshold  paraphrases served their own entry  wrong entry served (share of all lookups)")
    for threshold, figures in report["pooled"].items():
        print(
            f"{threshold:>9}  {figures['paraphrase_hit_rate']:>34.1%}"
            f"  {figures['wrong_entry_served_per_lookup']:>10.1%}"
        )
    before, after = report["load_average_1m_before_after"]
    print(f"\nload average (1 min) before / after: {before:.2f} / {after:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    asyncio.run(main())
