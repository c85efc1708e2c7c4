"""retry_call: which errors are retried, how long it pauses, and that retries never multiply."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContextTooLongError,
    ErrorClass,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
)
from tether.models.openai import OpenAIModel
from tether.resilience.retry import RetryAttempt, RetryPolicy, backoff_s, retry_call
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import Message, ModelRequest

NO_WAIT = RetryPolicy(max_attempts=3, initial_backoff_s=0)


class Sleeps:
    """A fake sleep that records each pause and advances a fake monotonic clock by it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now_s = 1000.0

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        self.now_s += delay_s

    def clock(self) -> float:
        return self.now_s


def failing(*errors: BaseException, result: str = "ok") -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """A call raising `errors` in turn, then returning `result`; the list counts the calls."""
    calls: list[int] = []

    async def call() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return call, calls


async def test_retries_retryable_errors_until_success() -> None:
    """Retryable, rate-limited and timeout errors are retried and the eventual result returned."""
    call, calls = failing(ModelRetryableError("500"), ModelTimeoutError("slow"))
    assert await retry_call(call, NO_WAIT, sleep=Sleeps()) == "ok"
    assert len(calls) == 3


async def test_reraises_the_last_error_after_max_attempts() -> None:
    """After max_attempts the last error is re-raised unchanged, so the caller can classify it."""
    last = ModelTimeoutError("third")
    call, calls = failing(ModelRetryableError("first"), ConnectionResetError("second"), last)
    with pytest.raises(ModelTimeoutError) as excinfo:
        await retry_call(call, NO_WAIT, sleep=Sleeps())
    assert excinfo.value is last
    assert len(calls) == 3


@pytest.mark.parametrize(
    "error",
    [BadRequestError("bad"), ContextTooLongError("long"), AuthenticationError("key"), ValueError("bug")],
)
async def test_never_retries_errors_retrying_cannot_fix(error: Exception) -> None:
    """Bad requests, too-long contexts, auth failures and unknown errors are raised after one call."""
    call, calls = failing(error, error)
    sleeps = Sleeps()
    with pytest.raises(type(error)):
        await retry_call(call, RetryPolicy(max_attempts=5), sleep=sleeps)
    assert calls == [1]
    assert sleeps.delays == []


async def test_honours_retry_after_as_a_floor() -> None:
    """A Retry-After longer than the backoff is waited for in full."""
    call, _ = failing(RateLimitedError("429", retry_after_s=7.5))
    sleeps = Sleeps()
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    assert await retry_call(call, policy, sleep=sleeps) == "ok"
    assert len(sleeps.delays) == 1
    assert sleeps.delays[0] >= 7.5


async def test_gives_up_at_once_when_retry_after_is_too_long() -> None:
    """A Retry-After beyond max_retry_after_s is not waited for: the 429 is re-raised at once."""
    error = RateLimitedError("429", retry_after_s=120)
    call, calls = failing(error)
    sleeps = Sleeps()
    with pytest.raises(RateLimitedError) as excinfo:
        await retry_call(call, RetryPolicy(max_retry_after_s=timedelta(minutes=1)), sleep=sleeps)
    assert excinfo.value is error
    assert calls == [1]
    assert sleeps.delays == []


async def test_on_retry_sees_each_failed_attempt_before_its_pause() -> None:
    """The hook gets a RetryAttempt per retried failure, numbered 1..n-1, with the pause to come."""
    errors = [ModelRetryableError("a"), RateLimitedError("b", retry_after_s=2.0), ModelTimeoutError("c")]
    call, _ = failing(*errors)
    seen: list[RetryAttempt] = []
    sleeps = Sleeps()
    await retry_call(call, RetryPolicy(max_attempts=4), sleep=sleeps, on_retry=seen.append)
    assert [a.attempt for a in seen] == [1, 2, 3]
    assert [a.error for a in seen] == errors
    assert [a.error_class for a in seen] == [
        ErrorClass.RETRYABLE,
        ErrorClass.RATE_LIMITED,
        ErrorClass.TIMEOUT,
    ]
    assert [a.delay_s for a in seen] == sleeps.delays
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].attempt = 9  # type: ignore[misc]


async def test_custom_classify_decides_what_is_retried() -> None:
    """An injected classify makes otherwise fatal errors retryable."""
    call, calls = failing(KeyError("flaky"))
    result = await retry_call(call, NO_WAIT, sleep=Sleeps(), classify=lambda _: ErrorClass.RETRYABLE)
    assert result == "ok"
    assert len(calls) == 2


async def test_never_sleeps_past_the_deadline() -> None:
    """A pause that would end past deadline_s is not taken: the error is re-raised instead."""
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=1.0, multiplier=1.0, max_backoff_s=1.0)
    call, calls = failing(*[RateLimitedError("429", retry_after_s=1.0) for _ in range(10)])
    with pytest.raises(RateLimitedError):
        await retry_call(call, policy, sleep=sleeps, clock=sleeps.clock, deadline_s=sleeps.now_s + 3.5)
    assert sleeps.delays == [1.0, 1.0, 1.0]
    assert len(calls) == 4


@given(
    initial=st.floats(0, 100),
    maximum=st.floats(0, 1000),
    multiplier=st.floats(1, 10),
    attempt=st.integers(1, 5000),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_the_full_jitter_range(
    initial: float, maximum: float, multiplier: float, attempt: int, seed: int
) -> None:
    """backoff_s always lies in [0, min(max_backoff_s, initial * multiplier ** (attempt - 1))]."""
    policy = RetryPolicy(initial_backoff_s=initial, max_backoff_s=maximum, multiplier=multiplier)
    try:
        cap = min(maximum, initial * multiplier ** (attempt - 1))
    except OverflowError:
        cap = maximum if initial > 0 else 0.0
    assert 0.0 <= backoff_s(policy, attempt, random.Random(seed)) <= cap


def test_backoff_is_jittered_across_the_whole_range() -> None:
    """Full jitter: pauses spread from near zero to near the cap, not clustered at the cap."""
    policy = RetryPolicy(initial_backoff_s=1.0, multiplier=2.0, max_backoff_s=100.0)
    rng = random.Random(7)
    delays = [backoff_s(policy, 3, rng) for _ in range(500)]
    assert min(delays) < 0.4
    assert max(delays) > 3.6


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("initial_backoff_s", -1.0),
        ("max_backoff_s", float("inf")),
        ("multiplier", 0.5),
        ("max_retry_after_s", timedelta(seconds=-1)),
        ("retry_on", frozenset({"retryable"})),
    ],
)
def test_policy_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    """An invalid policy raises ConfigurationError that names the offending field."""
    with pytest.raises(ConfigurationError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_policy_takes_timedeltas_and_stores_seconds() -> None:
    """Durations given as timedelta are stored as float seconds."""
    policy = RetryPolicy(initial_backoff_s=timedelta(milliseconds=250), max_backoff_s=timedelta(seconds=3))
    assert (policy.initial_backoff_s, policy.max_backoff_s) == (0.25, 3.0)


async def test_retries_do_not_multiply_with_the_provider() -> None:
    """Three attempts over a real OpenAIModel reach the server exactly three times: it never retries."""
    request = ModelRequest(messages=(Message(role="user", content="hi"),))
    async with FakeLLMServer([{"content": "never"}], faults=[Fault("http_500", every=1)]) as server:
        model = OpenAIModel("m", base_url=server.url)
        try:
            with pytest.raises(ModelRetryableError):
                await retry_call(lambda: model.request(request), NO_WAIT)
        finally:
            await model.aclose()
        assert server.stats["requests"] == 3
