"""Deterministic models: ScriptedModel (turn N answers turn N), script files, FunctionModel, model specs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tether import FunctionModel, Message, Model, ModelRequest, ModelResponse, ScriptedModel, model_from_spec
from tether.errors import ConfigurationError, ScriptExhaustedError
from tether.models.scripted import load_script

SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "lookup", "arguments": {"order_id": "A1"}}, {"name": "weather"}]},
    {"content": "Your order ships today.", "confidence": 0.9},
]


def request(turn: int, content: str = "hello") -> ModelRequest:
    return ModelRequest(messages=(Message(role="user", content=content),), run_id="run_1", turn=turn)


def write_script(tmp_path: Path, turns: Any, name: str = "script.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(turns), encoding="utf-8")
    return path


async def test_turn_n_answers_request_turn_n() -> None:
    """Each request's `turn` selects the script's turn, regardless of the order of requests."""
    model = ScriptedModel(SCRIPT)
    second = await model.request(request(1))
    first = await model.request(request(0))
    assert second.content == "Your order ships today."
    assert second.tool_calls == ()
    assert [c.name for c in first.tool_calls] == ["lookup", "weather"]


async def test_tool_calls_have_turn_scoped_ids_and_json_arguments() -> None:
    """Tool calls get ids `call_<turn>_<index>`, their arguments, and the arguments as raw JSON."""
    response = await ScriptedModel(SCRIPT).request(request(0))
    lookup, weather = response.tool_calls
    assert lookup.id == "call_0_0"
    assert lookup.arguments == {"order_id": "A1"}
    assert json.loads(lookup.raw_arguments) == {"order_id": "A1"}
    assert weather.id == "call_0_1"
    assert weather.arguments == {}
    assert response.finish_reason == "tool_calls"
    assert response.content == ""


async def test_text_turn_metadata() -> None:
    """A text turn finishes with `stop`, carries the confidence, the model name and zero cost."""
    response = await ScriptedModel(SCRIPT, name="scripted:demo").request(request(1))
    assert response.finish_reason == "stop"
    assert response.confidence == 0.9
    assert response.model == "scripted:demo"
    assert response.usage.cost_usd == 0.0
    assert response.usage.output_tokens > 0


async def test_usage_estimates_prompt_tokens() -> None:
    """Input tokens are estimated from the prompt, so a longer prompt reports more tokens."""
    model = ScriptedModel(SCRIPT)
    short = await model.request(request(1, "hi"))
    long = await model.request(request(1, "hi " * 400))
    assert long.usage.input_tokens > short.usage.input_tokens


async def test_replaying_a_turn_gives_the_same_answer() -> None:
    """The model is stateless: asking for the same turn twice gives an identical response."""
    model = ScriptedModel(SCRIPT)
    assert await model.request(request(0)) == await model.request(request(0))


async def test_exhaustion_raises_script_exhausted() -> None:
    """Asking past the last turn raises ScriptExhaustedError saying how many turns the script has."""
    model = ScriptedModel(SCRIPT, name="scripted:short")
    with pytest.raises(ScriptExhaustedError, match=r"scripted:short has 2 turns; the run asked for turn 3"):
        await model.request(request(2))


def test_invalid_turn_in_constructor_is_refused() -> None:
    """A turn with neither content nor tool calls is refused when the model is built."""
    with pytest.raises(ValueError, match="content"):
        ScriptedModel([{"content": "ok"}, {"tool_calls": []}])


def test_scripted_model_satisfies_the_model_protocol() -> None:
    """ScriptedModel and FunctionModel are Models (runtime-checkable protocol)."""
    assert isinstance(ScriptedModel(SCRIPT), Model)
    assert isinstance(FunctionModel(lambda r: ModelResponse(content="x")), Model)


# --- script files -------------------------------------------------------------------------------


def test_load_script_reads_turns(tmp_path: Path) -> None:
    """A valid script file loads into its turns, in order."""
    turns = load_script(write_script(tmp_path, SCRIPT))
    assert len(turns) == 2
    assert turns[0].tool_calls is not None
    assert turns[0].tool_calls[0].name == "lookup"
    assert turns[1].content == "Your order ships today."


def test_missing_script_file(tmp_path: Path) -> None:
    """A missing file is a ConfigurationError naming the file."""
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigurationError, match=re.escape(str(missing)) + ".*does not exist"):
        load_script(missing)


def test_bad_json_script(tmp_path: Path) -> None:
    """A file that is not JSON is a ConfigurationError naming the file."""
    path = tmp_path / "bad.json"
    path.write_text("[{'content': 'single quotes'}]", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=re.escape(str(path)) + ".*not valid JSON"):
        load_script(path)


@pytest.mark.parametrize("content", [[], {"content": "not a list"}, "text"])
def test_script_must_be_a_non_empty_list(tmp_path: Path, content: Any) -> None:
    """An empty list or a non-list is a ConfigurationError naming the file."""
    path = write_script(tmp_path, content)
    with pytest.raises(ConfigurationError, match=re.escape(str(path)) + ".*non-empty JSON list"):
        load_script(path)


def test_turn_without_content_or_tool_calls(tmp_path: Path) -> None:
    """A turn with neither content nor tool calls: the error names the file and the turn index."""
    path = write_script(tmp_path, [{"content": "fine"}, {"content": "also fine"}, {"tool_calls": []}])
    with pytest.raises(
        ConfigurationError, match=re.escape(str(path)) + r".*turn 2:.*'content' or a non-empty 'tool_calls'"
    ):
        load_script(path)


@pytest.mark.parametrize("confidence", [1.5, -0.1])
def test_confidence_out_of_range(tmp_path: Path, confidence: float) -> None:
    """A confidence outside [0, 1]: the error names the file, the turn and the field."""
    path = write_script(tmp_path, [{"content": "a"}, {"content": "b", "confidence": confidence}])
    with pytest.raises(ConfigurationError, match=re.escape(str(path)) + ".*turn 1: confidence"):
        load_script(path)


def test_unknown_turn_field(tmp_path: Path) -> None:
    """A misspelt field in a turn is refused (extra fields forbidden), naming it."""
    path = write_script(tmp_path, [{"contnet": "typo"}])
    with pytest.raises(ConfigurationError, match=r"turn 0: contnet"):
        load_script(path)


def test_tool_call_without_name(tmp_path: Path) -> None:
    """A scripted tool call needs a non-empty name."""
    path = write_script(tmp_path, [{"tool_calls": [{"name": ""}]}])
    with pytest.raises(ConfigurationError, match=r"turn 0: tool_calls\.0\.name"):
        load_script(path)


def test_directory_as_script_is_a_configuration_error(tmp_path: Path) -> None:
    """A path that is a directory gives a ConfigurationError naming it, not an OSError."""
    with pytest.raises(ConfigurationError, match=re.escape(str(tmp_path))):
        load_script(tmp_path)


def test_from_file_names_the_model_after_the_file(tmp_path: Path) -> None:
    """`ScriptedModel.from_file` is named `scripted:<path>`."""
    path = write_script(tmp_path, SCRIPT)
    assert ScriptedModel.from_file(path).name == f"scripted:{path}"


# --- FunctionModel ------------------------------------------------------------------------------


async def test_function_model_calls_a_sync_function() -> None:
    """A sync function's response is returned as the turn's answer; it sees the request."""
    seen: list[int] = []

    def answer(req: ModelRequest) -> ModelResponse:
        seen.append(req.turn)
        return ModelResponse(content=f"turn {req.turn}")

    model = FunctionModel(answer, name="fn")
    assert (await model.request(request(3))).content == "turn 3"
    assert seen == [3]
    assert model.name == "fn"


async def test_function_model_awaits_an_async_function() -> None:
    """An async function is awaited."""

    async def answer(req: ModelRequest) -> ModelResponse:
        return ModelResponse(content=req.messages[-1].content.upper())

    assert (await FunctionModel(answer).request(request(0, "hey"))).content == "HEY"


# --- model specs --------------------------------------------------------------------------------


async def test_model_from_spec_scripted(tmp_path: Path) -> None:
    """`scripted:PATH` builds a ScriptedModel that answers from that file."""
    path = write_script(tmp_path, SCRIPT)
    model = model_from_spec(f"scripted:{path}")
    assert isinstance(model, ScriptedModel)
    assert model.name == f"scripted:{path}"
    assert (await model.request(request(1))).content == "Your order ships today."


def test_model_from_spec_scripted_missing_file(tmp_path: Path) -> None:
    """`scripted:` with a missing file fails with the file named."""
    with pytest.raises(ConfigurationError, match=r"missing\.json"):
        model_from_spec(f"scripted:{tmp_path / 'missing.json'}")


def test_model_from_spec_unknown_provider() -> None:
    """An unknown provider is named, with the providers that exist."""
    with pytest.raises(
        ConfigurationError, match=r"unknown model provider 'mistral'.*openai, anthropic, scripted"
    ):
        model_from_spec("mistral:large")


@pytest.mark.parametrize("spec", ["gpt-4o-mini", "openai:", "", ":gpt"])
def test_model_from_spec_malformed(spec: str) -> None:
    """A spec without PROVIDER:NAME shape is a ConfigurationError explaining the shape."""
    with pytest.raises(ConfigurationError, match=r"PROVIDER:NAME|unknown model provider"):
        model_from_spec(spec)


def test_model_from_spec_missing_colon_message() -> None:
    """A spec missing the colon says what a spec must look like."""
    with pytest.raises(ConfigurationError, match=r"'gpt-4o-mini' must look like PROVIDER:NAME"):
        model_from_spec("gpt-4o-mini")
