"""The layered cache: exact and semantic layers, scopes, TTLs, the hit guard and its quality gate."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tether.errors import ConfigurationError
from tether.gateway import cache as cache_module
from tether.gateway import embeddings as embeddings_module
from tether.gateway.cache import (
    DEFAULT_SIMILARITY_THRESHOLD,
    CacheHit,
    CacheRejection,
    CacheScope,
    ExactCache,
    HitGuard,
    LayeredCache,
    SemanticCache,
    ToolResultCache,
    cacheable,
)
from tether.gateway.embeddings import Embedder, HashingEmbedder, OnnxMiniLMEmbedder, default_embedder
from tether.types import Message, ModelRequest, ModelResponse, ToolCall, ToolDefinition, Usage

PAIRS = Path(__file__).parent / "data" / "semantic_pairs.jsonl"
SYSTEM = "You are a support assistant."


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def ask(
    text: str, *, tenant: str | None = "acme", temperature: float | None = 0.0, **kwargs: Any
) -> ModelRequest:
    messages = (Message("system", SYSTEM), Message("user", text))
    return ModelRequest(messages=messages, tenant=tenant, temperature=temperature, **kwargs)


def scope_of(request: ModelRequest, model: str = "gpt-small") -> CacheScope:
    return CacheScope.of(request, model)


ANSWER = ModelResponse(content="Go to Settings > Security.", usage=Usage(120, 30, 0.0021), model="gpt-small")


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    """The default embedder, loaded; missing in CI is a failure, locally a skip."""
    try:
        embedder = default_embedder()
        assert isinstance(embedder, OnnxMiniLMEmbedder)
        embedder.load()
    except ConfigurationError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the semantic extra must be installed in CI: {exc}")
        pytest.skip(f"the semantic extra is not installed: {exc}")
    return embedder


# --- exact layer ---------------------------------------------------------------------------------------


async def test_exact_hit_returns_the_stored_answer_at_zero_cost() -> None:
    """A stored answer comes back for the same prompt, with zero usage and the original cost as saved."""
    cache = ExactCache()
    request = ask("How do I enable 2FA?")
    assert await cache.lookup(request, scope_of(request)) is None
    await cache.store(request, scope_of(request), ANSWER)
    hit = await cache.lookup(ask("How do I enable 2FA?"), scope_of(request))
    assert hit is not None
    assert (hit.layer, hit.similarity, hit.response.content) == ("exact", None, ANSWER.content)
    assert hit.response.usage == Usage(0, 0, 0.0)
    assert hit.saved == ANSWER.usage
    assert hit.response.events[0][0] == "cache.hit"


async def test_exact_key_ignores_whitespace_but_not_wording_or_system_prompt() -> None:
    """Whitespace is normalised; another wording or another system prompt misses."""
    cache = ExactCache()
    request = ask("How do I enable 2FA?")
    await cache.store(request, scope_of(request), ANSWER)
    assert await cache.lookup(ask("  How do I   enable 2FA?\n"), scope_of(request)) is not None
    assert await cache.lookup(ask("How do I enable 2FA"), scope_of(request)) is None
    other_system = ModelRequest(
        messages=(Message("system", "Be terse."), Message("user", "How do I enable 2FA?")),
        tenant="acme",
        temperature=0.0,
    )
    assert await cache.lookup(other_system, scope_of(other_system)) is None


async def test_exact_entries_expire_after_their_ttl() -> None:
    """An entry is served until its TTL runs out on the clock, then never again."""
    clock = FakeClock()
    cache = ExactCache(ttl_s=60, clock=clock)
    request = ask("Where is my invoice?")
    await cache.store(request, scope_of(request), ANSWER)
    clock.now += 59.9
    assert await cache.lookup(request, scope_of(request)) is not None
    clock.now += 0.2
    assert await cache.lookup(request, scope_of(request)) is None


@pytest.mark.parametrize(
    ("changed", "model"),
    [
        ({"tenant": "globex"}, "gpt-small"),
        ({"tenant": None}, "gpt-small"),
        ({}, "gpt-large"),
        ({"temperature": 0.7}, "gpt-small"),
        ({"max_output_tokens": 50}, "gpt-small"),
        ({"tools": (ToolDefinition("lookup_order", "Find an order", {"type": "object"}),)}, "gpt-small"),
    ],
)
async def test_scopes_never_share_entries(changed: dict[str, Any], model: str) -> None:
    """Another tenant, model, temperature, output limit or tool set misses in both layers."""
    layered = LayeredCache(ExactCache(), SemanticCache(HashingEmbedder(), threshold=0.5))
    stored = ask("How do I enable 2FA?")
    await layered.store(stored, scope_of(stored), ANSWER)
    assert await layered.lookup(stored, scope_of(stored)) is not None
    other = ask("How do I enable 2FA?", **changed)
    assert await layered.lookup(other, scope_of(other, model)) is None


def test_only_single_turn_requests_are_cacheable() -> None:
    """One user message plus system messages is cacheable; any other turn makes it uncacheable."""
    user = Message("user", "Where is order A-1001?")
    call = ToolCall("c1", "lookup_order", {"id": "A-1001"})
    assert cacheable(ModelRequest(messages=(user,)))
    assert cacheable(ModelRequest(messages=(Message("system", SYSTEM), user)))
    assert not cacheable(ModelRequest(messages=(user, Message("user", "And A-1002?"))))
    assert not cacheable(ModelRequest(messages=(user, Message("assistant", "Which one?"), user)))
    assert not cacheable(
        ModelRequest(messages=(user, Message("assistant", "", (call,)), Message("tool", "{}", (), "c1")))
    )
    assert not cacheable(ModelRequest(messages=(Message("user", "   "),)))


async def test_multi_turn_requests_are_neither_stored_nor_served() -> None:
    """A multi-turn request never stores into and never reads from either layer."""
    layered = LayeredCache(ExactCache(), SemanticCache(HashingEmbedder()))
    turns = ModelRequest(
        messages=(Message("user", "Hi"), Message("assistant", "Hello"), Message("user", "Hi"))
    )
    await layered.store(turns, scope_of(turns), ANSWER)
    single = ModelRequest(messages=(Message("user", "Hi"),))
    assert await layered.lookup(single, scope_of(single)) is None
    assert await layered.lookup(turns, scope_of(turns)) is None


@pytest.mark.parametrize(
    "response",
    [
        ModelResponse(content="", tool_calls=(ToolCall("c1", "lookup_order", {"id": "A-1"}),)),
        ModelResponse(content="Let me check.", tool_calls=(ToolCall("c1", "lookup_order", {"id": "A-1"}),)),
        ModelResponse(content="The answer was cut", finish_reason="length"),
        ModelResponse(content=""),
    ],
)
async def test_tool_calls_and_unfinished_answers_are_not_stored(response: ModelResponse) -> None:
    """Responses with tool calls, truncated or empty answers are not cached in either layer."""
    layered = LayeredCache(ExactCache(), SemanticCache(HashingEmbedder()))
    request = ask("Where is order A-1?")
    await layered.store(request, scope_of(request), response)
    assert await layered.lookup(request, scope_of(request)) is None


# --- semantic layer ------------------------------------------------------------------------------------


async def test_semantic_hit_on_a_near_duplicate_without_the_extra() -> None:
    """The hashing embedder finds a reworded question and reports the similarity and the matched query."""
    cache = SemanticCache(HashingEmbedder(), threshold=0.6)
    stored = ask("How do I reset my password?")
    await cache.store(stored, scope_of(stored), ANSWER)
    hit = await cache.lookup(ask("how can I reset my password"), scope_of(stored))
    assert isinstance(hit, CacheHit)
    assert hit.layer == "semantic"
    assert hit.matched_query == "How do I reset my password?"
    assert hit.similarity is not None
    assert 0.6 <= hit.similarity < 1.0


async def test_semantic_hit_on_a_paraphrase_with_minilm(minilm: Embedder) -> None:
    """MiniLM at the default threshold serves a paraphrase worded quite differently."""
    cache = SemanticCache(minilm)
    stored = ask("How long does it take to process a claim?")
    await cache.store(stored, scope_of(stored), ANSWER)
    hit = await cache.lookup(
        ask("What's the typical turnaround time for a claim decision?"), scope_of(stored)
    )
    assert isinstance(hit, CacheHit)
    assert hit.similarity is not None
    assert hit.similarity >= DEFAULT_SIMILARITY_THRESHOLD


async def test_semantic_rejection_of_an_opposite_is_reported_as_an_event(minilm: Embedder) -> None:
    """'disable 2FA' scores above the threshold against 'enable 2FA'; the guard rejects it with a reason."""
    events: list[tuple[str, dict[str, Any]]] = []
    layered = LayeredCache(
        ExactCache(), SemanticCache(minilm), on_event=lambda kind, data: events.append((kind, data))
    )
    stored = ask("How do I enable two-factor authentication?")
    await layered.store(stored, scope_of(stored), ANSWER)
    assert await layered.lookup(ask("How do I disable two-factor authentication?"), scope_of(stored)) is None
    [(kind, data)] = events
    assert kind == "cache.rejected"
    assert data["category"] == "direction"
    assert data["similarity"] >= DEFAULT_SIMILARITY_THRESHOLD
    assert data["tenant"] == "acme"
    assert data["model"] == "gpt-small"


async def test_layered_lookup_reports_hits_from_the_exact_layer_first() -> None:
    """An exact hit wins over the semantic layer and is reported once through the hook."""
    events: list[tuple[str, dict[str, Any]]] = []
    layered = LayeredCache(
        ExactCache(), SemanticCache(HashingEmbedder()), on_event=lambda k, d: events.append((k, d))
    )
    request = ask("How do I reset my password?", run_id="run-1")
    await layered.store(request, scope_of(request), ANSWER)
    hit = await layered.lookup(request, scope_of(request))
    assert hit is not None
    assert hit.layer == "exact"
    assert [(k, d["layer"], d["run_id"]) for k, d in events] == [("cache.hit", "exact", "run-1")]


async def test_semantic_entries_expire_and_scopes_are_bounded() -> None:
    """Semantic entries expire with the clock; a full scope drops its oldest entry first."""
    clock = FakeClock()
    cache = SemanticCache(HashingEmbedder(), threshold=0.99, ttl_s=100, max_entries=2, clock=clock)
    questions = ["Where is my parcel?", "How do I reset my password?", "What are your opening hours?"]
    for question in questions:
        clock.now += 1
        await cache.store(ask(question), scope_of(ask(question)), ANSWER)
    assert await cache.lookup(ask(questions[0]), scope_of(ask(questions[0]))) is None  # evicted
    assert isinstance(await cache.lookup(ask(questions[2]), scope_of(ask(questions[2]))), CacheHit)
    clock.now += 100
    assert await cache.lookup(ask(questions[2]), scope_of(ask(questions[2]))) is None


async def test_semantic_search_without_numpy_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without numpy the index scores in plain Python and finds the same neighbour."""
    monkeypatch.setattr(cache_module, "_numpy", lambda: None)
    cache = SemanticCache(HashingEmbedder(), threshold=0.6)
    for question in ["How do I reset my password?", "Where is my parcel?"]:
        await cache.store(ask(question), scope_of(ask(question)), ANSWER)
    hit = await cache.lookup(ask("how can I reset my password"), scope_of(ask("x")))
    assert isinstance(hit, CacheHit)
    assert hit.matched_query == "How do I reset my password?"


# --- the guard -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cached", "query", "category", "in_reason"),
    [
        ("Is my package delivered?", "Is my package not delivered?", "negation", "negated"),
        ("I can log in to the portal.", "I can't log in to the portal.", "negation", "negated"),
        (
            "Can I get a refund with a receipt?",
            "Can I get a refund without a receipt?",
            "negation",
            "negated",
        ),
        ("How do I enable 2FA?", "How do I disable 2FA?", "direction", "opposite words"),
        ("Why was I refunded $40?", "Why was I charged $40?", "direction", "opposite words"),
        ("Please increase my credit limit.", "Please decrease my credit limit.", "direction", "opposite"),
        ("How do I lock my account?", "How do I unlock my account?", "direction", "'unlock'"),
        ("Convert 100 USD to EUR.", "Convert 100 EUR to USD.", "direction", "usd"),
        ("How many euros is 50 dollars?", "How many dollars is 50 euros?", "direction", "currency order"),
        (
            "Move the ticket from Sales to Support.",
            "Move the ticket from Support to Sales.",
            "direction",
            "source",
        ),
        ("Refund $50 to my card.", "Refund $500 to my card.", "numbers", "{50} vs {500}"),
        ("Book the room for March 3.", "Book the room for March 30.", "numbers", "{3} vs {30}"),
        ("Transfer $1,000 to savings.", "Transfer $10,000 to savings.", "numbers", "{1000} vs {10000}"),
        ("Where is order A-1001?", "Where is order A-1002?", "identifiers", "a1001"),
        (
            "Reset the password for jane@example.com.",
            "Reset the password for john@example.com.",
            "identifiers",
            "@",
        ),
        ("Send my January invoice.", "Send my February invoice.", "identifiers", "january"),
        ("My Visa card was declined.", "My Mastercard was declined.", "identifiers", "visa"),
        ("Invite the marketing team.", "Invite the finance team.", "substitution", "market"),
    ],
)
def test_guard_rejects_with_a_category_and_reason(
    cached: str, query: str, category: str, in_reason: str
) -> None:
    """Each kind of meaningful difference is rejected, and the reason names what differs."""
    verdict = HitGuard().check(cached, query)
    assert not verdict.ok
    assert verdict.category == category
    assert verdict.reason is not None
    assert in_reason in verdict.reason


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("How do I set up two-factor authentication?", "What are the steps to turn on 2FA for my account?"),
        ("I was charged twice for the same order.", "Why do I see two identical charges for one purchase?"),
        ("The printer on the third floor is jammed.", "There's a paper jam in the 3rd floor printer."),
        ("CPU usage on the web servers is very high.", "The web tier is showing a lot of processor load."),
        ("Convert $100 to EUR.", "Convert 100 dollars to euros."),
    ],
)
def test_guard_lets_paraphrases_through(cached: str, query: str) -> None:
    """Rewording, number words, an acronym on one side and currency spellings do not block a hit."""
    assert HitGuard().check(cached, query).ok


# --- tool results --------------------------------------------------------------------------------------


async def test_tool_results_are_keyed_by_tool_arguments_and_tenant() -> None:
    """Argument order does not matter; another tenant, tool or argument misses; entries expire."""
    clock = FakeClock()
    cache = ToolResultCache(ttl_s=300, clock=clock)
    await cache.set(
        "lookup_order", {"id": "A-1", "fields": ["status", "eta"]}, "acme", '{"status": "shipped"}'
    )
    assert (
        await cache.get("lookup_order", {"fields": ["status", "eta"], "id": "A-1"}, "acme")
        == '{"status": "shipped"}'
    )
    assert await cache.get("lookup_order", {"id": "A-1", "fields": ["status", "eta"]}, "globex") is None
    assert await cache.get("lookup_order", {"id": "A-2", "fields": ["status", "eta"]}, "acme") is None
    assert await cache.get("cancel_order", {"id": "A-1", "fields": ["status", "eta"]}, "acme") is None
    clock.now += 301
    assert await cache.get("lookup_order", {"id": "A-1", "fields": ["status", "eta"]}, "acme") is None


async def test_tool_results_with_non_json_arguments_are_not_cached() -> None:
    """Arguments that are not plain JSON are skipped rather than keyed by their repr."""
    cache = ToolResultCache()
    await cache.set("lookup", {"when": object()}, "acme", "result")
    assert await cache.get("lookup", {"when": object()}, "acme") is None


# --- embedders -----------------------------------------------------------------------------------------


def test_default_embedder_names_the_extra_when_packages_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime the default embedder fails with the extra to install, never falls back."""
    real = embeddings_module.importlib.util.find_spec
    monkeypatch.setattr(
        embeddings_module.importlib.util,
        "find_spec",
        lambda name: None if name == "onnxruntime" else real(name),
    )
    with pytest.raises(ConfigurationError, match=r"onnxruntime.*tether\[semantic\]"):
        default_embedder()


def test_a_model_file_that_does_not_match_its_hash_is_refused(tmp_path: Path) -> None:
    """A file whose sha256 differs from the pinned one is not loaded."""
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ConfigurationError, match="sha256"):
        embeddings_module._verified(bogus, embeddings_module.MODEL_SHA256)


def test_hashing_embedder_is_normalised_and_deterministic() -> None:
    """Hashing vectors have unit length and are identical across calls."""
    embedder = HashingEmbedder(dimensions=64)
    [first, second] = embedder.embed(["Where is my order?", "Where is my order?"])
    assert first == second
    assert len(first) == 64
    assert sum(x * x for x in first) == pytest.approx(1.0)


def test_minilm_vectors_are_normalised_and_thread_safe(minilm: Embedder) -> None:
    """MiniLM gives 384 unit-length floats, the same from several threads at once, offline."""
    texts = [f"Where is order A-{n}?" for n in range(8)]
    expected = minilm.embed(texts)
    assert len(expected[0]) == minilm.dimensions == 384
    assert sum(x * x for x in expected[0]) == pytest.approx(1.0, abs=1e-5)
    results: list[list[list[float]]] = []
    threads = [threading.Thread(target=lambda: results.append(minilm.embed(texts))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results:
        for vector, want in zip(result, expected, strict=True):
            assert vector == pytest.approx(want, abs=1e-5)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# --- the quality gate ----------------------------------------------------------------------------------


def load_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]


def test_labelled_set_is_well_formed() -> None:
    """At least 240 distinct pairs, every label represented, no pair repeated."""
    pairs = load_pairs()
    labels = {p["label"] for p in pairs}
    assert len(pairs) >= 240
    assert labels == {"paraphrase", "opposite", "different_entity", "unrelated"}
    assert len({(p["a"], p["b"]) for p in pairs}) == len(pairs)
    assert all(p["a"] != p["b"] and p["note"] for p in pairs)


async def test_false_hit_rate_and_paraphrase_hit_rate_on_the_labelled_set(minilm: Embedder) -> None:
    """Default embedder and threshold: at most 1% false hits and at least 60% hits on paraphrases."""
    cache = SemanticCache(minilm)
    pairs = load_pairs()
    outcomes: list[tuple[str, bool]] = []
    for index, pair in enumerate(pairs):
        stored = ask(pair["a"], tenant=f"pair-{index}")  # one scope per pair: only its own entry competes
        await cache.store(stored, scope_of(stored), ANSWER)
        found = await cache.lookup(ask(pair["b"], tenant=f"pair-{index}"), scope_of(stored))
        assert found is None or isinstance(found, CacheHit | CacheRejection)
        outcomes.append((pair["label"], isinstance(found, CacheHit)))
    paraphrase_hits = [hit for label, hit in outcomes if label == "paraphrase"]
    false_hits = [hit for label, hit in outcomes if label != "paraphrase"]
    false_hit_rate = sum(false_hits) / len(false_hits)
    hit_rate = sum(paraphrase_hits) / len(paraphrase_hits)
    assert false_hit_rate <= 0.01, f"false-hit rate {false_hit_rate:.2%} over {len(false_hits)} pairs"
    assert hit_rate >= 0.60, f"paraphrase hit rate {hit_rate:.1%} over {len(paraphrase_hits)} pairs"
