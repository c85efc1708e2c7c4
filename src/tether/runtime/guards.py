"""ToolGuards: what stands around every tool call — its breaker, rate limit, bulkhead and retries."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pydantic

from tether.errors import ToolError, UnavailableError
from tether.gateway.cache import ToolResultCache
from tether.resilience.breaker import (
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    counts_as_failure,
)
from tether.resilience.bulkhead import BulkheadRegistry
from tether.resilience.ratelimit import RateLimit, RateLimiter
from tether.resilience.retry import RetryAttempt, retry_call
from tether.tools import Tool, ToolContext
from tether.types import EventKind, JsonDict

Event = tuple[str, JsonDict]


@dataclass
class ToolGuards:
    """Shared by every run of a Runtime; the registries hold per-tool state (memory or Redis)."""

    breakers: BreakerRegistry = field(default_factory=BreakerRegistry)
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)
    bulkheads: BulkheadRegistry = field(default_factory=BulkheadRegistry)
    rate_limit_wait_s: float = 5.0  # how long a tool call may wait for its bucket before giving up
    principal_limit: RateLimit | None = None  # model calls per principal, across all their runs
    tool_breaker_policy: BreakerPolicy | None = None  # None: the registry's default policy
    tool_results: ToolResultCache = field(default_factory=ToolResultCache)

    async def cached_result(self, tool: Tool, arguments: JsonDict, principal: str | None) -> str | None:
        """A fresh result of a cacheable tool for the same arguments, if one was stored."""
        if tool.cache_ttl_s is None:
            return None
        return await self.tool_results.get(tool.name, arguments, _cache_scope(tool, principal))

    async def store_result(self, tool: Tool, arguments: JsonDict, principal: str | None, text: str) -> None:
        if tool.cache_ttl_s is not None:
            scope = _cache_scope(tool, principal)
            await self.tool_results.set(tool.name, arguments, scope, text, ttl_s=tool.cache_ttl_s)

    def breaker(self, tool: Tool) -> CircuitBreaker:
        return self.breakers.get(f"tool:{tool.name}", self.tool_breaker_policy)

    async def admit(self, tool: Tool) -> None:
        """Fail fast (UnavailableError) when the tool's breaker is open or its bucket stays empty."""
        breaker = self.breaker(tool)
        await breaker.allow()
        if tool.rate_limit is not None:
            try:
                await self.rate_limiter.acquire(
                    f"tool:{tool.name}", tool.rate_limit, max_wait_s=self.rate_limit_wait_s
                )
            except BaseException:
                await breaker.release()  # nothing ran: a half-open probe slot must not leak
                raise

    async def admit_model_call(self, principal: str | None) -> None:
        if self.principal_limit is not None and principal is not None:
            await self.rate_limiter.acquire(
                f"principal:{principal}", self.principal_limit, max_wait_s=self.rate_limit_wait_s
            )

    @contextlib.asynccontextmanager
    async def pool(self, tool: Tool) -> AsyncIterator[None]:
        """Hold a slot of the tool's bulkhead (if it names one) for the duration of the call."""
        if tool.bulkhead is None:
            yield
            return
        slot = self.bulkheads.get(tool.bulkhead, tool.max_concurrent).slot()
        try:
            await slot.__aenter__()
        except BaseException:
            await self.breaker(tool).release()  # admitted by the breaker but never run
            raise
        try:
            yield
        finally:
            await slot.__aexit__(None, None, None)

    async def call(
        self,
        tool: Tool,
        arguments: pydantic.BaseModel,
        context: ToolContext,
        *,
        timeout_s: float | None,
        events: list[Event],
    ) -> Any:
        """Invoke with the tool's retry policy; every attempt's outcome feeds the tool's breaker."""
        breaker = self.breaker(tool)
        attempts = 0
        # The run's remaining wall clock bounds all attempts together, not each one.
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        last_error: BaseException | None = None

        def note(transition: BreakerTransition | None) -> None:
            if transition is not None:
                kind = (
                    EventKind.BREAKER_OPENED
                    if transition.new == BreakerState.OPEN
                    else EventKind.BREAKER_CHANGED
                )
                events.append(
                    (
                        kind,
                        {"breaker": transition.name, "from": str(transition.old), "to": str(transition.new)},
                    )
                )

        async def attempt() -> Any:
            nonlocal attempts, last_error
            if attempts:
                try:
                    await breaker.allow()
                except UnavailableError:
                    # The breaker opened on an earlier attempt: that attempt's error is the outcome.
                    assert last_error is not None
                    raise last_error from None
            attempts += 1
            this_try = ToolContext(
                run_id=context.run_id,
                idempotency_key=context.idempotency_key,
                principal=context.principal,
                attempt=context.attempt + attempts - 1,
                tool_name=context.tool_name,
                call_id=context.call_id,
            )
            left_s = None if deadline_s is None else max(0.001, deadline_s - time.monotonic())
            try:
                value = await tool.invoke(arguments, this_try, timeout_s=left_s)
            except BaseException as exc:
                last_error = exc
                if isinstance(exc, ToolError) and counts_as_failure(exc):
                    note(await breaker.record_failure())
                else:  # invalid use or a cancellation says nothing about the tool's health
                    await breaker.release()
                raise
            note(await breaker.record_success())
            return value

        if tool.retry is None or not tool.idempotent:
            return await attempt()

        def on_retry(retry: RetryAttempt) -> None:
            events.append(
                (
                    EventKind.TOOL_RETRY,
                    {
                        "tool": tool.name,
                        "attempt": retry.attempt,
                        "error": str(retry.error)[:300],
                        "delay_s": round(retry.delay_s, 3),
                    },
                )
            )

        # Only idempotent tools get here: a timed-out attempt may have taken effect, and repeating
        # it with the same idempotency key is exactly what such a tool promises to survive.
        return await retry_call(attempt, tool.retry, on_retry=on_retry, deadline_s=deadline_s)


def _cache_scope(tool: Tool, principal: str | None) -> str | None:
    # A tool that reads its context may answer differently per caller: never share its results.
    return f"principal:{principal}" if tool.uses_context else None
