"""Circuit breakers: opening, failing fast, probing and closing, the same in memory and in Redis."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import errors
from tether.errors import BadRequestError, CircuitOpenError, ConfigurationError, ModelTimeoutError
from tether.resilience import (
    BreakerEvent,
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    BreakerStore,
    BreakerTransition,
    CircuitBreaker,
    InMemoryBreakerStore,
    RedisBreakerStore,
    counts_as_failure,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
LEGAL_EDGES = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
START_S = 1_700_000_000.123456  # epoch-like and fractional: exercises the exact float round trip to Redis
_names = itertools.count()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now_s: float = START_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def glob(prefix: str) -> str:
    """A Redis SCAN pattern for keys starting with `prefix` (test names may hold `[`)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=glob(redis_prefix))]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> BreakerStore:
    if request.param == "memory":
        return InMemoryBreakerStore()
    client = request.getfixturevalue("redis_client")
    return RedisBreakerStore(client, prefix=request.getfixturevalue("redis_prefix"))


def make(
    store: BreakerStore, policy: BreakerPolicy | None = None
) -> tuple[CircuitBreaker, Clock, list[BreakerTransition]]:
    clock, seen = Clock(), list[BreakerTransition]()
    name, policy = f"model-{next(_names)}", policy or BreakerPolicy()
    breaker = CircuitBreaker(name, policy, store=store, clock=clock, on_transition=seen.append)
    return breaker, clock, seen


async def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        await breaker.allow()
        await breaker.record_failure()


async def test_five_failures_within_the_window_open_the_breaker(store: BreakerStore) -> None:
    """Five failures within 60 s open the breaker; four keep it closed."""
    breaker, clock, _ = make(store)
    for _ in range(4):
        await fail(breaker, 1)
        clock.advance(14.0)
    assert await breaker.state() is CLOSED
    await fail(breaker, 1)  # the fifth, 56 s after the first
    assert await breaker.state() is OPEN


async def test_failures_spread_over_more_than_the_window_do_not_open(store: BreakerStore) -> None:
    """Five failures spaced 16 s apart (64 s in all) never have five inside one 60 s window."""
    breaker, clock, _ = make(store)
    for _ in range(5):
        await fail(breaker, 1)
        clock.advance(16.0)
    assert await breaker.state() is CLOSED


async def test_error_rate_opens_once_min_calls_were_seen(store: BreakerStore) -> None:
    """5 failures of 10 calls (50%) open; 4 of 4 (under min_calls) and 4 of 9 do not."""
    policy = BreakerPolicy(failure_threshold=100, error_rate_threshold=0.5, min_calls=10)
    breaker, _, seen = make(store, policy)
    await fail(breaker, 4)
    assert await breaker.state() is CLOSED
    for _ in range(5):
        await breaker.record_success()
    assert await breaker.state() is CLOSED
    transition = await breaker.record_failure()
    assert transition is not None
    assert (transition.old, transition.new) == (CLOSED, OPEN)
    assert "5 of 10 calls failed" in transition.reason
    assert seen == [transition]


async def test_open_breaker_fails_fast_with_retry_in_s(store: BreakerStore) -> None:
    """While open, allow() raises CircuitOpenError naming the breaker, since when, and when it probes."""
    breaker, clock, _ = make(store)
    await fail(breaker, 5)
    clock.advance(10.0)
    expected = rf"'{breaker.name}' is open since 2023-11-14T22:13:20\+00:00; .* through in 20\.0 s"
    with pytest.raises(CircuitOpenError, match=expected) as caught:
        await breaker.allow()
    assert caught.value.name == breaker.name
    assert caught.value.retry_in_s == pytest.approx(20.0)


async def test_cooldown_gives_one_probe_which_closes_on_success(store: BreakerStore) -> None:
    """After the cooldown one probe passes, a second allow is refused, and the probe's success closes."""
    breaker, clock, _ = make(store)
    await fail(breaker, 5)
    clock.advance(30.0)
    assert await breaker.state() is HALF_OPEN
    await breaker.allow()
    with pytest.raises(CircuitOpenError, match="half-open") as caught:
        await breaker.allow()
    assert caught.value.retry_in_s == pytest.approx(30.0)
    transition = await breaker.record_success()
    assert transition is not None
    assert (transition.old, transition.new) == (HALF_OPEN, CLOSED)
    await fail(breaker, 4)  # the window was cleared: four new failures are not five
    assert await breaker.state() is CLOSED


async def test_probe_failure_reopens_with_a_new_cooldown(store: BreakerStore) -> None:
    """A failed probe reopens the breaker, and the next probe waits a full cooldown again."""
    breaker, clock, _ = make(store)
    await fail(breaker, 5)
    clock.advance(31.0)
    await breaker.allow()
    transition = await breaker.record_failure()
    assert transition is not None
    assert (transition.old, transition.new, transition.at_s) == (HALF_OPEN, OPEN, clock.now_s)
    clock.advance(29.0)
    with pytest.raises(CircuitOpenError) as caught:
        await breaker.allow()
    assert caught.value.retry_in_s == pytest.approx(1.0)
    clock.advance(1.0)
    await breaker.allow()


async def test_all_probes_must_succeed_to_close(store: BreakerStore) -> None:
    """With three probe slots, a fourth allow is refused and only the third success closes."""
    breaker, clock, _ = make(store, BreakerPolicy(half_open_probes=3))
    await fail(breaker, 5)
    clock.advance(30.0)
    for _ in range(3):
        await breaker.allow()
    with pytest.raises(CircuitOpenError):
        await breaker.allow()
    assert await breaker.record_success() is None
    assert await breaker.record_success() is None
    assert await breaker.state() is HALF_OPEN
    assert await breaker.record_success() is not None
    assert await breaker.state() is CLOSED


async def test_concurrent_allows_take_only_the_probe_slots(store: BreakerStore) -> None:
    """Twenty allows racing into a half-open breaker with two slots: exactly two pass."""
    breaker, clock, _ = make(store, BreakerPolicy(half_open_probes=2))
    await fail(breaker, 5)
    clock.advance(30.0)
    results = await asyncio.gather(*(breaker.allow() for _ in range(20)), return_exceptions=True)
    assert sum(result is None for result in results) == 2
    assert all(isinstance(r, CircuitOpenError) for r in results if r is not None)


async def test_lost_probe_is_replaced_after_a_cooldown(store: BreakerStore) -> None:
    """A probe that never reports (its worker died) stops blocking once a further cooldown has passed."""
    breaker, clock, _ = make(store)
    await fail(breaker, 5)
    clock.advance(30.0)
    await breaker.allow()  # never reported
    clock.advance(29.0)
    with pytest.raises(CircuitOpenError):
        await breaker.allow()
    clock.advance(1.0)
    await breaker.allow()
    await breaker.record_success()
    assert await breaker.state() is CLOSED


async def test_late_results_while_open_are_ignored(store: BreakerStore) -> None:
    """A success arriving while open (from a call admitted before) neither closes nor probes."""
    breaker, _, _ = make(store)
    await fail(breaker, 5)
    assert await breaker.record_success() is None
    assert await breaker.record_failure() is None
    assert await breaker.state() is OPEN


async def test_guard_does_not_count_bad_requests_but_counts_timeouts(store: BreakerStore) -> None:
    """Five BadRequestErrors through guard() leave it closed; five ModelTimeoutErrors open it."""
    breaker, _, _ = make(store)
    for error in [BadRequestError("bad", status_code=400)] * 5:
        with pytest.raises(BadRequestError):
            async with breaker.guard():
                raise error
    assert await breaker.state() is CLOSED
    for _ in range(5):
        with pytest.raises(ModelTimeoutError):
            async with breaker.guard():
                raise ModelTimeoutError("slow")
    assert await breaker.state() is OPEN
    ran = False
    with pytest.raises(CircuitOpenError):
        async with breaker.guard():
            ran = True
    assert not ran


async def test_guard_records_success_and_frees_a_probe_on_a_neutral_error(store: BreakerStore) -> None:
    """A probe ending in a 4xx frees its slot for another probe; a clean block closes the breaker."""
    breaker, clock, _ = make(store)
    await fail(breaker, 5)
    clock.advance(30.0)
    with pytest.raises(BadRequestError):
        async with breaker.guard():
            raise BadRequestError("bad", status_code=422)
    assert await breaker.state() is HALF_OPEN
    async with breaker.guard():
        pass
    assert await breaker.state() is CLOSED


async def test_cancelled_guard_releases_without_counting() -> None:
    """A cancelled block is neither a failure nor a success: the probe slot comes back."""
    breaker, clock, _ = make(InMemoryBreakerStore(), BreakerPolicy(failure_threshold=1))
    await fail(breaker, 1)
    clock.advance(30.0)

    async def probe() -> None:
        async with breaker.guard():
            await asyncio.sleep(10)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await breaker.state() is HALF_OPEN
    await breaker.allow()


async def test_on_transition_sees_every_transition_in_order() -> None:
    """The hook receives closed→open→half_open→open→half_open→closed with times and reasons."""
    breaker, clock, seen = make(InMemoryBreakerStore())
    await fail(breaker, 5)
    opened_s = clock.now_s
    clock.advance(30.0)
    await breaker.allow()
    await breaker.record_failure()
    clock.advance(30.0)
    await breaker.allow()
    await breaker.record_success()
    assert [(t.old, t.new) for t in seen] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert [t.at_s - opened_s for t in seen] == pytest.approx([0.0, 30.0, 30.0, 60.0, 60.0])
    assert seen[0].reason == "5 failures within 60 s"
    assert seen[2].reason == "a probe call failed"


async def test_reset_closes_and_forgets_the_window(store: BreakerStore) -> None:
    """reset() closes an open breaker (reported as a transition) and drops counted failures."""
    breaker, _, seen = make(store)
    await fail(breaker, 5)
    await breaker.reset()
    assert await breaker.state() is CLOSED
    assert (seen[-1].old, seen[-1].new, seen[-1].reason) == (OPEN, CLOSED, "reset")
    await fail(breaker, 4)
    assert await breaker.state() is CLOSED


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (errors.ModelRetryableError("502", status_code=502), True),
        (errors.RateLimitedError("429"), True),
        (errors.ModelTimeoutError("slow"), True),
        (errors.ToolTimeoutError("slow", tool_name="db"), True),
        (errors.ToolExecutionError("boom", tool_name="db"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (KeyError("unknown bug"), True),
        (errors.BadRequestError("400", status_code=400), False),
        (errors.ContextTooLongError("413", status_code=413), False),
        (errors.ContentFilterError("refused"), False),
        (errors.ToolArgumentsError("schema", tool_name="db"), False),
        (errors.CircuitOpenError("open", name="x"), False),
        (errors.AllModelsFailedError("all", errors=[]), False),
        (errors.AuthenticationError("401", status_code=401), False),
        (errors.ConfigurationError("bad setting"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_counts_as_failure(error: BaseException, counts: bool) -> None:
    """Server errors, 429s, timeouts and unknown exceptions count; our 4xx, refusals and config do not."""
    assert counts_as_failure(error) is counts


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", True),
        ("window_s", 0.0),
        ("window_s", float("inf")),
        ("error_rate_threshold", 1.5),
        ("error_rate_threshold", float("nan")),
        ("min_calls", 0),
        ("cooldown_s", -1.0),
        ("half_open_probes", 0),
    ],
)
def test_policy_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    """An invalid policy value is a ConfigurationError whose message names the field."""
    with pytest.raises(ConfigurationError, match=f"BreakerPolicy.{field}"):
        BreakerPolicy(**{field: value})


async def test_registry_gives_one_breaker_per_name() -> None:
    """get() returns the same breaker for a name, refuses a second policy, and states() lists all."""
    registry = BreakerRegistry(clock=Clock())
    first = registry.get("openai:gpt")
    assert registry.get("openai:gpt") is first
    assert registry.get("openai:gpt", BreakerPolicy()) is first
    with pytest.raises(ConfigurationError, match="openai:gpt"):
        registry.get("openai:gpt", BreakerPolicy(failure_threshold=2))
    tool = registry.get("tool:db", BreakerPolicy(failure_threshold=1))
    await fail(tool, 1)
    assert await registry.states() == {"openai:gpt": CLOSED, "tool:db": OPEN}
    assert await BreakerRegistry().states() == {}  # no state shared between registries


# --- properties ------------------------------------------------------------------------------------

policies = st.builds(
    BreakerPolicy,
    failure_threshold=st.integers(1, 4),
    window_s=st.sampled_from([5.0, 60.0]),
    error_rate_threshold=st.none() | st.sampled_from([0.25, 0.5, 1.0]),
    min_calls=st.integers(1, 5),
    cooldown_s=st.sampled_from([1.0, 30.0]),
    half_open_probes=st.integers(1, 3),
)
# Mostly no time passes (so failures pile up and probes overlap); exact cooldowns and windows so that
# now == since + cooldown happens; now and then an arbitrary float to exercise the Redis round trip.
_JUMPS_S = [0.0] * 6 + [0.5, 1.0, 5.0, 30.0, 60.0]
advances = st.sampled_from([*_JUMPS_S, None]).flatmap(lambda s: st.floats(0, 70) if s is None else st.just(s))
E = BreakerEvent
events = st.sampled_from([E.ALLOW] * 4 + [E.FAILURE] * 4 + [E.SUCCESS] * 3 + [E.RELEASE, E.PEEK, E.RESET])
programs = st.lists(st.tuples(advances, events), min_size=10, max_size=60)


@settings(max_examples=200, deadline=None)
@given(policy=policies, program=programs)
async def test_in_memory_machine_keeps_its_invariants(
    policy: BreakerPolicy, program: list[tuple[float, BreakerEvent]]
) -> None:
    """Only legal edges; open never admits before its cooldown; never more probes out than allowed."""
    clock, seen = Clock(), list[BreakerTransition]()
    breaker = CircuitBreaker("b", policy, clock=clock, on_transition=seen.append)
    state, changed_s, in_flight = CLOSED, clock.now_s, 0  # what the transitions told us so far
    for seconds, event in program:
        clock.advance(seconds)
        now_s, before = clock.now_s, len(seen)
        if event is E.ALLOW:
            refused: CircuitOpenError | None = None
            try:
                await breaker.allow()
            except CircuitOpenError as error:
                refused = error
            if refused is not None:
                assert state is not CLOSED
                assert refused.retry_in_s is not None
                assert refused.retry_in_s >= 0
            else:
                assert state is not OPEN or now_s >= changed_s + policy.cooldown_s
                if state is HALF_OPEN:
                    if in_flight >= policy.half_open_probes:
                        # only probes silent for a whole cooldown (since the newest) may be replaced
                        assert now_s >= changed_s + policy.cooldown_s
                        in_flight = 0
                    changed_s, in_flight = now_s, in_flight + 1
        elif event is E.PEEK:
            observed = await breaker.state()
            cooled = state is OPEN and now_s >= changed_s + policy.cooldown_s
            assert observed is state or (cooled and observed is HALF_OPEN)
        else:
            await {
                E.SUCCESS: breaker.record_success,
                E.FAILURE: breaker.record_failure,
                E.RELEASE: breaker.release,
                E.RESET: breaker.reset,
            }[event]()
            in_flight = max(0, in_flight - 1)
        for change in seen[before:]:
            assert (change.old, change.new) in LEGAL_EDGES or (change.new, change.reason) == (CLOSED, "reset")
            assert change.old is state
            state, changed_s, in_flight = change.new, change.at_s, 1 if change.new is HALF_OPEN else 0
        assert in_flight <= policy.half_open_probes
        assert len(seen) - before <= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies, program=programs)
async def test_memory_and_redis_stores_agree(
    redis_client: aioredis.Redis,
    redis_prefix: str,
    policy: BreakerPolicy,
    program: list[tuple[float, BreakerEvent]],
) -> None:
    """Any sequence of events at injected times gives identical steps from both stores."""
    memory, shared = InMemoryBreakerStore(), RedisBreakerStore(redis_client, prefix=redis_prefix)
    name, clock = f"eq-{next(_names)}", Clock()
    for seconds, event in program:
        clock.advance(seconds)
        expected = await memory.apply(name, policy, event, clock.now_s)
        assert await shared.apply(name, policy, event, clock.now_s) == expected


async def test_redis_breaker_is_shared_across_processes(
    redis_client: aioredis.Redis, redis_url: str, redis_prefix: str
) -> None:
    """Five failures recorded by another OS process (with a str-decoding client) open this one's breaker."""
    child = textwrap.dedent(
        """
        import asyncio, sys
        import redis.asyncio as aioredis
        from tether.resilience import CircuitBreaker, RedisBreakerStore

        async def main(url: str, prefix: str) -> None:
            async with aioredis.Redis.from_url(url, decode_responses=True) as client:
                breaker = CircuitBreaker("provider:a", store=RedisBreakerStore(client, prefix=prefix))
                for _ in range(5):
                    await breaker.record_failure()
                print(await breaker.state())

        asyncio.run(main(*sys.argv[1:]))
        """
    )
    breaker = CircuitBreaker("provider:a", store=RedisBreakerStore(redis_client, prefix=redis_prefix))
    assert await breaker.state() is CLOSED
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child, redis_url, redis_prefix, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert (process.returncode, stdout.decode().strip()) == (0, "open")
    assert await breaker.state() is OPEN
    with pytest.raises(CircuitOpenError, match="provider:a"):
        await breaker.allow()


async def test_redis_keys_expire_when_idle(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    """Every key a breaker writes carries a TTL of twice (window + cooldown), so idle breakers vanish."""
    breaker = CircuitBreaker("tool:db", store=RedisBreakerStore(redis_client, prefix=redis_prefix))
    await breaker.record_success()
    await breaker.record_failure()
    keys = [key async for key in redis_client.scan_iter(match=glob(redis_prefix))]
    assert len(keys) == 3
    for key in keys:
        assert 0 < await redis_client.pttl(key) <= 180_000
