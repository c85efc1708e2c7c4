"""Retries with exponential backoff and full jitter: the one layer that owns the retry budget.

Providers must not retry (SDK retries off, transport retries 0), or attempts would multiply per layer.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from tether import errors
from tether.errors import ConfigurationError, ErrorClass

T = TypeVar("T")

_DEFAULT_RETRY_ON = frozenset({ErrorClass.RETRYABLE, ErrorClass.RATE_LIMITED, ErrorClass.TIMEOUT})


@dataclass(frozen=True, slots=True, init=False)
class RetryPolicy:
    """How often and how patiently to retry. Durations take seconds or a `timedelta`.

    `max_attempts` counts every attempt, the first included. A `Retry-After` longer than
    `max_retry_after_s` is not waited for: the error is re-raised so the caller can fall back.
    """

    max_attempts: int
    initial_backoff_s: float
    max_backoff_s: float
    multiplier: float
    retry_on: frozenset[ErrorClass]
    max_retry_after_s: float

    def __init__(
        self,
        *,
        max_attempts: int = 3,
        initial_backoff_s: float | timedelta = 0.5,
        max_backoff_s: float | timedelta = 20.0,
        multiplier: float = 2.0,
        retry_on: frozenset[ErrorClass] = _DEFAULT_RETRY_ON,
        max_retry_after_s: float | timedelta = 60.0,
    ) -> None:
        # A hand-written __init__ so durations may be timedeltas while the fields stay plain floats.
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be an int of at least 1, not {max_attempts!r}"
            )
        if not (math.isfinite(multiplier) and multiplier >= 1):
            raise ConfigurationError(
                f"RetryPolicy.multiplier must be a finite number >= 1, not {multiplier!r}"
            )
        unknown = [item for item in retry_on if not isinstance(item, ErrorClass)]
        if unknown:
            names = ", ".join(member.name for member in ErrorClass)
            raise ConfigurationError(
                f"RetryPolicy.retry_on holds {unknown!r}; use ErrorClass members ({names})"
            )
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(
            self, "initial_backoff_s", duration_s("RetryPolicy.initial_backoff_s", initial_backoff_s)
        )
        object.__setattr__(self, "max_backoff_s", duration_s("RetryPolicy.max_backoff_s", max_backoff_s))
        object.__setattr__(self, "multiplier", float(multiplier))
        object.__setattr__(self, "retry_on", frozenset(retry_on))
        object.__setattr__(
            self, "max_retry_after_s", duration_s("RetryPolicy.max_retry_after_s", max_retry_after_s)
        )


@dataclass(frozen=True, slots=True)
class RetryAttempt:
    """Attempt number `attempt` (1-based) failed with `error`; the next one starts after `delay_s`."""

    attempt: int
    error: BaseException
    error_class: ErrorClass
    delay_s: float


def duration_s(field: str, value: float | timedelta) -> float:
    """`value` in seconds; a negative, infinite or non-numeric one is a ConfigurationError naming `field`."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ConfigurationError(
            f"{field} must be a finite duration >= 0 (seconds or timedelta), not {value!r}"
        )
    return float(seconds)


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """The pause after failed attempt `attempt`: full jitter, uniform over [0, the exponential cap]."""
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    if policy.initial_backoff_s == 0:
        return 0.0
    try:
        grown = policy.initial_backoff_s * policy.multiplier ** (attempt - 1)
    except OverflowError:  # float ** int raises instead of returning inf
        grown = math.inf
    return rng.uniform(0.0, min(policy.max_backoff_s, grown))


def _retry_after_s(error: BaseException) -> float | None:
    value = getattr(error, "retry_after_s", None)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None  # absent, or garbage from a provider: fall back to plain backoff
    return float(value)


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    classify: Callable[[BaseException], ErrorClass] = errors.classify,
    on_retry: Callable[[RetryAttempt], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
    deadline_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Await `fn()` until it succeeds, retrying the classes in `policy.retry_on`.

    Any other class re-raises at once; after the last attempt the last error re-raises unchanged, so
    callers can classify it. A `Retry-After` (`error.retry_after_s`) is a floor under the backoff.
    `deadline_s` is a `clock()` (monotonic) instant: a pause that would end past it is not taken.
    `on_retry` sees each failure before its pause.
    """
    rng = rng if rng is not None else random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as error:  # not BaseException: cancellation must never be retried
            error_class = classify(error)
            if error_class not in policy.retry_on or attempt >= policy.max_attempts:
                raise
            delay_s = backoff_s(policy, attempt, rng)
            retry_after_s = _retry_after_s(error)
            if retry_after_s is not None:
                if retry_after_s > policy.max_retry_after_s:
                    raise  # waiting that long helps nobody; the caller's fallback will
                delay_s = max(delay_s, retry_after_s)
            if deadline_s is not None and clock() + delay_s > deadline_s:
                raise
            if on_retry is not None:
                on_retry(RetryAttempt(attempt, error, error_class, delay_s))
            await sleep(delay_s)
