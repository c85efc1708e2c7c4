"""Agent: plain configuration — instructions, model, tools and limits; no behaviour hidden in it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pydantic

from tether.errors import ConfigurationError
from tether.models.base import Model
from tether.policy.gates import ConfidenceGate
from tether.policy.limits import BudgetPolicy
from tether.tools import Tool
from tether.types import ModelRequest, ModelResponse

DEFAULT_MAX_STEPS = 10
DEFAULT_MAX_WALL_CLOCK_S = 30.0  # DESIGN.md: interactive runs; counts working time, not human waits
DEFAULT_MAX_OUTPUT_TOKENS = 1024  # per model answer; what a budget reserves for it


@dataclass(frozen=True)
class Agent:
    """What an agent is. `model` is a spec (`openai:gpt-4o-mini`) or a Model; runs may override it.

    `max_steps` bounds the model turns of one run; reaching it hands the run to a person.
    `max_invalid_tool_turns` bounds consecutive turns whose every call was unknown or malformed.
    `output_type` makes the final answer structured: it must validate as JSON of that pydantic model;
    a bad answer is sent back once with the validation error, then a person decides.
    Recovery has three tiers: the model is told what to fix (invalid calls, bad output); then, if
    `recovery_model` is set, that model takes over once; then a person.
    `max_wall_clock_s` bounds the time the run spends working (model and tool calls, across workers
    and resumes; time waiting for a person does not count); None lifts it.
    `max_output_tokens` caps each model answer; budgets reserve that much answer (at the dearest model
    of the route) before each call, so no answer can cost more than was reserved for it.
    """

    name: str
    instructions: str = ""
    model: str | Model | None = None
    tools: Sequence[Tool] = ()
    version: str = "1"
    max_steps: int = DEFAULT_MAX_STEPS
    max_invalid_tool_turns: int = 3
    max_wall_clock_s: float | None = DEFAULT_MAX_WALL_CLOCK_S
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS
    budget: BudgetPolicy | None = None  # None: the runtime's policy (DESIGN.md defaults)
    recovery_model: str | Model | None = None  # the alternative path tried once before a person
    gate: ConfidenceGate | None = None  # confidence thresholds; None: act on every answer
    verifier: Callable[[ModelRequest, ModelResponse], float] | None = (
        None  # confidence when the model gives none
    )
    output_type: type[pydantic.BaseModel] | None = None  # the final answer must be JSON of this model
    tags: tuple[str, ...] = ()  # task tags the gateway's routing rules read ("simple", "hard", ...)
    # Collaborative review: a person sees the final answer before it goes out (True: every answer;
    # or a predicate on the answer) and sends it, asks the agent to revise it, or takes over.
    review: bool | Callable[[str], bool] = False
    _by_name: dict[str, Tool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ConfigurationError("an agent needs a non-empty name")
        if self.max_steps < 1:
            raise ConfigurationError(f"agent {self.name!r}: max_steps must be >= 1, not {self.max_steps}")
        if self.max_wall_clock_s is not None and not self.max_wall_clock_s > 0:
            raise ConfigurationError(f"agent {self.name!r}: max_wall_clock_s must be > 0 or None")
        if self.max_output_tokens < 1:
            raise ConfigurationError(f"agent {self.name!r}: max_output_tokens must be >= 1")
        if self.max_invalid_tool_turns < 1:
            raise ConfigurationError(f"agent {self.name!r}: max_invalid_tool_turns must be >= 1")
        by_name: dict[str, Tool] = {}
        for item in self.tools:
            if not isinstance(item, Tool):
                raise ConfigurationError(
                    f"agent {self.name!r}: {item!r} is not a tool; decorate it with @tether.tool"
                )
            if item.name in by_name:
                raise ConfigurationError(f"agent {self.name!r}: two tools are named {item.name!r}")
            by_name[item.name] = item
        object.__setattr__(self, "tools", tuple(self.tools))
        object.__setattr__(self, "_by_name", by_name)

    def tool(self, name: str) -> Tool | None:
        return self._by_name.get(name)

    @property
    def tool_names(self) -> list[str]:
        return list(self._by_name)
