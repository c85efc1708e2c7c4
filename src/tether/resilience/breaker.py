"""Circuit breakers: closed → open → half-open → closed, with state in memory or shared through Redis."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import enum
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from tether.errors import CircuitOpenError, ConfigurationError, ErrorClass, TetherError, classify

if TYPE_CHECKING:
    import redis.asyncio


class BreakerState(enum.StrEnum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"  # calls pass; failures are counted over the rolling window
    OPEN = "open"  # calls fail fast until the cooldown has elapsed
    HALF_OPEN = "half_open"  # a few probe calls pass; their outcome closes or reopens the breaker


class BreakerEvent(enum.StrEnum):
    """What a `BreakerStore` is asked to apply to one breaker."""

    ALLOW = "allow"  # a call wants to start: admit it or not (may take a half-open probe slot)
    SUCCESS = "success"  # an admitted call succeeded
    FAILURE = "failure"  # an admitted call failed in a way that counts against the dependency
    RELEASE = "release"  # an admitted call ended saying nothing about the dependency: free its slot
    PEEK = "peek"  # read the state, change nothing
    RESET = "reset"  # forget everything: closed, empty window


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and how it recovers. Durations are seconds."""

    failure_threshold: int = 5  # failures within window_s that open the breaker
    window_s: float = 60.0  # rolling window
    error_rate_threshold: float | None = 0.5  # also open when failures/calls >= this over the window ...
    min_calls: int = 10  # ... once at least min_calls calls were seen in the window
    cooldown_s: float = 30.0  # open -> half-open after this
    half_open_probes: int = 1  # calls let through while half-open; all must succeed to close

    def __post_init__(self) -> None:
        for field in ("failure_threshold", "min_calls", "half_open_probes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"BreakerPolicy.{field} must be an integer >= 1, not {value!r}")
        for field in ("window_s", "cooldown_s"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ConfigurationError(
                    f"BreakerPolicy.{field} must be a finite number of seconds > 0, not {value!r}"
                )
        rate = self.error_rate_threshold
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1
        ):
            raise ConfigurationError(
                f"BreakerPolicy.error_rate_threshold must be None or in (0, 1], not {rate!r}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A breaker changed state; given to `on_transition` hooks (metrics, logs, alerts)."""

    name: str
    old: BreakerState
    new: BreakerState
    at_s: float
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerRecord:
    """The stored state of one breaker, apart from its rolling window (which the store keeps)."""

    state: BreakerState = BreakerState.CLOSED
    since_s: float | None = None  # when `state` began; None for a breaker that never left closed
    probes_taken: int = 0  # half-open probe slots handed out (and not released) in this episode
    probes_ok: int = 0  # half-open probes that succeeded in this episode


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerStep:
    """What one event did to a breaker: the answer of `BreakerStore.apply`."""

    old: BreakerState
    new: BreakerState
    allowed: bool  # ALLOW only: the call may go ahead
    since_s: float | None  # when `new` began
    calls: int  # calls in the rolling window, this one included (successes only when a rate is set)
    failures: int  # failures among them


class BreakerStore(Protocol):
    """Where breaker state lives. One method, one atomic step of the machine `transition()` defines."""

    async def apply(self, name: str, policy: BreakerPolicy, event: BreakerEvent, now_s: float) -> BreakerStep:
        """Apply `event` to breaker `name` at `now_s`, atomically with respect to every other caller."""
        ...


def transition(
    record: BreakerRecord,
    policy: BreakerPolicy,
    event: BreakerEvent,
    now_s: float,
    *,
    calls: int,
    failures: int,
) -> tuple[BreakerRecord, BreakerStep]:
    """The rules, as a pure function. `calls`/`failures`: the trimmed window before this event.

    The Lua script of `RedisBreakerStore` is a line-by-line copy; a property test holds them equal.
    A store keeps the window only while closed: it appends a counted call when the breaker stays
    closed, and empties the window whenever the new state is not closed (so it is empty when it closes).
    """
    old, new, allowed = record.state, record, False
    since_s = record.since_s if record.since_s is not None else now_s
    if event is BreakerEvent.RESET:
        new, calls, failures = BreakerRecord(), 0, 0
    elif old is BreakerState.CLOSED:
        if event is BreakerEvent.ALLOW:
            allowed = True
        elif event is BreakerEvent.FAILURE:
            calls, failures = calls + 1, failures + 1
            if _should_open(policy, calls, failures):
                new = BreakerRecord(BreakerState.OPEN, now_s)
        elif event is BreakerEvent.SUCCESS and policy.error_rate_threshold is not None:
            calls += 1  # successes matter only to the error rate; without one they are not stored
    elif old is BreakerState.OPEN:
        # Results arriving while open belong to calls admitted before it opened: ignored.
        if event is BreakerEvent.ALLOW and now_s >= since_s + policy.cooldown_s:
            new, allowed = BreakerRecord(BreakerState.HALF_OPEN, now_s, probes_taken=1), True
    elif event is BreakerEvent.ALLOW:
        if record.probes_taken - record.probes_ok < policy.half_open_probes:  # probes still out
            # `since` moves to the newest probe: only when none was handed out for a whole cooldown
            # are they presumed lost (a probe handed out just now never is).
            new = dataclasses.replace(record, probes_taken=record.probes_taken + 1, since_s=now_s)
            allowed = True
        elif now_s >= since_s + policy.cooldown_s:
            # Probes silent for a whole cooldown are presumed lost (a crashed worker): start over,
            # or a breaker shared through Redis would stay half-open for ever.
            new, allowed = BreakerRecord(BreakerState.HALF_OPEN, now_s, probes_taken=1), True
    elif event is BreakerEvent.SUCCESS:
        if record.probes_ok + 1 >= policy.half_open_probes:
            new = BreakerRecord(BreakerState.CLOSED, now_s)
        else:
            new = dataclasses.replace(record, probes_ok=record.probes_ok + 1)
    elif event is BreakerEvent.FAILURE:
        new = BreakerRecord(BreakerState.OPEN, now_s)
    elif event is BreakerEvent.RELEASE:
        # A probe handed out and never made; one that already reported cannot be taken back.
        new = dataclasses.replace(record, probes_taken=max(record.probes_ok, record.probes_taken - 1))
    return new, BreakerStep(old, new.state, allowed, new.since_s, calls, failures)


def _should_open(policy: BreakerPolicy, calls: int, failures: int) -> bool:
    rate = policy.error_rate_threshold
    return failures >= policy.failure_threshold or (
        rate is not None and calls >= policy.min_calls and failures / calls >= rate
    )


class _Window:
    """Counted calls of one closed breaker, oldest first: (at_s, ok)."""

    __slots__ = ("calls", "failures")

    def __init__(self) -> None:
        self.calls: deque[tuple[float, bool]] = deque()
        self.failures = 0

    def trim(self, cutoff_s: float) -> None:
        while self.calls and self.calls[0][0] <= cutoff_s:
            if not self.calls.popleft()[1]:
                self.failures -= 1

    def add(self, at_s: float, ok: bool) -> None:
        if self.calls and at_s < self.calls[-1][0]:
            bisect.insort(self.calls, (at_s, ok))  # the wall clock stepped back; keep the order trim needs
        else:
            self.calls.append((at_s, ok))
        self.failures += not ok


class InMemoryBreakerStore:
    """Breakers of this process only: one worker, or tests."""

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}
        self._windows: dict[str, _Window] = {}

    async def apply(self, name: str, policy: BreakerPolicy, event: BreakerEvent, now_s: float) -> BreakerStep:
        # No await between read and write: atomic with respect to other tasks of the event loop.
        window = self._windows.setdefault(name, _Window())
        window.trim(now_s - policy.window_s)
        record = self._records.get(name, BreakerRecord())
        new, step = transition(
            record, policy, event, now_s, calls=len(window.calls), failures=window.failures
        )
        if new.state is not BreakerState.CLOSED or event is BreakerEvent.RESET:
            window.calls.clear()
            window.failures = 0
        elif step.calls > len(window.calls):
            window.add(now_s, event is BreakerEvent.SUCCESS)
        self._records[name] = new
        return step


# One event of one breaker, atomically: the rules of `transition()` above, in the same order.
# KEYS: 1 hash (state, since, taken, ok, seq), 2 zset of counted calls, 3 zset of failures (score at_s).
# ARGV: event, now_s, window_s, cooldown_s, failure_threshold, error_rate_threshold ('' = none),
#       min_calls, half_open_probes, ttl_ms.
# `since` is stored as the caller's own decimal string: Lua's tostring() keeps only 14 digits.
_APPLY_LUA = """
local event, now_s = ARGV[1], ARGV[2]
local now, cooldown = tonumber(now_s), tonumber(ARGV[4])
local threshold, rate = tonumber(ARGV[5]), tonumber(ARGV[6])
local min_calls, probes = tonumber(ARGV[7]), tonumber(ARGV[8])
local h = redis.call('HMGET', KEYS[1], 'state', 'since', 'taken', 'ok')
local old, since_s = h[1] or 'closed', h[2]
local taken, ok = tonumber(h[3] or '0'), tonumber(h[4] or '0')
local since = tonumber(since_s or now_s)
if event == 'reset' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return {0, old, 'closed', false, 0, 0}
end
local calls, failures = 0, 0
if old == 'closed' then  -- the window is empty in every other state
  local cutoff = now - tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', cutoff)
  calls, failures = redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3])
end
local new, allowed, dirty, counted = old, 0, false, nil
local function enter(state, first_probe)
  new, since_s, taken, ok, dirty = state, now_s, first_probe, 0, true
end
if old == 'closed' then
  if event == 'allow' then
    allowed = 1
  elseif event == 'failure' then
    calls, failures = calls + 1, failures + 1
    if failures >= threshold or (rate and calls >= min_calls and failures / calls >= rate) then
      enter('open', 0)
    else
      counted = '0'
    end
  elseif event == 'success' and rate then
    calls, counted = calls + 1, '1'
  end
elseif old == 'open' then
  if event == 'allow' and now >= since + cooldown then
    enter('half_open', 1)
    allowed = 1
  end
elseif event == 'allow' then
  if taken - ok < probes then
    taken, allowed, dirty, since_s = taken + 1, 1, true, now_s
  elseif now >= since + cooldown then
    enter('half_open', 1)
    allowed = 1
  end
elseif event == 'success' then
  if ok + 1 >= probes then enter('closed', 0) else ok, dirty = ok + 1, true end
elseif event == 'failure' then
  enter('open', 0)
elseif event == 'release' then
  taken, dirty = math.max(ok, taken - 1), true
end
if new ~= 'closed' then
  if old == 'closed' then redis.call('DEL', KEYS[2], KEYS[3]) end
elseif counted then
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  redis.call('ZADD', KEYS[2], now_s, seq)
  if counted == '0' then redis.call('ZADD', KEYS[3], now_s, seq) end
  dirty = true
end
if dirty then
  redis.call('HSET', KEYS[1], 'state', new, 'taken', taken, 'ok', ok)
  if since_s then redis.call('HSET', KEYS[1], 'since', since_s) end
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[9]) end
end
return {allowed, old, new, since_s or false, calls, failures}
"""


class RedisBreakerStore:
    """Breakers shared by every process using the same Redis; each event is one atomic Lua script.

    Times are the callers' clocks (keep workers NTP-synced). Keys of a breaker idle for twice
    (window_s + cooldown_s) expire, and an expired breaker starts closed again.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "tether:breaker:") -> None:
        self._prefix = prefix
        self._script = client.register_script(_APPLY_LUA)

    async def apply(self, name: str, policy: BreakerPolicy, event: BreakerEvent, now_s: float) -> BreakerStep:
        key = f"{self._prefix}{{{name}}}"  # one hash tag: the three keys share a Redis Cluster slot
        rate = policy.error_rate_threshold
        ttl_ms = math.ceil(2_000 * (policy.window_s + policy.cooldown_s))
        args = [event.value, repr(float(now_s)), repr(float(policy.window_s)), repr(float(policy.cooldown_s))]
        args += [str(policy.failure_threshold), "" if rate is None else repr(float(rate))]
        args += [str(policy.min_calls), str(policy.half_open_probes), str(ttl_ms)]
        # AsyncScript.__call__ is unannotated in redis-py; the script returns a 6-element array.
        reply = cast(list[Any], await self._script(keys=[key, f"{key}:calls", f"{key}:fails"], args=args))
        allowed, old, new, since_s, calls, failures = reply
        return BreakerStep(
            old=BreakerState(_text(old)),
            new=BreakerState(_text(new)),
            allowed=bool(allowed),
            since_s=None if since_s is None else float(_text(since_s)),
            calls=int(calls),
            failures=int(failures),
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value  # the client may decode replies or not


_COUNTED = frozenset({ErrorClass.RETRYABLE, ErrorClass.RATE_LIMITED, ErrorClass.TIMEOUT, ErrorClass.FATAL})


def counts_as_failure(error: BaseException) -> bool:
    """Whether `error` says the dependency is unhealthy: 5xx, 429, timeouts and unknown exceptions do.

    A 4xx is our request's fault, an unavailable error never reached the dependency, a fatal tether
    error is our configuration; a cancellation (not an `Exception`) says nothing either way.
    """
    if not isinstance(error, Exception):
        return False
    error_class = classify(error)
    if error_class is ErrorClass.FATAL and isinstance(error, TetherError):
        return False
    return error_class in _COUNTED


class CircuitBreaker:
    """One breaker, for a model or a tool. Cheap to create; its state lives in the store."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy = BreakerPolicy(),
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float] = time.time,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._store: BreakerStore = store if store is not None else InMemoryBreakerStore()
        self._clock = clock
        self._on_transition = on_transition

    async def allow(self) -> None:
        """Let a call start, or raise CircuitOpenError when open or when every half-open probe is out."""
        now_s = self._clock()
        step, _ = await self._apply(BreakerEvent.ALLOW, now_s)
        if not step.allowed:
            raise self._open_error(step, now_s)

    async def record_success(self) -> BreakerTransition | None:
        """An admitted call succeeded; returns the transition it caused, if any."""
        return (await self._apply(BreakerEvent.SUCCESS, self._clock()))[1]

    async def record_failure(self) -> BreakerTransition | None:
        """An admitted call failed in a way that counts (see `counts_as_failure`)."""
        return (await self._apply(BreakerEvent.FAILURE, self._clock()))[1]

    async def release(self) -> None:
        """An admitted call ended without a verdict (a 4xx, a cancellation): free its half-open probe slot."""
        await self._apply(BreakerEvent.RELEASE, self._clock())

    async def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has elapsed reads as half-open."""
        now_s = self._clock()
        step, _ = await self._apply(BreakerEvent.PEEK, now_s)
        if step.new is BreakerState.OPEN and _probe_at_s(step, self.policy) <= now_s:
            return BreakerState.HALF_OPEN
        return step.new

    async def reset(self) -> None:
        """Close the breaker and forget its window (an operator's override)."""
        await self._apply(BreakerEvent.RESET, self._clock())

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """`async with breaker.guard():` allow, run the block, record its outcome.

        Put any timeout *inside* the block: `asyncio.timeout()` wrapped around the guard cancels the
        block, and a cancellation does not count as a failure.
        """
        await self.allow()
        try:
            yield
        except BaseException as exc:
            if counts_as_failure(exc):
                await self.record_failure()
            else:
                await self.release()
            raise
        await self.record_success()

    async def _apply(self, event: BreakerEvent, now_s: float) -> tuple[BreakerStep, BreakerTransition | None]:
        step = await self._store.apply(self.name, self.policy, event, now_s)
        if step.old is step.new:
            return step, None
        change = BreakerTransition(self.name, step.old, step.new, now_s, self._reason(step, event))
        if self._on_transition is not None:
            self._on_transition(change)
        return step, change

    def _reason(self, step: BreakerStep, event: BreakerEvent) -> str:
        policy = self.policy
        if event is BreakerEvent.RESET:
            return "reset"
        if step.new is BreakerState.HALF_OPEN:
            return f"cooldown of {policy.cooldown_s:g} s elapsed: probing"
        if step.new is BreakerState.CLOSED:
            return f"{policy.half_open_probes} probe call(s) succeeded"
        if step.old is BreakerState.HALF_OPEN:
            return "a probe call failed"
        if step.failures >= policy.failure_threshold:
            return f"{step.failures} failures within {policy.window_s:g} s"
        return f"{step.failures} of {step.calls} calls failed within {policy.window_s:g} s"

    def _open_error(self, step: BreakerStep, now_s: float) -> CircuitOpenError:
        retry_in_s = max(0.0, _probe_at_s(step, self.policy) - now_s)
        since = _when(step.since_s)
        if step.new is BreakerState.HALF_OPEN:
            message = (
                f"circuit breaker {self.name!r} is half-open since {since} and all its "
                f"{self.policy.half_open_probes} probe call(s) are in flight; "
                f"it lets another through in at most {retry_in_s:.1f} s"
            )
        else:
            message = (
                f"circuit breaker {self.name!r} is open since {since}; "
                f"it lets a probe call through in {retry_in_s:.1f} s"
            )
        return CircuitOpenError(message, name=self.name, retry_in_s=retry_in_s)


def _probe_at_s(step: BreakerStep, policy: BreakerPolicy) -> float:
    return (step.since_s if step.since_s is not None else -math.inf) + policy.cooldown_s


def _when(at_s: float | None) -> str:
    try:
        return datetime.fromtimestamp(at_s or 0.0, tz=UTC).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # an injected clock need not be epoch seconds
        return f"t={at_s}"


class BreakerRegistry:
    """The breakers of one Runtime, by name, sharing a store, a clock and a transition hook."""

    def __init__(
        self,
        policy: BreakerPolicy = BreakerPolicy(),
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float] = time.time,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self.policy = policy
        self._store: BreakerStore = store if store is not None else InMemoryBreakerStore()
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str, policy: BreakerPolicy | None = None) -> CircuitBreaker:
        """The breaker called `name`, created on first use; asking again with another policy is an error."""
        breaker = self._breakers.get(name)
        if breaker is None:
            policy, hook = policy or self.policy, self._on_transition
            breaker = CircuitBreaker(name, policy, store=self._store, clock=self._clock, on_transition=hook)
            self._breakers[name] = breaker
        elif policy is not None and policy != breaker.policy:
            # Two policies for one shared state would make the breaker's behaviour depend on the caller.
            raise ConfigurationError(f"circuit breaker {name!r} already exists with {breaker.policy!r}")
        return breaker

    async def states(self) -> dict[str, BreakerState]:
        """The state of every breaker created so far, by name (sorted)."""
        return {name: await self._breakers[name].state() for name in sorted(self._breakers)}
