"""Agent: plain configuration, validated when it is built."""

from __future__ import annotations

import dataclasses

import pytest

from tether import Agent, ScriptedModel, tool
from tether.agent import DEFAULT_MAX_STEPS
from tether.errors import ConfigurationError


@tool(side_effect="read")
def lookup(order_id: str) -> str:
    """Look up an order."""
    return order_id


@tool
def refund(order_id: str) -> str:
    """Refund an order."""
    return order_id


def test_defaults() -> None:
    """An agent defaults to version 1, ten steps, three invalid turns and no tools."""
    agent = Agent(name="a")
    assert agent.version == "1"
    assert agent.max_steps == DEFAULT_MAX_STEPS == 10
    assert agent.max_invalid_tool_turns == 3
    assert agent.tools == ()
    assert agent.tool_names == []


def test_tool_lookup_by_name() -> None:
    """`tool(name)` returns the tool with that name, or None for a name the agent lacks."""
    agent = Agent(name="a", tools=[lookup, refund])
    assert agent.tool("lookup") is lookup
    assert agent.tool("refund") is refund
    assert agent.tool("delete_everything") is None
    assert agent.tool_names == ["lookup", "refund"]


def test_tools_are_frozen_into_a_tuple() -> None:
    """The tools list is copied into a tuple: mutating the caller's list changes nothing."""
    tools = [lookup]
    agent = Agent(name="a", tools=tools)
    tools.append(refund)
    assert agent.tools == (lookup,)
    assert agent.tool("refund") is None


def test_duplicate_tool_names_are_rejected() -> None:
    """Two tools with the same name are a configuration error naming the agent and the tool."""

    @tool(name="lookup")
    def other_lookup(order_id: str) -> str:
        return order_id

    with pytest.raises(ConfigurationError, match=r"agent 'support'.*two tools are named 'lookup'"):
        Agent(name="support", tools=[lookup, other_lookup])


def test_non_tool_is_rejected() -> None:
    """A plain function in `tools` is refused with a hint to decorate it."""

    def plain(x: int) -> int:
        return x

    with pytest.raises(ConfigurationError, match=r"is not a tool; decorate it with @tether.tool"):
        Agent(name="a", tools=[plain])  # type: ignore[list-item]


@pytest.mark.parametrize("max_steps", [0, -1])
def test_max_steps_below_one_is_rejected(max_steps: int) -> None:
    """max_steps < 1 is a configuration error naming the bad value."""
    with pytest.raises(ConfigurationError, match=rf"max_steps must be >= 1, not {max_steps}"):
        Agent(name="a", max_steps=max_steps)


def test_max_invalid_tool_turns_below_one_is_rejected() -> None:
    """max_invalid_tool_turns < 1 is a configuration error."""
    with pytest.raises(ConfigurationError, match="max_invalid_tool_turns"):
        Agent(name="a", max_invalid_tool_turns=0)


@pytest.mark.parametrize("name", ["", "   "])
def test_blank_name_is_rejected(name: str) -> None:
    """An agent needs a non-empty name."""
    with pytest.raises(ConfigurationError, match="non-empty name"):
        Agent(name=name)


def test_agent_is_immutable() -> None:
    """Agents are frozen configuration."""
    agent = Agent(name="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        agent.max_steps = 3  # type: ignore[misc]


def test_replace_keeps_tool_lookup_working() -> None:
    """`dataclasses.replace` builds a validated copy whose tool lookup reflects the new tools."""
    agent = Agent(name="a", tools=[lookup])
    bigger = dataclasses.replace(agent, tools=[lookup, refund], version="2")
    assert bigger.tool("refund") is refund
    assert agent.tool("refund") is None
    assert bigger.version == "2"


def test_model_may_be_a_spec_or_an_object() -> None:
    """The model field holds a spec string or a Model object as given."""
    model = ScriptedModel([{"content": "hi"}])
    assert Agent(name="a", model="openai:gpt-4o-mini").model == "openai:gpt-4o-mini"
    assert Agent(name="a", model=model).model is model
