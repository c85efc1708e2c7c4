"""Runtime (start, run, wait, resume, cancel) and Worker (claims runs, holds leases, recovers crashes)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import secrets
import socket
import time
import traceback
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from tether.agent import Agent
from tether.errors import ConfigurationError, InvalidAnswerError, LeaseLostError, TetherError
from tether.gateway import Gateway
from tether.models import model_from_spec
from tether.models.base import Model
from tether.policy.behaviour import BehaviourMonitor
from tether.policy.budget_stores import BudgetBackend, InMemoryBudgetBackend, SqliteBudgetBackend
from tether.policy.guardrails import Guardrails
from tether.policy.limits import Budget, BudgetPolicy
from tether.policy.permissions import PermissionPolicy
from tether.policy.redaction import RedactionPolicy
from tether.runtime.canary import Canaries
from tether.runtime.deadletters import DeadLetter
from tether.runtime.guardrails import Baselines
from tether.runtime.guards import ToolGuards
from tether.runtime.hooks import EventSink, RunObserver, SinkObserver, notify
from tether.runtime.loop import RunLoop
from tether.runtime.shadow import ShadowReport
from tether.runtime.shadow import compare as compare_shadows
from tether.store import SqliteRunStore, store_from_url
from tether.store.base import Escalation, EventDraft, NewRun, RunStore
from tether.types import EventKind, JsonDict, Run, RunEvent, RunStatus

logger = logging.getLogger("tether.runtime")

DEFAULT_LEASE_S = 30.0
# Attempts in a row that may fail (none recording a result) before a run is dead-lettered.
DEFAULT_MAX_ATTEMPTS = 3
EXPIRY_CHECK_S = 5.0  # how often a worker answers expired questions (approvals time out as denied)


def new_run_id() -> str:
    """Time-ordered and unguessable: 12 hex digits of milliseconds, then 16 random ones."""
    return f"run_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(8)}"


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def load_target(target: str) -> Agent:
    """Import `module:attribute` naming an Agent; errors say exactly what is wrong."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute or module_name.startswith("."):
        raise ConfigurationError(f"agent target {target!r} must look like module:attribute (absolute module)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a module that fails while importing is a configuration problem too
        raise ConfigurationError(
            f"agent target {target!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigurationError(
                f"agent target {target!r}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    if not isinstance(value, Agent):
        raise ConfigurationError(f"agent target {target!r} is a {type(value).__name__}, not a tether.Agent")
    return value


class Runtime:
    """One tether runtime: a store, agents, models and event sinks. Several may share a process."""

    def __init__(
        self,
        store: RunStore | str,
        *,
        agents: Sequence[Agent] = (),
        model_factory: Callable[[str], Model] = model_from_spec,
        gateway: Gateway | None = None,
        guards: ToolGuards | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        event_sinks: Sequence[EventSink] = (),
        observers: Sequence[RunObserver] = (),
        worker_id: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        budget_policy: BudgetPolicy | None = None,
        budget_backend: BudgetBackend | None = None,
        shadows: Mapping[str, Agent] | None = None,
        permissions: PermissionPolicy | None = None,
        guardrails: Guardrails | Literal["off"] | None = None,
        behaviour: BehaviourMonitor | None = None,
        redaction: RedactionPolicy | None = None,
    ) -> None:
        """`permissions`: None lets agents use every tool they have (no policy); with a policy, deny by
        default. `guardrails`: None screens user input and tool output with `Guardrails()`' defaults
        (size limits, prompt-injection rules), "off" screens nothing. `behaviour`: hold calls unlike
        an agent's usual tool use for a person (off by default). `redaction`: mask PII and secrets in
        final answers, per tenant (off by default; traces and logs are always redacted)."""
        if lease_s <= 0:
            raise ConfigurationError(f"lease_s must be > 0, not {lease_s}")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, not {max_attempts}")
        self.store: RunStore = store_from_url(store) if isinstance(store, str) else store
        self._owns_store = isinstance(store, str)
        self._agents: dict[str, Agent] = {}  # the latest registered version of each agent
        self._versions: dict[tuple[str, str], Agent] = {}
        for agent in agents:
            self.register(agent)
        # Every model call goes through a gateway; a default one still retries and breaks circuits.
        self.gateway = gateway or Gateway(model_factory=model_factory)
        self._owns_gateway = gateway is None
        # Tools share the gateway's breaker and limiter state (one view of what is broken).
        self.guards = guards or ToolGuards(
            breakers=self.gateway.breakers, rate_limiter=self.gateway.rate_limiter
        )
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        # Budgets hold across processes: by default their counters live in the run store's file.
        self.budget_policy = budget_policy or BudgetPolicy()
        # (SQLite: the store's own file and transactions; PostgreSQL: the store's database.)
        self._owned_budget_backend: BudgetBackend | None = None
        if budget_backend is None:
            make = getattr(self.store, "budget_backend", None)
            if isinstance(self.store, SqliteRunStore):
                budget_backend = SqliteBudgetBackend(self.store.path, connection=self.store.connection)
            elif callable(make):
                budget_backend = make()
            else:
                budget_backend = InMemoryBudgetBackend()
            self._owned_budget_backend = budget_backend
        self.budget_backend = budget_backend
        # Tracing, metrics and logs plug in here (tether.observe); plain sinks see each event.
        self.observers: list[RunObserver] = [*observers, *(SinkObserver(sink) for sink in event_sinks)]
        self.worker_id = worker_id or new_worker_id()
        # Set when this process queues a run (start, answer, replay): its own idle workers wake at once
        # instead of at their next poll. Other processes' work is found by polling or NOTIFY.
        self.work_arrived = asyncio.Event()
        self.canaries = Canaries(self.store)
        self.permissions = permissions
        self.baselines = None if behaviour is None else Baselines(self.store, behaviour)
        self.redaction = redaction
        self.guardrails: Guardrails | None = (
            None if guardrails == "off" else guardrails if guardrails is not None else Guardrails()
        )
        # Shadow mode: agent name -> the candidate run beside each of its production runs.
        self.shadows: dict[str, Agent] = dict(shadows or {})
        for candidate in self.shadows.values():
            self.register(candidate)

    def register(self, agent: Agent) -> None:
        """Make `agent` known to this runtime so its runs can be executed and resumed here; register
        each version a canary routes to."""
        self._agents[agent.name] = agent
        self._versions[agent.name, agent.version] = agent

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_gateway:
            await self.gateway.aclose()
        close = getattr(self._owned_budget_backend, "close", None)
        if callable(close):
            await close()
        if self._owns_store:
            await self.store.close()

    async def start(
        self,
        agent: Agent,
        input: str,
        *,
        principal: str | None = None,
        idempotency_key: str | None = None,
        model: str | None = None,
        target: str | None = None,
        session_id: str | None = None,
        tenant: str | None = None,
    ) -> Run:
        """Enqueue a run; starting the same idempotency key again returns the first run. While the
        agent has a canary, the run may take the candidate version (sticky per principal)."""
        self.register(agent)
        agent = await self._routed(agent, principal or session_id or idempotency_key or new_run_id())
        self.model_for(agent, model)  # fail now, naming the bad spec, not later in a worker
        run, created = await self.store.create_run(
            NewRun(
                id=new_run_id(),
                agent_name=agent.name,
                agent_version=agent.version,
                agent_target=target,
                model_spec=model,
                input=input,
                principal=principal,
                idempotency_key=idempotency_key,
                session_id=session_id,
                tenant=tenant,
            )
        )
        if created:
            self.work_arrived.set()
            self._emit(run, await self.store.load_events(run.id))
            candidate = self.shadows.get(agent.name)
            if candidate is not None:
                await self._start_shadow(candidate, run)
        return run

    async def _start_shadow(self, candidate: Agent, production: Run) -> None:
        """Enqueue the candidate on the production run's input: same principal, no side effects."""
        self.register(candidate)
        shadow, created = await self.store.create_run(
            NewRun(
                id=new_run_id(),
                agent_name=candidate.name,
                agent_version=candidate.version,
                input=production.input,
                principal=production.principal,
                idempotency_key=None
                if production.idempotency_key is None
                else f"{production.idempotency_key}:shadow",
                session_id=production.session_id,
                tenant=production.tenant,
                shadow_of=production.id,
            )
        )
        if created:
            self._emit(shadow, await self.store.load_events(shadow.id))

    async def shadow_report(self, agent_name: str, *, limit: int = 200) -> ShadowReport:
        """The agent's shadow runs beside their production runs: same outcome, output, writes."""
        return await compare_shadows(self.store, agent_name, limit=limit)

    async def _routed(self, agent: Agent, key: str) -> Agent:
        version = await self.canaries.version_for(agent.name, agent.version, key)
        if version == agent.version:
            return agent
        routed = self._versions.get((agent.name, version))
        if routed is None:
            raise ConfigurationError(
                f"a canary routes runs of agent {agent.name!r} to version {version!r}, which this "
                "runtime does not know; register both versions (Runtime(agents=[...]))"
            )
        return routed

    async def run(
        self,
        agent: Agent,
        input: str,
        *,
        principal: str | None = None,
        idempotency_key: str | None = None,
        model: str | None = None,
        target: str | None = None,
        session_id: str | None = None,
        tenant: str | None = None,
    ) -> Run:
        """Start a run and execute it in this process; returns the run as it ended or paused."""
        run = await self.start(
            agent,
            input,
            principal=principal,
            idempotency_key=idempotency_key,
            model=model,
            target=target,
            session_id=session_id,
            tenant=tenant,
        )
        return await self.execute(run.id)

    async def execute(self, run_id: str) -> Run:
        """Claim `run_id` and drive it here until it ends or waits for a person; an attempt that failed
        is followed by another, until `max_attempts` failed in a row and the run is dead-lettered.
        If another live worker holds it, just report it."""
        while True:
            run = await self._claim(self.worker_id, self.max_attempts, run_id=run_id)
            if run is None:
                return await self.store.get_run(run_id)
            if run.status == RunStatus.DEAD_LETTERED:
                return run
            run = await self.drive(run, self.worker_id)
            if run.status != RunStatus.QUEUED:  # queued again: that attempt failed
                return run

    async def _claim(self, owner: str, max_attempts: int, *, run_id: str | None = None) -> Run | None:
        """Lease a run; one whose attempts are used up comes back dead-lettered instead (not leased)."""
        run = await self.store.claim_run(owner, self.lease_s, run_id=run_id, max_attempts=max_attempts)
        if run is not None and run.status == RunStatus.DEAD_LETTERED:
            logger.warning("run %s dead-lettered: %s", run.id, run.error)
            self._emit(run, (await self.store.load_events(run.id))[-1:])
        return run

    resume = execute

    async def wait(self, run_id: str, *, timeout_s: float | None = None, poll_s: float = 0.05) -> Run:
        """Poll until the run is terminal or waiting for a person."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = await self.store.get_run(run_id)
            if run.status.is_terminal or run.status == RunStatus.WAITING_HUMAN:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout_s} s")
            await asyncio.sleep(poll_s)

    async def inbox(
        self,
        *,
        status: str | None = "open",
        tenants: Collection[str | None] | None = None,
        limit: int = 100,
    ) -> list[Escalation]:
        """Questions for people, oldest first (`status=None` for answered ones too); `tenants`: only
        those of these tenants' runs."""
        return await self.store.list_escalations(status=status, tenants=tenants, limit=limit)

    async def answer(
        self, escalation_id: str, choice: str, *, text: str | None = None, by: str = "operator"
    ) -> tuple[Escalation, bool]:
        """Answer a question; the run is queued and resumes on the next worker (or `execute`).

        Answering twice applies the first answer only: the second returns `applied=False`.
        """
        escalation = await self.store.get_escalation(escalation_id)
        if choice not in escalation.options:
            raise InvalidAnswerError(
                f"escalation {escalation_id} ({escalation.reason}) takes one of "
                f"{', '.join(escalation.options)}, not {choice!r}"
            )
        if choice == "takeover" and not (text and text.strip()):
            raise InvalidAnswerError("a takeover needs the text to send to the customer (--text)")
        if choice == "revise" and not (text and text.strip()):
            raise InvalidAnswerError("a revision needs the reviewer's comment for the agent (--text)")
        if choice == "edit":
            calls = escalation.context.get("context", {}).get("calls", [])
            if len(calls) != 1:
                raise InvalidAnswerError(f"edit applies to one call; this question covers {len(calls)}")
            try:
                edited = json.loads(text or "")
            except json.JSONDecodeError as exc:
                raise InvalidAnswerError(
                    f"--edit needs the call's arguments as a JSON object: {exc}"
                ) from None
            if not isinstance(edited, dict):
                raise InvalidAnswerError("--edit needs the call's arguments as a JSON object")
        answer: JsonDict = {"choice": choice}
        if text:
            answer["text"] = text
        result = await self.store.answer_escalation(escalation_id, answer, by)
        if result[1]:
            self.work_arrived.set()
            run = await self.store.get_run(escalation.run_id)
            self._emit(run, (await self.store.load_events(escalation.run_id))[-1:])
        return result

    async def expire_escalations(self) -> int:
        """Answer questions whose time ran out (approvals: denied); returns how many."""
        now_ms = time.time_ns() // 1_000_000
        expired = await self.store.expired_escalations(now_ms)
        for escalation in expired:
            choice = "deny" if "deny" in escalation.options else "takeover"
            text = "the approval expired before anyone answered"
            await self.answer(escalation.id, choice, text=text, by="expiry")
        return len(expired)

    async def dead_letters(
        self, *, tenants: Collection[str | None] | None = None, limit: int = 100
    ) -> list[Run]:
        """Runs parked after `max_attempts` attempts failed in a row, newest first."""
        return await self.store.list_runs(status=RunStatus.DEAD_LETTERED, tenants=tenants, limit=limit)

    async def dead_letter(self, run_id: str) -> DeadLetter:
        """A run laid out for triage: attempts, decisions, tool outputs, calls left without a result."""
        run = await self.store.get_run(run_id)
        return DeadLetter.from_events(run, await self.store.load_events(run_id))

    async def replay(self, run_id: str, *, by: str = "operator") -> tuple[Run, bool]:
        """Queue a dead-lettered run again (after the fix) with fresh attempts; a worker or `execute`
        resumes it from its last recorded step. A run that is not dead-lettered is left as it is and
        `applied` is False."""
        before = await self.store.get_run(run_id)
        run, applied = await self.store.replay(run_id, by)
        if applied:
            self.work_arrived.set()
            self._emit(run, await self.store.load_events(run_id, after_seq=before.event_count - 1))
        return run, applied

    async def cancel(
        self, run_id: str, reason: str = "cancelled by request", *, compensate: bool = True
    ) -> Run:
        """Cancel a run that has not ended; its worker stops at its next write. When writes of the run
        took effect (and `compensate`), their compensations run first, in reverse: here at once if this
        runtime knows the run's agent, else by the next worker; the run then ends cancelled. A
        dead-lettered run is discarded the same way (see `discard`)."""
        before = await self.store.get_run(run_id)
        run = await self.store.cancel(run_id, reason, compensate=compensate)
        if run.event_count > before.event_count:
            self._emit(run, await self.store.load_events(run_id, after_seq=before.event_count - 1))
        if run.status == RunStatus.QUEUED and self._knows(run):
            run = await self.execute(run_id)
        return run

    async def discard(self, run_id: str, reason: str = "discarded from the dead-letter queue") -> Run:
        """Give up on a dead-lettered run for good: undo its writes that declared `compensate`, then
        end it cancelled. A run that is not dead-lettered is left as it is."""
        run = await self.store.get_run(run_id)
        if run.status != RunStatus.DEAD_LETTERED:
            return run
        return await self.cancel(run_id, reason)

    def _knows(self, run: Run) -> bool:
        return run.agent_name in self._agents or run.agent_target is not None

    def _emit(self, run: Run, events: list[RunEvent]) -> None:
        notify(self.observers, run, events)

    async def events(self, run_id: str) -> list[RunEvent]:
        return await self.store.load_events(run_id)

    def agent_for(self, run: Run) -> Agent:
        agent = self._versions.get((run.agent_name, run.agent_version)) or self._agents.get(run.agent_name)
        if agent is not None:
            return agent
        if run.agent_target:
            agent = load_target(run.agent_target)
            self.register(agent)
            return agent
        raise ConfigurationError(
            f"run {run.id} needs agent {run.agent_name!r}, which this runtime does not know; "
            "register it with Runtime(agents=[...]) or start runs with a module:attribute target"
        )

    def model_for(self, agent: Agent, spec: str | None = None, *, recovery: bool = False) -> Model:
        """The model a run of `agent` uses: `spec` (a route or model spec) or the agent's own."""
        chosen = spec if spec is not None else (agent.recovery_model if recovery else agent.model)
        if chosen is None:
            raise ConfigurationError(
                f"agent {agent.name!r} has no model; set Agent(model=...) or pass --model"
            )
        return self.gateway.model_for(chosen)

    async def drive(self, run: Run, owner: str) -> Run:
        """Execute a run this owner has leased, heartbeating until it ends, pauses or is lost."""
        events = await self.store.load_events(run.id)
        try:
            agent = self.agent_for(run)
            model = self.model_for(agent, run.model_spec)
        except TetherError as exc:
            await self._fail(run, owner, len(events), exc)
            return await self.store.get_run(run.id)
        loop = RunLoop(
            store=self.store,
            agent=agent,
            model=model,
            run=run,
            owner=owner,
            events=events,
            observers=self.observers,
            guards=self.guards,
            recovery_model=None
            if agent.recovery_model is None
            else self.model_for(agent, None, recovery=True),
            budget=Budget(agent.budget or self.budget_policy, self.budget_backend),
            permissions=self.permissions,
            guardrails=self.guardrails,
            baselines=self.baselines,
            redaction=self.redaction,
        )
        task = asyncio.create_task(loop.execute(), name=f"tether-run-{run.id}")
        heartbeat = asyncio.create_task(self._heartbeat(run.id, owner, task))
        try:
            await task
        except LeaseLostError as exc:
            logger.warning("run %s: %s; stopping work on it", run.id, exc)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            logger.warning("run %s: lease lost; stopped work on it", run.id)
        except Exception as exc:
            # A bug or an outage, not an agent error (the loop ends those itself): this attempt failed.
            logger.exception("run %s crashed in attempt %d", run.id, run.attempts)
            await self._attempt_failed(run, owner, loop.state.next_seq, exc)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        ended = await self.store.get_run(run.id)
        await self._judge_canary(ended)
        return ended

    async def _judge_canary(self, run: Run) -> None:
        """A candidate's run settled: judge its canary now, so a bad version is rolled back early."""
        if run.status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.CANCELLED):
            return
        canary = await self.canaries.current(run.agent_name)
        if (
            canary is not None
            and canary.status == "running"
            and run.agent_version == canary.candidate_version
        ):
            report = await self.canaries.check(run.agent_name)
            if report is not None and report.verdict == "rolled_back":
                logger.warning("canary %s rolled back: %s", canary.id, report.canary.reason)

    async def _heartbeat(self, run_id: str, owner: str, task: asyncio.Task[RunStatus]) -> None:
        interval_s = self.lease_s / 3
        while not task.done():
            await asyncio.sleep(interval_s)
            if not await self.store.heartbeat(run_id, owner, self.lease_s):
                task.cancel()
                return

    async def _attempt_failed(self, run: Run, owner: str, seq: int, error: BaseException) -> None:
        """Record the exception and queue the run for another attempt; once `max_attempts` failed in
        a row, the claim that would start the next one dead-letters the run instead."""
        data: JsonDict = {
            "attempt": run.attempts,
            "worker": owner,
            "error": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error))[-4000:],
        }
        with contextlib.suppress(LeaseLostError):
            event = await self.store.finish(
                run.id,
                owner,
                seq,
                RunStatus.QUEUED,
                EventDraft(EventKind.RUN_ATTEMPT_FAILED, data),
                error=f"{type(error).__name__}: {error}",
            )
            self._emit(run, [event])

    async def _fail(self, run: Run, owner: str, seq: int, error: BaseException) -> None:
        with contextlib.suppress(LeaseLostError):
            event = await self.store.finish(
                run.id,
                owner,
                seq,
                RunStatus.FAILED,
                EventDraft(
                    EventKind.RUN_FAILED,
                    {"error": type(error).__name__, "message": str(error), "error_class": "fatal"},
                ),
                error=f"{type(error).__name__}: {error}",
            )
            self._emit(run, [event])


@dataclass
class WorkerStats:
    claimed: int = 0
    finished: int = 0
    dead_lettered: int = 0  # claims that found a run's attempts used up and parked it instead
    handed_back: int = 0  # in-flight runs interrupted at shutdown (after drain_s) and released


IDLE_WAIT_S = 1.0  # longest an idle worker on a notifying store sleeps before looking for work itself


class Worker:
    """Claims queued runs and runs whose lease expired, up to `concurrency` at a time; a run whose last
    `max_attempts` (default: the runtime's) attempts failed in a row is dead-lettered by the claim."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int = 4,
        poll_s: float = 0.05,
        max_attempts: int | None = None,
        worker_id: str | None = None,
        drain_s: float | None = None,
    ) -> None:
        """`worker_id`: the lease owner this worker claims as (default: the runtime's; give each of
        several workers in one process its own). `drain_s`: on stop, how long in-flight runs may take to
        finish before they are interrupted and handed back (lease released, queued for any worker to
        resume from its last recorded step); None waits for them however long it takes."""
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, not {concurrency}")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, not {max_attempts}")
        if drain_s is not None and drain_s < 0:
            raise ConfigurationError(f"drain_s must be >= 0 (or None to wait), not {drain_s}")
        self.runtime = runtime
        self.concurrency = concurrency
        self.max_attempts = runtime.max_attempts if max_attempts is None else max_attempts
        self.poll_s = poll_s
        self.worker_id = worker_id or runtime.worker_id
        self.drain_s = drain_s
        self.stats = WorkerStats()
        self._listening: asyncio.Future[bool] | None = None

    async def run(self, *, exit_when_idle: bool = False, stop: asyncio.Event | None = None) -> WorkerStats:
        """Work until `stop` is set, or until no queued or running run is left (`exit_when_idle`)."""
        stop = stop or asyncio.Event()
        active: dict[asyncio.Task[Run], str] = {}
        store, owner = self.runtime.store, self.worker_id
        next_expiry_s = 0.0
        try:
            while not stop.is_set():
                if len(active) < self.concurrency:
                    self.runtime.work_arrived.clear()  # before looking: what arrives after wakes us
                    run = await self.runtime._claim(owner, self.max_attempts)
                    if run is not None and run.status == RunStatus.DEAD_LETTERED:
                        self.stats.dead_lettered += 1
                        continue
                    if run is not None:
                        self.stats.claimed += 1
                        task = asyncio.create_task(self.runtime.drive(run, owner))
                        active[task] = run.id
                        task.add_done_callback(self._done(active))
                        continue
                if time.monotonic() >= next_expiry_s:
                    await self.runtime.expire_escalations()
                    next_expiry_s = time.monotonic() + EXPIRY_CHECK_S
                if exit_when_idle and not active and await store.count_unfinished() == 0:
                    break
                await self._pause(active, stop)
        finally:
            # Graceful stop: in-flight runs finish (within drain_s) or are handed back; a killed
            # worker's runs are reclaimed when their leases expire.
            await self._drain(active, owner)
            if self._listening is not None:
                await asyncio.gather(self._listening, return_exceptions=True)
        return self.stats

    async def _drain(self, active: dict[asyncio.Task[Run], str], owner: str) -> None:
        if not active:
            return
        running = dict(active)
        if self.drain_s is None:
            await asyncio.gather(*running, return_exceptions=True)
            return
        _, late = await asyncio.wait(running, timeout=self.drain_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in late:
            await self.runtime.store.release(running[task], owner)
            self.stats.handed_back += 1
            logger.warning("run %s handed back at shutdown; another worker resumes it", running[task])

    def _done(self, active: dict[asyncio.Task[Run], str]) -> Callable[[asyncio.Task[Run]], None]:
        def callback(task: asyncio.Task[Run]) -> None:
            active.pop(task, None)
            self.stats.finished += 1

        return callback

    async def _pause(self, active: dict[asyncio.Task[Run], str], stop: asyncio.Event) -> None:
        """Sleep until the poll interval passes, a run finishes or a stop is asked for. On a store that
        announces claimable runs (PostgreSQL's LISTEN/NOTIFY), an idle worker sleeps until told, or
        `IDLE_WAIT_S` at most (expired leases and question expiries announce nothing)."""
        wake = getattr(self.runtime.store, "wait_for_work", None)
        if wake is not None and len(active) < self.concurrency:
            if self._listening is not None and self._listening.done() and self._listening.exception():
                logger.warning("waiting for work failed (polling instead): %s", self._listening.exception())
            if self._listening is None or self._listening.done():
                # Never cancelled: it ends by itself within IDLE_WAIT_S, and is awaited at the end.
                self._listening = asyncio.ensure_future(wake(IDLE_WAIT_S))
            stopping = asyncio.ensure_future(stop.wait())
            arrived = asyncio.ensure_future(self.runtime.work_arrived.wait())
            await asyncio.wait(
                {stopping, arrived, self._listening, *active},
                timeout=IDLE_WAIT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            stopping.cancel()
            arrived.cancel()
            return
        waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
        if active and len(active) >= self.concurrency:
            waiters |= set(active)  # type: ignore[arg-type]
        else:
            waiters.add(asyncio.ensure_future(self.runtime.work_arrived.wait()))
        await asyncio.wait(waiters, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            if waiter not in active and not waiter.done():
                waiter.cancel()
