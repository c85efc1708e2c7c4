"""RunState: a run's conversation and progress, folded from its event log (never stored whole)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.types import EventKind, JsonDict, Message, ModelResponse, RunEvent, ToolCall, Usage


@dataclass
class RunState:
    """Everything the loop needs to continue a run, rebuilt from events on resume.

    Applying an event is O(1); the loop applies each event it appends, so a live run and a resumed
    run see exactly the same state.
    """

    run_id: str
    input: str = ""
    messages: list[Message] = field(default_factory=list)
    next_seq: int = 0
    turns: int = 0
    last_response: ModelResponse | None = None
    # results and intents of the last turn's calls, by call index
    results: dict[int, JsonDict] = field(default_factory=dict)
    intents: dict[int, JsonDict] = field(default_factory=dict)
    invalid_turns: int = 0
    usage: Usage = field(default_factory=Usage)
    completed_output: str | None = None
    resumes: int = 0
    # Time spent working (model calls, and the longest tool call of each turn, since a turn's
    # calls run concurrently): what the wall-clock limit counts, whichever workers did the work.
    active_ms: float = 0.0
    _turn_tool_ms: float = 0.0
    # People: the open question, an answer not yet acted on, budget extensions granted, and calls
    # of the last turn whose unknown outcome a person settled.
    open_escalation: JsonDict | None = None
    pending_answer: JsonDict | None = None
    grants: int = 0
    settled: set[int] = field(default_factory=set)
    approvals: dict[int, JsonDict] = field(default_factory=dict)  # decisions on the last turn's calls
    # Sagas: writes that took effect (in order), and the compensating in progress.
    succeeded_writes: list[JsonDict] = field(default_factory=list)
    compensating: JsonDict | None = None
    compensated: set[str] = field(default_factory=set)
    recovered: bool = False  # the alternative model took over (the second recovery tier)
    gate_turn: int = -1  # the turn count the confidence gate last decided (or was cleared) for
    # Guardrails: the user's input was judged; a tool output is held for a person; flags for the breaker.
    input_screened: bool = False
    guardrail_hold: JsonDict | None = None
    flags: int = 0  # permission denials and guardrail verdicts that blocked or escalated
    tool_counts: dict[str, int] = field(default_factory=dict)  # results per tool in this run
    write_count: int = 0  # write calls started (intents) in this run
    waited_ms: int = 0  # time spent waiting for people's answers (opened -> answered), summed
    reviewed_turn: int = -1  # the turn count whose final answer a reviewer sent as it is
    output_rejections: int = 0  # final answers that failed the agent's output schema
    _answer_rejected: bool = False

    @classmethod
    def fold(cls, run_id: str, events: list[RunEvent]) -> RunState:
        state = cls(run_id)
        for event in events:
            state.apply(event)
        return state

    @property
    def pending_calls(self) -> list[tuple[int, ToolCall]]:
        """Calls of the last model turn that have no recorded result yet."""
        if self.last_response is None:
            return []
        return [
            (index, call)
            for index, call in enumerate(self.last_response.tool_calls)
            if index not in self.results
        ]

    def crashed_during(self, index: int) -> bool:
        """The call's intent was recorded but neither a result nor a person's word followed."""
        intent = self.intents.get(index)
        return intent is not None and not intent.get("reset") and index not in self.results

    @property
    def final_answer(self) -> str | None:
        """The last turn's text when it asked for no tools (and was not rejected): the run's output."""
        if self.last_response is None or self.last_response.tool_calls or self._answer_rejected:
            return None
        return self.last_response.content

    def apply(self, event: RunEvent) -> None:
        self.next_seq = event.seq + 1
        kind, data = event.kind, event.data
        if kind == EventKind.RUN_STARTED:
            self.input = data["input"]
            self.messages.append(Message(role="user", content=self.input))
        elif kind == EventKind.MODEL_RESPONSE:
            response = ModelResponse.from_dict(data)
            self.turns += 1
            self.last_response = response
            self.results = {}
            self.intents = {}
            self.usage = self.usage + response.usage
            self.messages.append(response.as_message())
            self.active_ms += data.get("duration_ms", 0.0)
            self._turn_tool_ms = 0.0
            self.settled = set()
            self.approvals = {}
            self._answer_rejected = False
        elif kind == EventKind.TOOL_INTENT:
            self.intents[data["index"]] = data
            self.write_count += 1
        elif kind == EventKind.TOOL_RESULT:
            self.results[data["index"]] = data
            name = data.get("tool", "")
            self.tool_counts[name] = self.tool_counts.get(name, 0) + 1
            intent = self.intents.get(data["index"])
            if intent is not None and data.get("outcome") == "succeeded":
                self.succeeded_writes.append({**intent, "tool": data["tool"]})
            duration_ms = data.get("duration_ms", 0.0)
            if duration_ms > self._turn_tool_ms:
                self.active_ms += duration_ms - self._turn_tool_ms
                self._turn_tool_ms = duration_ms
            if self.last_response is not None and not self.pending_calls:
                self._close_turn()
        elif kind == EventKind.RUN_RESUMED:
            self.resumes += 1
        elif kind == EventKind.RUN_COMPLETED:
            self.completed_output = data.get("output")
        else:
            self._apply_people(kind, data, event.created_at_epoch_ms)

    def _apply_people(self, kind: str, data: JsonDict, at_ms: int) -> None:
        """Events of questions, answers and corrections: what people decided about the run."""
        if kind == EventKind.ESCALATION_OPENED:
            self.open_escalation = data
        elif kind == EventKind.ESCALATION_ANSWERED:
            opened_at = data.get("opened_at_epoch_ms")
            if isinstance(opened_at, int):
                self.waited_ms += max(0, at_ms - opened_at)
            opened = self.open_escalation or {}
            self.pending_answer = {
                **data,
                "reason": opened.get("reason", ""),
                "context": opened.get("context"),
            }
            self.open_escalation = None
        elif kind == EventKind.ESCALATION_APPLIED:
            self.pending_answer = None
            self.guardrail_hold = None
            if data.get("choice") == "continue":
                self.grants += 1
                self.invalid_turns = 0
            self.settled.update(data.get("settled", ()))
            if data.get("gate_cleared"):
                self.gate_turn = self.turns
            if data.get("review_sent"):
                self.reviewed_turn = self.turns
            if data.get("rejected"):
                self._answer_rejected = True
                self.messages.append(Message(role="user", content=data["rejected"]))
            for index, decision in data.get("approvals", {}).items():
                self.approvals[int(index)] = decision
        elif kind == EventKind.COMPENSATION_STARTED:
            self.compensating = data
        elif kind == EventKind.COMPENSATION_RAN and data.get("ok"):
            self.compensated.add(data["idempotency_key"])
        elif kind == EventKind.RECOVERY_ALTERNATIVE:
            self.recovered = True
            self.invalid_turns = 0
            self.grants += 1  # the alternative gets its own steps and time
            self._answer_rejected = True  # whatever the last answer was, the alternative answers anew
        elif kind == EventKind.GATE_DECISION:
            self.gate_turn = self.turns
        elif kind == EventKind.GUARDRAIL_VERDICT:
            self._apply_verdict(data)
        elif kind == EventKind.PERMISSION_DENIED:
            self.flags += 1
        elif kind == EventKind.OUTPUT_INVALID:
            self.output_rejections += 1
            self._answer_rejected = True
            self.messages.append(Message(role="user", content=data["correction"]))
        elif kind == EventKind.TOOL_RESET and data["index"] in self.intents:
            # A person confirmed the call did not happen: it may run again (attempts keep counting).
            self.intents[data["index"]] = {**self.intents[data["index"]], "reset": True}

    def _apply_verdict(self, data: JsonDict) -> None:
        if data.get("action") in ("block", "escalate"):
            self.flags += 1
        if data.get("source") == "user":
            self.input_screened = True
            if data.get("action") == "sanitise" and isinstance(data.get("sanitised"), str):
                self.input = data["sanitised"]
                self.messages[0] = Message(role="user", content=self.input)
        elif data.get("action") == "escalate":
            self.guardrail_hold = data

    def _close_turn(self) -> None:
        """All calls of the turn answered: add the tool messages in the order the model asked."""
        assert self.last_response is not None
        calls = self.last_response.tool_calls
        for index, call in enumerate(calls):
            result = self.results[index]
            self.messages.append(
                Message(role="tool", content=result["content"], tool_call_id=call.id, name=call.name)
            )
        if calls and all(self.results[i].get("invalid") for i in range(len(calls))):
            self.invalid_turns += 1
        else:
            self.invalid_turns = 0
