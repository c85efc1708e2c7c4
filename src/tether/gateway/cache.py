"""The gateway's layered cache: exact, then semantic (guarded against false hits), and tool results.

Answers are cached only for single-turn requests, scoped by tenant, model and parameters. A semantic
candidate must pass the `HitGuard`: paraphrase models score opposite meanings ("enable 2FA" / "disable
2FA") as near-identical, so a lexical check on negations, directions, numbers and identifiers decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from tether.gateway.cache_guard import GuardVerdict, HitGuard, QuerySignature, signature_of
from tether.gateway.embeddings import Embedder
from tether.types import JsonDict, ModelRequest, ModelResponse, Usage

__all__ = [
    "CacheBackend",
    "CacheHit",
    "CacheRejection",
    "CacheScope",
    "ExactCache",
    "GuardVerdict",
    "HitGuard",
    "InMemoryCacheBackend",
    "LayeredCache",
    "SemanticCache",
    "ToolResultCache",
    "cacheable",
]

Clock = Callable[[], float]
CacheEventHook = Callable[[str, JsonDict], None]  # ("cache.hit" | "cache.rejected", data)
ANSWER_TTL_S = 6 * 3600.0
TOOL_RESULT_TTL_S = 300.0
EMBEDDING_TTL_S = 3 * 86400.0
# Measured on tests/gateway/data/semantic_pairs.jsonl with the MiniLM embedder (bench/cache.py prints the
# sweep): realistic paraphrases score 0.6–0.8 there and opposites 0.85–1.0, so the guard, not the
# threshold, stops false hits; the threshold only keeps unrelated questions out.
DEFAULT_SIMILARITY_THRESHOLD = 0.62


@dataclass(frozen=True, slots=True)
class CacheScope:
    """Everything besides the prompt that changes an answer; entries never cross scopes."""

    tenant: str | None
    model: str  # the route or model name the caller asked for
    temperature: float | None = None
    max_output_tokens: int | None = None
    tools_signature: str = ""  # sha256 of the tool definitions offered, "" without tools

    @classmethod
    def of(cls, request: ModelRequest, model: str) -> CacheScope:
        tools = ""
        if request.tools:
            spec = [[t.name, t.description, t.parameters] for t in request.tools]
            tools = hashlib.sha256(_canonical_json(spec).encode()).hexdigest()
        return cls(request.tenant, model, request.temperature, request.max_output_tokens, tools)

    def key(self) -> str:
        fields = [self.tenant, self.model, self.temperature, self.max_output_tokens, self.tools_signature]
        return hashlib.sha256(_canonical_json(fields).encode()).hexdigest()


def cacheable(request: ModelRequest) -> bool:
    """Single-turn only: system messages plus exactly one non-empty user message, nothing else."""
    users = [m for m in request.messages if m.role == "user"]
    others = [m for m in request.messages if m.role not in ("user", "system")]
    return len(users) == 1 and not others and bool(users[0].content.strip())


def _prompt_parts(request: ModelRequest) -> tuple[str, str]:
    system = "\n".join(m.content for m in request.messages if m.role == "system")
    user = next(m.content for m in request.messages if m.role == "user")
    return _normalise(system), _normalise(user)


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _storable(response: ModelResponse) -> bool:
    # Tool calls are steps of one run, not answers; truncated or filtered text is not worth repeating.
    return not response.tool_calls and bool(response.content) and response.finish_reason not in _UNFIT


_UNFIT = ("length", "content_filter")


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cached answer. Its usage is zero (a hit spends nothing); `saved` is what the original cost."""

    response: ModelResponse
    layer: Literal["exact", "semantic"]
    similarity: float | None
    matched_query: str
    saved: Usage = field(default_factory=Usage)

    def event_data(self) -> JsonDict:
        data = {"layer": self.layer, "similarity": self.similarity, "matched_query": self.matched_query}
        return {**data, "saved": self.saved.to_dict()}


@dataclass(frozen=True, slots=True)
class CacheRejection:
    """A semantic candidate above the threshold that the guard turned down."""

    matched_query: str
    similarity: float
    verdict: GuardVerdict

    def event_data(self) -> JsonDict:
        data = {"layer": "semantic", "similarity": self.similarity, "matched_query": self.matched_query}
        return {**data, "category": self.verdict.category, "reason": self.verdict.reason}


def _hit(payload: str, layer: Literal["exact", "semantic"], similarity: float | None, query: str) -> CacheHit:
    original = ModelResponse.from_dict(json.loads(payload))
    hit = CacheHit(original, layer, similarity, query, original.usage)
    response = replace(original, usage=Usage(0, 0, 0.0), events=(("cache.hit", hit.event_data()),))
    return replace(hit, response=response)


class CacheBackend(Protocol):
    """Where exact and tool-result entries live: string values with a time to live."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float) -> None: ...


class InMemoryCacheBackend:
    """A bounded dict with expiry read from `clock`; the oldest entries go first when full."""

    def __init__(self, *, max_entries: int = 100_000, clock: Clock = time.time) -> None:
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    async def get(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] <= self._clock():
            del self._entries[key]
            return None
        return None if entry is None else entry[0]

    async def set(self, key: str, value: str, ttl_s: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (value, self._clock() + ttl_s)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


class ExactCache:
    """Answers keyed by sha256 of (scope, normalised system prompt, normalised user text)."""

    def __init__(
        self, *, ttl_s: float = ANSWER_TTL_S, backend: CacheBackend | None = None, clock: Clock = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self._backend = backend if backend is not None else InMemoryCacheBackend(clock=clock)

    async def lookup(self, request: ModelRequest, scope: CacheScope) -> CacheHit | None:
        if not cacheable(request):
            return None
        system, user = _prompt_parts(request)
        payload = await self._backend.get(_digest("answer", scope.key(), system, user))
        return None if payload is None else _hit(payload, "exact", None, user)

    async def store(self, request: ModelRequest, scope: CacheScope, response: ModelResponse) -> None:
        if cacheable(request) and _storable(response):
            system, user = _prompt_parts(request)
            payload = _canonical_json(response.to_dict())
            await self._backend.set(_digest("answer", scope.key(), system, user), payload, self.ttl_s)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(_canonical_json(parts).encode()).hexdigest()


@dataclass(slots=True)
class _Entry:
    query: str
    vector: list[float]
    payload: str
    expires_at: float
    signature: QuerySignature


class _ScopeIndex:
    """One scope's entries with their vectors as matrix rows (numpy when installed, lists otherwise)."""

    def __init__(self, dimensions: int) -> None:
        self.entries: list[_Entry] = []
        self._np: Any = _numpy()
        self._matrix: Any = None if self._np is None else self._np.zeros((64, dimensions), "float32")

    def add(self, entry: _Entry) -> None:
        if self._np is not None:
            if len(self.entries) == len(self._matrix):
                self._matrix = self._np.concatenate([self._matrix, self._np.zeros_like(self._matrix)])
            self._matrix[len(self.entries)] = entry.vector
        self.entries.append(entry)

    def remove(self, index: int) -> None:
        last = len(self.entries) - 1  # swap with the last row: O(1), order does not matter
        if self._np is not None:
            self._matrix[index] = self._matrix[last]
        self.entries[index] = self.entries[last]
        self.entries.pop()

    def nearest(self, vector: list[float], limit: int, threshold: float) -> list[tuple[int, float]]:
        if self._np is not None:
            scores = self._matrix[: len(self.entries)] @ self._np.asarray(vector, "float32")
            top = self._np.argpartition(-scores, limit)[:limit] if len(scores) > limit else range(len(scores))
            ranked = sorted(((int(i), float(scores[i])) for i in top), key=lambda p: -p[1])
        else:
            pairs = [
                (i, sum(x * y for x, y in zip(e.vector, vector, strict=True)))
                for i, e in enumerate(self.entries)
            ]
            ranked = sorted(pairs, key=lambda p: -p[1])[:limit]
        return [(i, score) for i, score in ranked if score >= threshold]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # the semantic extra is not installed: plain Python, fine for small caches
        return None
    return numpy


class SemanticCache:
    """Nearest neighbour by cosine within one scope and system prompt; a hit must pass the guard.

    Embeddings of stored queries live with their entries; recent query embeddings are memoised for
    `embedding_ttl_s`, so the usual miss-then-store embeds the text once. Embedding runs in a thread.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
        ttl_s: float = ANSWER_TTL_S,
        max_entries: int = 10_000,  # per scope; the oldest entry goes first
        clock: Clock = time.time,
        guard: HitGuard | None = None,
        embedding_ttl_s: float = EMBEDDING_TTL_S,
        max_candidates: int = 3,  # candidates above the threshold offered to the guard, best first
    ) -> None:
        self.embedder = embedder
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.guard = guard if guard is not None else HitGuard()
        self._max_entries = max_entries
        self._clock = clock
        self._embedding_ttl_s = embedding_ttl_s
        self._max_candidates = max_candidates
        self._indexes: dict[str, _ScopeIndex] = {}
        self._memo: OrderedDict[str, tuple[list[float], float]] = OrderedDict()
        self._lock = threading.Lock()

    async def lookup(self, request: ModelRequest, scope: CacheScope) -> CacheHit | CacheRejection | None:
        if not cacheable(request):
            return None
        system, user = _prompt_parts(request)
        key = _digest("semantic", scope.key(), system)
        if not self._indexes.get(key):
            return None  # nothing stored in this scope: skip the embedding
        vector = await self._embed(user)
        with self._lock:
            candidates = self._candidates(self._indexes[key], vector)
        rejection: CacheRejection | None = None
        signature = signature_of(user)
        for entry, similarity in candidates:
            verdict = self.guard.check_signatures(entry.signature, signature)
            if verdict.ok:
                return _hit(entry.payload, "semantic", similarity, entry.query)
            rejection = rejection or CacheRejection(entry.query, similarity, verdict)
        return rejection

    async def store(self, request: ModelRequest, scope: CacheScope, response: ModelResponse) -> None:
        if not cacheable(request) or not _storable(response):
            return
        system, user = _prompt_parts(request)
        vector = await self._embed(user)
        payload = _canonical_json(response.to_dict())
        entry = _Entry(user, vector, payload, self._clock() + self.ttl_s, signature_of(user))
        with self._lock:
            index = self._indexes.setdefault(
                _digest("semantic", scope.key(), system), _ScopeIndex(self.embedder.dimensions)
            )
            for i in reversed(range(len(index.entries))):
                if index.entries[i].query == user or index.entries[i].expires_at <= self._clock():
                    index.remove(i)
            while len(index.entries) >= self._max_entries:
                index.remove(min(range(len(index.entries)), key=lambda i: index.entries[i].expires_at))
            index.add(entry)

    def _candidates(self, index: _ScopeIndex, vector: list[float]) -> list[tuple[_Entry, float]]:
        now = self._clock()
        while True:
            ranked = index.nearest(vector, self._max_candidates, self.threshold)
            expired = sorted((i for i, _ in ranked if index.entries[i].expires_at <= now), reverse=True)
            if not expired:
                return [(index.entries[i], score) for i, score in ranked]
            for i in expired:
                index.remove(i)

    async def _embed(self, text: str) -> list[float]:
        now = self._clock()
        cached = self._memo.get(text)
        if cached is not None and cached[1] > now:
            return cached[0]
        [vector] = await asyncio.to_thread(self.embedder.embed, [text])
        self._memo[text] = (vector, now + self._embedding_ttl_s)
        while len(self._memo) > 4096:
            self._memo.popitem(last=False)
        return vector


class LayeredCache:
    """Exact first, then semantic; stores into both. Hits and guard rejections go to `on_event`."""

    def __init__(
        self,
        exact: ExactCache | None,
        semantic: SemanticCache | None,
        *,
        on_event: CacheEventHook | None = None,
    ) -> None:
        self.exact = exact
        self.semantic = semantic
        self._on_event = on_event

    async def lookup(self, request: ModelRequest, scope: CacheScope) -> CacheHit | None:
        if not cacheable(request):
            return None
        found: CacheHit | CacheRejection | None = None
        if self.exact is not None:
            found = await self.exact.lookup(request, scope)
        if found is None and self.semantic is not None:
            found = await self.semantic.lookup(request, scope)
        if found is not None and self._on_event is not None:
            context = {"run_id": request.run_id, "tenant": scope.tenant, "model": scope.model}
            kind = "cache.hit" if isinstance(found, CacheHit) else "cache.rejected"
            self._on_event(kind, {**found.event_data(), **context})
        return found if isinstance(found, CacheHit) else None

    async def store(self, request: ModelRequest, scope: CacheScope, response: ModelResponse) -> None:
        if not cacheable(request) or not _storable(response):
            return
        if self.exact is not None:
            await self.exact.store(request, scope, response)
        if self.semantic is not None:
            await self.semantic.store(request, scope, response)


class ToolResultCache:
    """Results of tools marked cacheable, keyed by (tool name, canonical JSON arguments, tenant)."""

    def __init__(
        self,
        *,
        ttl_s: float = TOOL_RESULT_TTL_S,
        backend: CacheBackend | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self._backend = backend if backend is not None else InMemoryCacheBackend(clock=clock)

    async def get(self, tool_name: str, arguments: JsonDict, tenant: str | None) -> str | None:
        key = self._key(tool_name, arguments, tenant)
        return None if key is None else await self._backend.get(key)

    async def set(
        self,
        tool_name: str,
        arguments: JsonDict,
        tenant: str | None,
        result: str,
        *,
        ttl_s: float | None = None,
    ) -> None:
        key = self._key(tool_name, arguments, tenant)
        if key is not None:
            await self._backend.set(key, result, self.ttl_s if ttl_s is None else ttl_s)

    @staticmethod
    def _key(tool_name: str, arguments: JsonDict, tenant: str | None) -> str | None:
        try:
            return _digest("tool", tool_name, tenant, arguments)
        except (TypeError, ValueError):  # arguments that are not plain JSON are never cached
            return None
