"""GuardSteps: permissions on every tool call, guardrails on user input and tool output, the abuse breaker.

Each decision is an audit entry (who, what, which run, which grant, when); denials and verdicts are
events, so traces and metrics see them. A permission denial reaches the model as an actionable error; a
guardrail verdict blocks, sanitises or escalates the text it judged (see tether.policy.guardrails).
"""

from __future__ import annotations

import time

from tether.policy.behaviour import Anomaly, Baseline, BehaviourMonitor
from tether.policy.guardrails import WITHHELD, Guardrails, Verdict
from tether.policy.permissions import Decision, PermissionPolicy
from tether.runtime.steps import LoopSteps
from tether.store.base import AuditEntry, EventDraft, RunStore
from tether.tools import Tool
from tether.types import EventKind, JsonDict, RunStatus

FLAGGED = ("deny", "block", "escalate")  # decisions the abuse breaker counts
BASELINE_TTL_S = 60.0  # an agent's baseline is read from the store at most this often per process


class Baselines:
    """Each agent's tool-use baseline, read from the store's recent runs and kept a minute."""

    def __init__(self, store: RunStore, monitor: BehaviourMonitor) -> None:
        self.store = store
        self.monitor = monitor
        self._cached: dict[str, tuple[float, Baseline]] = {}

    async def of(self, agent_name: str) -> Baseline:
        now = time.monotonic()
        cached = self._cached.get(agent_name)
        if cached is not None and now - cached[0] < BASELINE_TTL_S:
            return cached[1]
        baseline = Baseline.of(await self.store.tool_usage(agent_name, runs=self.monitor.window_runs))
        if baseline.runs >= self.monitor.min_runs:  # a young agent's history is read until it matures
            self._cached[agent_name] = (now, baseline)
        return baseline


class GuardSteps(LoopSteps):
    """Mixed into RunLoop (see LoopSteps for what it provides)."""

    permissions: PermissionPolicy | None
    guardrails: Guardrails | None
    baselines: Baselines | None

    async def _unusual(self, tool: Tool, counts: dict[str, int], writes: int) -> Anomaly | None:
        """Would this call depart from the agent's usual tool use (see tether.policy.behaviour)?"""
        if self.baselines is None or self.run.shadow_of is not None:
            return None
        baseline = await self.baselines.of(self.agent.name)
        return self.baselines.monitor.judge(
            baseline, tool=tool.name, write=tool.side_effect == "write", calls=counts, writes=writes
        )

    async def _record_anomaly(self, anomaly: Anomaly) -> None:
        data: JsonDict = {
            "kind": anomaly.kind,
            "tool": anomaly.tool,
            "observed": anomaly.observed,
            "usual": anomaly.usual,
            "reason": anomaly.reason,
            "turn": self.state.turns - 1,
        }
        await self._append(EventDraft(EventKind.BEHAVIOUR_ANOMALY, data))
        await self.store.append_audit(
            [self._audit("behaviour", "escalate", anomaly.reason, tool=anomaly.tool, grant=anomaly.kind)]
        )

    def _decide(self, tool: Tool) -> Decision | None:
        if self.permissions is None:
            return None
        age_s = max(0.0, time.time() - self.run.created_at_epoch_ms / 1000)
        return self.permissions.check(
            principal=self.run.principal,
            tasks=(self.agent.name, *self.agent.tags),
            tool=tool.name,
            age_s=age_s,
        )

    def _may_call(self, tool: Tool, arguments: JsonDict | None = None) -> bool:
        """Whether the deny list and the policy would allow the call now (no audit entry: for
        skipping approvals)."""
        if self.guardrails is not None and self.guardrails.refused(tool.name, arguments or {}) is not None:
            return False
        decision = self._decide(tool)
        return decision is None or decision.allowed

    async def _permitted(self, tool: Tool, base: JsonDict, arguments: JsonDict | None = None) -> bool:
        """Check and audit one call; a denied one is recorded as its result, with the reason."""
        if self.guardrails is not None and self.guardrails.deny_calls:
            rule = self.guardrails.refused(tool.name, arguments or {})
            if rule is not None:
                reason = f"{tool.name!r} with these arguments is refused: {rule.reason}"
                await self.store.append_audit(
                    [self._audit("guardrail", "deny", reason, tool=tool.name, grant="deny_calls")]
                )
                await self._deny(tool, base, reason, None, f"Refused: {reason}. Do not retry it.")
                return False
        decision = self._decide(tool)
        if decision is None:
            return True
        await self.store.append_audit(
            [
                self._audit(
                    "permission",
                    "allow" if decision.allowed else "deny",
                    decision.reason,
                    tool=tool.name,
                    grant=decision.grant,
                )
            ]
        )
        if decision.allowed:
            return True
        await self._deny(tool, base, decision.reason, decision.grant, decision.message_for_model())
        return False

    async def _deny(self, tool: Tool, base: JsonDict, reason: str, grant: str | None, message: str) -> None:
        denied = {"tool": tool.name, "reason": reason, "grant": grant, "turn": base["turn"]}
        result = {**base, "ok": False, "outcome": "failed", "error": "permission_denied", "content": message}
        await self._append(
            EventDraft(EventKind.PERMISSION_DENIED, denied), EventDraft(EventKind.TOOL_RESULT, result)
        )

    async def _screen_input(self) -> RunStatus | None:
        """Before the first model call: the abuse breaker of the session, then the user's input."""
        if self.guardrails is None or self.state.turns > 0 or self.state.input_screened:
            return None
        if await self._abuse_tripped():
            return await self._hand_over_abuse()
        verdict = self.guardrails.screen(self.state.input, "user")
        if verdict is None:
            return None
        await self._record_verdict(verdict, "user")
        if verdict.action == "block":
            return await self._finish(
                RunStatus.FAILED,
                EventDraft(EventKind.RUN_FAILED, {"error": "input_blocked", "message": verdict.reason}),
                error=f"the input was blocked: {verdict.reason}",
            )
        if verdict.action == "escalate":
            return await self._escalate(
                "guardrail",
                f"The user's message was held for a person: {verdict.reason}.",
                verdict.event("user"),
            )
        return None  # sanitised: the fold put the cleaned text in place of the input

    async def _screen_result(self, result: JsonDict, tool: str) -> list[EventDraft]:
        """Screen a successful tool result in place; the verdict's event, if a check found something."""
        if not result.get("ok"):
            return []
        result["content"], verdict = self._screen_output(result["content"])
        if verdict is None:
            return []
        await self._audit_verdict(verdict, tool)
        return [
            EventDraft(
                EventKind.GUARDRAIL_VERDICT, {**verdict.event("tool"), "tool": tool, "turn": result["turn"]}
            )
        ]

    def _screen_output(self, content: str) -> tuple[str, Verdict | None]:
        """What the model may read of a tool's result, and the verdict if a check found something."""
        if self.guardrails is None:
            return content, None
        verdict = self.guardrails.screen(content, "tool")
        if verdict is None:
            return content, None
        if verdict.action == "sanitise" and verdict.sanitised is not None:
            return verdict.sanitised, verdict
        return WITHHELD.format(reason=verdict.reason), verdict

    async def _record_verdict(self, verdict: Verdict, source: str, *, tool: str | None = None) -> None:
        data = verdict.event("user" if source == "user" else "tool")
        if source == "user" and verdict.action == "sanitise" and verdict.sanitised is not None:
            data["sanitised"] = verdict.sanitised
        if tool is not None:
            data["tool"] = tool
        await self._append(EventDraft(EventKind.GUARDRAIL_VERDICT, data))
        await self._audit_verdict(verdict, tool)

    async def _audit_verdict(self, verdict: Verdict, tool: str | None) -> None:
        await self.store.append_audit(
            [self._audit("guardrail", verdict.action, verdict.reason, tool=tool, grant=verdict.guardrail)]
        )

    async def _abuse_tripped(self) -> bool:
        """Repeated denials, blocks and escalations in this session (or run) within the window."""
        assert self.guardrails is not None
        since = int((time.time() - self.guardrails.abuse_window_s) * 1000)
        if self.run.session_id is not None:
            entries = await self.store.list_audit(
                session_id=self.run.session_id, since_epoch_ms=since, limit=500
            )
        else:
            entries = await self.store.list_audit(run_id=self.run.id, since_epoch_ms=since, limit=500)
        return sum(entry.decision in FLAGGED for entry in entries) >= self.guardrails.abuse_threshold

    async def _hand_over_abuse(self) -> RunStatus:
        assert self.guardrails is not None
        scope = "session" if self.run.session_id is not None else "run"
        return await self._escalate(
            "abuse",
            f"Repeated refused or suspicious requests in this {scope} (at least "
            f"{self.guardrails.abuse_threshold} within {self.guardrails.abuse_window_s / 60:.0f} min): "
            "the agent no longer acts on its own here; a person takes it from here.",
        )

    def _audit(
        self, kind: str, decision: str, reason: str, *, tool: str | None = None, grant: str | None = None
    ) -> AuditEntry:
        return AuditEntry(
            kind=kind,
            decision=decision,
            run_id=self.run.id,
            agent=self.agent.name,
            reason=reason,
            principal=self.run.principal,
            tenant=self.run.tenant,
            session_id=self.run.session_id,
            tool=tool,
            grant=grant,
        )
