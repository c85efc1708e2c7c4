"""RunState: the conversation and progress of a run, folded from its event log."""

from __future__ import annotations

from typing import Any

from tether.runtime import RunState
from tether.types import EventKind, Message, ModelResponse, RunEvent, ToolCall, Usage

RUN = "run_1"


class Log:
    """Builds a gap-free event list the way the store would."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def add(self, kind: str, data: dict[str, Any] | None = None) -> Log:
        self.events.append(RunEvent(RUN, len(self.events), kind, 1_000 + len(self.events), data or {}))
        return self

    def started(self, input: str = "where is order A1?") -> Log:
        return self.add(EventKind.RUN_STARTED, {"agent": "support", "version": "1", "input": input})

    def response(self, *calls: ToolCall, content: str = "", usage: Usage | None = None, turn: int = 0) -> Log:
        data = ModelResponse(content=content, tool_calls=calls, usage=usage or Usage()).to_dict()
        data["turn"] = turn
        return self.add(EventKind.MODEL_RESPONSE, data)

    def result(self, index: int, content: str, *, invalid: bool = False, turn: int = 0) -> Log:
        data: dict[str, Any] = {"turn": turn, "index": index, "content": content, "ok": not invalid}
        if invalid:
            data["invalid"] = True
        return self.add(EventKind.TOOL_RESULT, data)

    def fold(self) -> RunState:
        return RunState.fold(RUN, self.events)


def call(call_id: str, name: str = "lookup", **arguments: Any) -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)


def test_started_event_gives_the_user_message() -> None:
    """run.started becomes the first user message and the run's input."""
    state = Log().started("hello").fold()
    assert state.input == "hello"
    assert state.messages == [Message(role="user", content="hello")]
    assert state.next_seq == 1
    assert state.turns == 0
    assert state.final_answer is None
    assert state.pending_calls == []


def test_tool_messages_follow_call_order_even_when_results_arrive_out_of_order() -> None:
    """Results recorded 2, 0, 1 still give tool messages in the order the model asked for the calls."""
    calls = (call("c0", order_id="A"), call("c1", "weather", city="Oslo"), call("c2", order_id="B"))
    log = Log().started().response(*calls).result(2, "B-res").result(0, "A-res").result(1, "cold")
    state = log.fold()
    assert state.messages == [
        Message(role="user", content="where is order A1?"),
        Message(role="assistant", content="", tool_calls=calls),
        Message(role="tool", content="A-res", tool_call_id="c0", name="lookup"),
        Message(role="tool", content="cold", tool_call_id="c1", name="weather"),
        Message(role="tool", content="B-res", tool_call_id="c2", name="lookup"),
    ]
    assert state.pending_calls == []
    assert state.next_seq == 5


def test_partial_results_leave_calls_pending_and_add_no_tool_message() -> None:
    """Until every call of the turn has a result, the rest are pending and no tool message is added."""
    calls = (call("c0"), call("c1"), call("c2"))
    state = Log().started().response(*calls).result(1, "one").fold()
    assert state.pending_calls == [(0, calls[0]), (2, calls[2])]
    assert [m.role for m in state.messages] == ["user", "assistant"]
    assert state.final_answer is None


def test_intents_are_recorded_by_index_and_reset_each_turn() -> None:
    """tool.intent is kept by call index for the current turn only; a new response clears it."""
    log = (
        Log()
        .started()
        .response(call("c0", "charge"))
        .add(EventKind.TOOL_INTENT, {"index": 0, "attempt": 1, "idempotency_key": "run_1:0:0"})
    )
    state = log.fold()
    assert state.intents == {0: {"index": 0, "attempt": 1, "idempotency_key": "run_1:0:0"}}
    assert state.pending_calls == [(0, call("c0", "charge"))]
    state = log.result(0, "charged").response(content="done", turn=1).fold()
    assert state.intents == {}
    assert state.results == {}


def test_final_answer_is_the_last_text_turn() -> None:
    """The final answer is the last response's text when that response asked for no tools."""
    log = Log().started().response(call("c0"), content="let me check").result(0, "shipped")
    assert log.fold().final_answer is None
    state = log.response(content="It shipped.", turn=1).fold()
    assert state.final_answer == "It shipped."
    assert state.turns == 2
    assert state.messages[-1] == Message(role="assistant", content="It shipped.")


def test_empty_final_answer_is_still_an_answer() -> None:
    """A text turn with empty content is a final answer of "" rather than "no answer"."""
    assert Log().started().response(content="").fold().final_answer == ""


def test_invalid_turns_count_consecutive_all_invalid_turns() -> None:
    """A turn whose every result is invalid counts; a turn with any valid call resets the count."""
    log = Log().started()
    log.response(call("a"), call("b")).result(0, "bad", invalid=True).result(1, "bad", invalid=True)
    assert log.fold().invalid_turns == 1
    log.response(call("c"), turn=1).result(0, "bad", invalid=True, turn=1)
    assert log.fold().invalid_turns == 2
    log.response(call("d"), call("e"), turn=2).result(0, "bad", invalid=True, turn=2).result(1, "ok", turn=2)
    assert log.fold().invalid_turns == 0
    log.response(call("f"), turn=3).result(0, "bad", invalid=True, turn=3)
    assert log.fold().invalid_turns == 1


def test_usage_adds_up_over_responses() -> None:
    """The state's usage is the sum of every response's usage."""
    log = Log().started()
    log.response(call("a"), usage=Usage(10, 2, 0.01)).result(0, "x")
    log.response(content="done", usage=Usage(20, 3, 0.02), turn=1)
    state = log.fold()
    assert state.usage.input_tokens == 30
    assert state.usage.output_tokens == 5
    assert state.usage.cost_usd is not None
    assert abs(state.usage.cost_usd - 0.03) < 1e-12


def test_resumed_and_completed_events() -> None:
    """run.resumed counts resumes; run.completed records the output."""
    log = (
        Log().started().add(EventKind.RUN_RESUMED, {"attempt": 2}).add(EventKind.RUN_RESUMED, {"attempt": 3})
    )
    state = log.add(EventKind.RUN_COMPLETED, {"output": "bye"}).fold()
    assert state.resumes == 2
    assert state.completed_output == "bye"
    assert state.next_seq == 4


def test_unrelated_events_only_advance_seq() -> None:
    """Events the state does not interpret (model.request, escalation.opened) only move next_seq."""
    state = Log().started().add(EventKind.MODEL_REQUEST, {"turn": 0}).fold()
    assert state.next_seq == 2
    assert state.turns == 0
    assert len(state.messages) == 1


def test_applying_events_one_by_one_equals_folding() -> None:
    """A live run (apply each event) and a resumed run (fold the log) reach the same state."""
    log = Log().started().response(call("a"), call("b")).result(1, "B").result(0, "A")
    log.response(content="done", usage=Usage(1, 1, None), turn=1)
    live = RunState(RUN)
    for event in log.events:
        live.apply(event)
    assert live == log.fold()
