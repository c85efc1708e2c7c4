"""What the loop does with people: asking for approval, escalating with a question, applying answers.

Every question is durable (an `escalations` row and an `escalation.opened` event written with the
run's parking), and every answer is applied once, as events, before the run does anything else.
"""

from __future__ import annotations

import json
import secrets

from tether.errors import ToolArgumentsError
from tether.policy.gates import ConfidenceGate, asks_for_a_human, rephrasings
from tether.runtime.steps import LoopSteps
from tether.store.base import EventDraft, NewEscalation, OperationWrite
from tether.tools import ask_person
from tether.types import EventKind, JsonDict, ModelRequest, RunStatus, ToolCall

# What a person may answer, by the reason the run was handed over.
ANSWER_OPTIONS: dict[str, tuple[str, ...]] = {
    "low_confidence": ("proceed", "takeover"),
    "human_requested": ("takeover", "proceed"),
    "user_confirmation": ("confirm", "reject"),
    "unknown_outcome": ("happened", "did_not_happen", "takeover"),
    "approval": ("approve", "deny", "edit", "takeover"),
    "review": ("send", "revise", "takeover"),
}


class HumanSteps(LoopSteps):
    """Mixed into RunLoop (see LoopSteps for what it provides)."""

    async def _ask_approval(self, pending: list[tuple[int, ToolCall]]) -> RunStatus | None:
        """Park the run for a person when a pending call's tool requires approval for its arguments,
        or the call is unlike the agent's usual behaviour."""
        asks = []
        counts, writes = dict(self.state.tool_counts), self.state.write_count
        for index, call in pending:
            tool = self.agent.tool(call.name)
            if tool is None or index in self.state.approvals or not self._may_call(tool, call.arguments):
                continue
            anomaly = await self._unusual(tool, counts, writes)
            counts[tool.name] = counts.get(tool.name, 0) + 1
            writes += tool.side_effect == "write"
            if anomaly is not None:
                await self._record_anomaly(anomaly)
                asks.append(
                    (
                        {
                            "index": index,
                            "tool": tool.name,
                            "arguments": call.arguments,
                            "why": anomaly.reason,
                        },
                        tool,
                    )
                )
        asked = {ask["index"] for ask, _ in asks}
        for index, call in pending:
            if index in asked:
                continue
            tool = self.agent.tool(call.name)
            if tool is not None and tool.name == ask_person.name and index not in self.state.approvals:
                return await self._ask_question(index, call)
            if tool is None or tool.approval is None or index in self.state.approvals:
                continue
            if self.run.shadow_of is not None and tool.side_effect == "write":
                continue  # a shadow run's writes are not made, so there is nothing to approve
            if not self._may_call(tool, call.arguments):
                continue  # refused by the deny list or the policy: nobody is asked to approve it
            try:
                arguments = tool.validate(call.arguments, call.raw_arguments).model_dump()
            except ToolArgumentsError:
                continue  # reported to the model as invalid; nothing to approve
            if tool.approval.requires(arguments):
                reason = tool.approval.reason or f"{tool.name} needs a person's approval"
                asks.append(
                    ({"index": index, "tool": tool.name, "arguments": call.arguments, "why": reason}, tool)
                )
        if not asks:
            return None
        names = ", ".join(f"{ask['tool']}({json.dumps(ask['arguments'])})" for ask, _ in asks)
        expiries = [tool.approval.expires_s for _, tool in asks if tool.approval is not None]
        return await self._escalate(
            "approval",
            f"Approve, deny (with a message for the agent) or edit: {names}",
            {"calls": [ask for ask, _ in asks]},
            expires_s=min(expiries) if expiries else None,
        )

    async def _ask_question(self, index: int, call: ToolCall) -> RunStatus:
        """The agent's own targeted question (the `ask_person` tool): the person picks an option."""
        arguments = call.arguments or {}
        offered = tuple(str(option) for option in arguments.get("options") or ()) or ("answer",)
        return await self._escalate(
            "question",
            str(arguments.get("question") or "The agent asks for a decision."),
            {"calls": [{"index": index, "tool": call.name, "arguments": arguments}]},
            options=(*offered, "takeover"),
        )

    async def _apply_decision(self, index: int, call: ToolCall, base: JsonDict) -> ToolCall | None:
        """A person's approval decision: the call to run (edited arguments win), or None if denied."""
        decision = self.state.approvals.get(index, {})
        if call.name == ask_person.name and decision:
            answer = f"A person answered: {decision['choice']}"
            if decision.get("text"):
                answer += f" ({decision['text']})"
            result = {**base, "ok": True, "outcome": "succeeded", "content": answer, "by": decision.get("by")}
            await self._append(EventDraft(EventKind.TOOL_RESULT, result))
            return None
        if decision.get("choice") == "deny":
            message = decision.get("text") or "no reason given"
            denied = {**base, "ok": False, "outcome": "failed", "error": "denied", "by": decision.get("by")}
            content = f"A person denied this call: {message}. Do not retry it; adapt or explain."
            await self._append(EventDraft(EventKind.TOOL_RESULT, {**denied, "content": content}))
            return None
        if decision.get("choice") == "edit":
            edited = decision["arguments"]
            return ToolCall(call.id, call.name, edited, json.dumps(edited))
        return call

    async def _escalate(
        self,
        reason: str,
        message: str,
        context: JsonDict | None = None,
        *,
        expires_s: float | None = None,
        options: tuple[str, ...] | None = None,
    ) -> RunStatus:
        recent = [{"role": m.role, "content": m.content[:500]} for m in self.state.messages[-6:]]
        data: JsonDict = {
            "reason": reason,
            "message": message,
            "input": self.state.input,
            "steps": self.state.turns,
            "recent_messages": recent,
        }
        if context:
            data["context"] = context
        options = options or ANSWER_OPTIONS.get(reason, ("continue", "takeover"))
        escalation = NewEscalation(
            id=f"esc_{secrets.token_hex(8)}",
            reason=reason,
            message=message,
            options=options,
            context=data,
            expires_s=expires_s,
        )
        data["escalation_id"] = escalation.id
        data["options"] = list(options)
        if self.run.shadow_of is not None:
            # A shadow run never asks anyone: it ends where production would have waited for a person.
            return await self._finish(
                RunStatus.ESCALATED,
                EventDraft(EventKind.ESCALATION_OPENED, {**data, "shadow": True}),
                error=message,
            )
        return await self._finish(
            RunStatus.WAITING_HUMAN,
            EventDraft(EventKind.ESCALATION_OPENED, data),
            error=message,
            escalation=escalation,
        )

    async def _apply_answer(self, answer: JsonDict) -> RunStatus | None:
        """Act on a person's answer before anything else; the events say what it changed."""
        choice = answer["answer"]["choice"]
        text = answer["answer"].get("text") or ""
        applied = {"escalation_id": answer["escalation_id"], "choice": choice, "by": answer["by"]}
        if choice == "takeover":
            # The person answers the customer themselves: the run ends, handed over, with their text.
            await self._append(EventDraft(EventKind.ESCALATION_APPLIED, applied))
            return await self._finish(
                RunStatus.ESCALATED, EventDraft(EventKind.RUN_ESCALATED, {"output": text}), output=text
            )
        if answer["reason"] in ("low_confidence", "human_requested", "user_confirmation"):
            extra: JsonDict = {"gate_cleared": True}
            if choice == "reject" and self.state.last_response is not None:
                if self.state.last_response.tool_calls:
                    denial = {
                        "choice": "deny",
                        "text": text or "the user did not confirm",
                        "by": answer["by"],
                    }
                    extra["approvals"] = {
                        str(i): denial for i in range(len(self.state.last_response.tool_calls))
                    }
                else:
                    extra["rejected"] = f"The user did not confirm this answer: {text or 'no reason given'}"
            await self._append(EventDraft(EventKind.ESCALATION_APPLIED, {**applied, **extra}))
            return None
        if answer["reason"] == "review":
            # The agent stays primary: its draft goes out as it is, or it revises it with the comment.
            revision = f"A reviewer asks for a revision before this answer is sent: {text}"
            extra = {"review_sent": True} if choice == "send" else {"rejected": revision}
            await self._append(EventDraft(EventKind.ESCALATION_APPLIED, {**applied, **extra}))
            return None
        if answer["reason"] in ("question", "approval"):
            # Decisions on the calls the question covered: approve/deny/edit, or the chosen option.
            calls = (answer.get("context") or {}).get("calls", [])
            decision: JsonDict = {"choice": choice, "text": text, "by": answer["by"]}
            if choice == "edit":
                decision["arguments"] = json.loads(text)
            approvals = {str(call["index"]): decision for call in calls}
            await self._append(EventDraft(EventKind.ESCALATION_APPLIED, {**applied, "approvals": approvals}))
            return None
        if answer["reason"] != "unknown_outcome" or self.state.last_response is None:
            await self._append(EventDraft(EventKind.ESCALATION_APPLIED, applied))  # "continue"
            return None
        await self._settle_unknown_outcomes(choice, text, answer["by"], applied)
        return None

    async def _settle_unknown_outcomes(self, choice: str, text: str, by: str, applied: JsonDict) -> None:
        """A person said whether calls with unknown outcomes took effect: record it per call."""
        assert self.state.last_response is not None
        drafts: list[EventDraft] = []
        operations: list[OperationWrite] = []
        settled: list[int] = []
        turn = self.state.turns - 1
        for index, call in enumerate(self.state.last_response.tool_calls):
            tool = self.agent.tool(call.name)
            if tool is None or tool.idempotent:
                continue
            unknown_result = self.state.results.get(index, {}).get("outcome") == "unknown"
            crashed = self.state.crashed_during(index)
            if not (unknown_result or crashed):
                continue
            settled.append(index)
            key = f"{self.run.id}:{turn}:{index}"
            if choice == "happened" and crashed:
                content = f"A person confirmed this call took effect. {text}".strip()
                base = {"turn": turn, "index": index, "call_id": call.id, "tool": call.name}
                result = {**base, "ok": True, "outcome": "succeeded", "content": content, "by": by}
                drafts.append(EventDraft(EventKind.TOOL_RESULT, result))
                operations.append(OperationWrite(key, self.run.id, call.name, "succeeded", result={"by": by}))
            elif choice == "did_not_happen" and crashed:
                drafts.append(EventDraft(EventKind.TOOL_RESET, {"turn": turn, "index": index, "by": by}))
                operations.append(OperationWrite(key, self.run.id, call.name, "failed", result={"by": by}))
        await self._append(
            EventDraft(EventKind.ESCALATION_APPLIED, {**applied, "settled": settled}),
            *drafts,
            operations=operations,
        )

    async def _review(self, answer: str) -> RunStatus | None:
        """Collaborative review: park a final answer the agent's `review` selects until a person sends
        it or asks for a revision; an answer already sent by a reviewer goes out."""
        review = self.agent.review
        if not review or self.state.reviewed_turn == self.state.turns:
            return None
        if callable(review) and not review(answer):
            return None
        return await self._escalate(
            "review",
            "Review the agent's answer before it is sent: send it, ask for a revision (--text), "
            "or take over.",
            {"draft": answer[:4000]},
        )

    async def _rephrasings(self, gate: ConfidenceGate) -> int:
        """How many times in a row, before this run, the user's session asked what this run asks."""
        if self.run.session_id is None or gate.transfer_after_rephrasings is None:
            return 0
        limit = gate.transfer_after_rephrasings + 1
        runs = await self.store.list_runs(session_id=self.run.session_id, limit=limit + 1)
        earlier = [run.input for run in runs if run.id != self.run.id][:limit]
        return rephrasings(self.state.input, earlier, gate.rephrase_similarity)

    async def _gate(self, request: ModelRequest | None) -> RunStatus | None:
        """The confidence gate on the last model turn (once per turn), and the ask-for-a-human trigger."""
        gate, state = self.agent.gate, self.state
        if gate is None or state.gate_turn == state.turns:
            return None
        if state.turns == 0:
            state.gate_turn = 0
            if gate.transfer_on_request and asks_for_a_human(state.input):
                await self._append(EventDraft(EventKind.GATE_DECISION, {"turn": 0, "action": "transfer"}))
                return await self._escalate(
                    "human_requested", "The user asked for a person; the agent did not answer."
                )
            repeated = await self._rephrasings(gate)
            if gate.transfer_after_rephrasings is not None and repeated >= gate.transfer_after_rephrasings:
                decision = {"turn": 0, "action": "transfer", "trigger": "rephrasing", "rephrasings": repeated}
                await self._append(EventDraft(EventKind.GATE_DECISION, decision))
                return await self._escalate(
                    "human_requested",
                    f"The user has asked this {repeated + 1} times in this conversation, in other words; "
                    "a person should take it from here.",
                )
            return None
        response = state.last_response
        assert response is not None
        confidence = response.confidence
        if confidence is None and self.agent.verifier is not None and request is not None:
            confidence = self.agent.verifier(request, response)
        if confidence is None:
            return None
        action = gate.decide(confidence)
        decision = {"turn": state.turns - 1, "confidence": confidence, "action": action}
        await self._append(EventDraft(EventKind.GATE_DECISION, decision))
        if action == "escalate":
            return await self._escalate(
                "low_confidence",
                f"The model is only {confidence:.2f} confident (below {gate.confirm_at}); a person decides.",
                {"answer": response.content[:2000], "calls": [c.to_dict() for c in response.tool_calls]},
            )
        if action == "confirm":
            what = response.content or ", ".join(f"{c.name}({c.raw_arguments})" for c in response.tool_calls)
            return await self._escalate(
                "user_confirmation",
                f"Please confirm before the agent goes on: {what[:500]}",
                {"answer": response.content[:2000], "calls": [c.to_dict() for c in response.tool_calls]},
            )
        return None
