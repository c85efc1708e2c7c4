"""Resilience for model and tool calls: circuit breakers, retries, rate limits, bulkheads."""

from __future__ import annotations

from tether.resilience.breaker import (
    BreakerEvent,
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    BreakerStep,
    BreakerStore,
    BreakerTransition,
    CircuitBreaker,
    InMemoryBreakerStore,
    RedisBreakerStore,
    counts_as_failure,
)
from tether.resilience.bulkhead import (
    Bulkhead,
    BulkheadRegistry,
    BulkheadStore,
    InMemoryBulkheadStore,
    RedisBulkheadStore,
)
from tether.resilience.ratelimit import (
    InMemoryRateLimitStore,
    RateLimit,
    RateLimiter,
    RateLimitStore,
    RedisRateLimitStore,
)
from tether.resilience.retry import RetryAttempt, RetryPolicy, backoff_s, retry_call

__all__ = [
    "BreakerEvent",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStep",
    "BreakerStore",
    "BreakerTransition",
    "Bulkhead",
    "BulkheadRegistry",
    "BulkheadStore",
    "CircuitBreaker",
    "InMemoryBreakerStore",
    "InMemoryBulkheadStore",
    "InMemoryRateLimitStore",
    "RateLimit",
    "RateLimitStore",
    "RateLimiter",
    "RedisBreakerStore",
    "RedisBulkheadStore",
    "RedisRateLimitStore",
    "RetryAttempt",
    "RetryPolicy",
    "backoff_s",
    "counts_as_failure",
    "retry_call",
]
