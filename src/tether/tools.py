"""Tools: `@tool` turns a function's signature into a validated schema and declares its side effects."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import pydantic
import pydantic_core

from tether.errors import (
    ConfigurationError,
    ToolArgumentsError,
    ToolExecutionError,
    ToolNotFoundError,
    ToolTimeoutError,
)
from tether.resilience.ratelimit import RateLimit
from tether.resilience.retry import RetryPolicy
from tether.types import JsonDict, ToolDefinition

SideEffect = Literal["none", "read", "write"]
SIDE_EFFECTS: tuple[SideEffect, ...] = ("none", "read", "write")
DEFAULT_TOOL_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ApprovalRule:
    """When a person must approve a call before it runs: always, by a predicate on the validated
    arguments (`lambda a: a["amount_usd"] > 100`), or when any keyword appears in the arguments.

    Unanswered approvals expire after `expires_s` and count as denied.
    """

    when: Callable[[JsonDict], bool] | None = None
    keywords: tuple[str, ...] = ()
    expires_s: float = 24 * 3600.0
    reason: str = ""

    def requires(self, arguments: JsonDict) -> bool:
        if self.when is None and not self.keywords:
            return True
        if self.when is not None and self.when(arguments):
            return True
        text = json.dumps(arguments, ensure_ascii=False).casefold()
        return any(keyword.casefold() in text for keyword in self.keywords)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know about the call: declare a parameter annotated `ToolContext` to get it.

    `idempotency_key` is the same on every attempt of the same call (run id, step, call index), so a
    tool that passes it to its backend (e.g. a payment API's Idempotency-Key) runs effectively once.
    """

    run_id: str
    idempotency_key: str
    principal: str | None
    attempt: int
    tool_name: str
    call_id: str


class Tool:
    """A function the model may call, with its schema and its declared behaviour."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        side_effect: SideEffect = "write",
        idempotent: bool | None = None,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        rate_limit: RateLimit | None = None,
        bulkhead: str | None = None,
        max_concurrent: int = 8,
        cache_ttl_s: float | None = None,
        approval: ApprovalRule | bool | Callable[[JsonDict], bool] = False,
        compensate: Callable[..., Any] | None = None,
        counts: Mapping[str, float] | None = None,
    ) -> None:
        if side_effect not in SIDE_EFFECTS:
            raise ConfigurationError(
                f"tool {name or function.__name__!r}: side_effect must be one of "
                f"{', '.join(SIDE_EFFECTS)}, not {side_effect!r}"
            )
        if not timeout_s > 0:  # written so that NaN is refused too
            raise ConfigurationError(f"tool {name or function.__name__!r}: timeout_s must be > 0")
        self.function = function
        self.name = name or function.__name__
        # Introspection sees the tool where it was defined, under its tool name.
        self.__name__ = self.name
        self.__module__ = function.__module__
        self.description = description or _first_paragraph(inspect.getdoc(function))
        self.side_effect: SideEffect = side_effect
        # Only writes can be unsafe to repeat; a write is assumed unsafe unless declared otherwise.
        self.idempotent = idempotent if idempotent is not None else side_effect != "write"
        self.timeout_s = timeout_s
        if retry is not None and retry.max_attempts > 1 and not self.idempotent:
            raise ConfigurationError(
                f"tool {self.name!r}: a write tool that is not idempotent cannot be retried "
                "automatically (it could run twice); declare idempotent=True or drop retry"
            )
        if max_concurrent < 1:
            raise ConfigurationError(f"tool {self.name!r}: max_concurrent must be >= 1")
        if cache_ttl_s is not None and (side_effect == "write" or not cache_ttl_s > 0):
            raise ConfigurationError(
                f"tool {self.name!r}: only read or pure tools may be cached, with cache_ttl_s > 0"
            )
        self.retry = retry
        self.rate_limit = rate_limit
        self.bulkhead = bulkhead
        self.max_concurrent = max_concurrent
        self.cache_ttl_s = cache_ttl_s
        if compensate is not None and side_effect != "write":
            raise ConfigurationError(f"tool {self.name!r}: only write tools have something to compensate")
        self.compensate = compensate  # the saga undo: called with the call's arguments (and ctx)
        # Custom budget counters one call adds (e.g. {"emails": 1}), limited by BudgetPolicy custom limits.
        self.counts: dict[str, float] = dict(counts or {})
        if isinstance(approval, ApprovalRule):
            self.approval: ApprovalRule | None = approval
        elif approval is True:
            self.approval = ApprovalRule()
        elif callable(approval):
            self.approval = ApprovalRule(when=approval)
        elif approval is False:
            self.approval = None
        else:
            raise ConfigurationError(
                f"tool {self.name!r}: approval must be True, False, a predicate on the arguments or an "
                f"ApprovalRule, not {approval!r}"
            )
        self.is_async = inspect.iscoroutinefunction(function)
        self.arguments_model, self._context_parameter = _arguments_model(function, self.name)
        self.definition = ToolDefinition(
            name=self.name,
            description=self.description,
            parameters=self.arguments_model.model_json_schema(),
        )

    @property
    def uses_context(self) -> bool:
        """Whether the tool reads its ToolContext (its result may then depend on who calls)."""
        return self._context_parameter is not None

    def __repr__(self) -> str:
        return f"Tool({self.name!r}, side_effect={self.side_effect!r}, idempotent={self.idempotent})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the tool directly calls the function, so tools stay testable as plain code."""
        return self.function(*args, **kwargs)

    def validate(self, arguments: JsonDict | None, raw_arguments: str = "") -> pydantic.BaseModel:
        """Check the model's arguments; the error tells the model exactly what to fix."""
        if arguments is None:
            raise ToolArgumentsError(
                f"The arguments for tool {self.name!r} are not valid JSON: {raw_arguments[:200]!r}. "
                f"Send a JSON object matching this schema: {_schema_text(self.definition)}",
                tool_name=self.name,
            )
        try:
            return self.arguments_model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
                for err in exc.errors(include_url=False)
            )
            raise ToolArgumentsError(
                f"Invalid arguments for tool {self.name!r}: {problems}. "
                f"Expected schema: {_schema_text(self.definition)}",
                tool_name=self.name,
            ) from None

    async def invoke(
        self, arguments: pydantic.BaseModel, context: ToolContext, *, timeout_s: float | None = None
    ) -> Any:
        """Run the tool within its timeout; sync functions run in a thread so the loop never blocks."""
        timeout_s = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        kwargs = {field: getattr(arguments, field) for field in type(arguments).model_fields}
        if self._context_parameter is not None:
            kwargs[self._context_parameter] = context
        try:
            if self.is_async:
                return await asyncio.wait_for(self.function(**kwargs), timeout_s)
            call = functools.partial(self.function, **kwargs)
            # A timed-out thread cannot be killed; it finishes in the background, its result dropped.
            return await asyncio.wait_for(asyncio.to_thread(call), timeout_s)
        except TimeoutError:
            raise ToolTimeoutError(
                f"Tool {self.name!r} did not finish within {timeout_s:.3g} s; its outcome is unknown.",
                tool_name=self.name,
            ) from None
        except (ToolArgumentsError, ToolTimeoutError):
            raise
        except Exception as exc:
            raise ToolExecutionError(
                f"Tool {self.name!r} failed: {type(exc).__name__}: {exc}", tool_name=self.name
            ) from exc


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "write",
    idempotent: bool | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    retry: RetryPolicy | None = None,
    rate_limit: RateLimit | None = None,
    bulkhead: str | None = None,
    max_concurrent: int = 8,
    cache_ttl_s: float | None = None,
    approval: ApprovalRule | bool | Callable[[JsonDict], bool] = False,
    compensate: Callable[..., Any] | None = None,
    counts: Mapping[str, float] | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "write",
    idempotent: bool | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    retry: RetryPolicy | None = None,
    rate_limit: RateLimit | None = None,
    bulkhead: str | None = None,
    max_concurrent: int = 8,
    cache_ttl_s: float | None = None,
    approval: ApprovalRule | bool | Callable[[JsonDict], bool] = False,
    compensate: Callable[..., Any] | None = None,
    counts: Mapping[str, float] | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. Undeclared side effects default to `write`, not idempotent: the safe guess.

    Use `@tool(side_effect="read")` for lookups and `@tool(side_effect="write", idempotent=True)` for
    writes that pass `ctx.idempotency_key` to their backend. Resilience options: `retry` (idempotent
    tools only), `rate_limit` (a token bucket for this tool), `bulkhead` + `max_concurrent` (a
    concurrency pool shared by the tools naming the same group), `cache_ttl_s` (read tools' results
    reused for identical arguments), `approval` (True, a predicate on the arguments, or an
    `ApprovalRule`: a person approves, denies or edits the call first), `compensate` (the undo
    run when the run later fails for good), `counts` (custom budget counters, e.g. {"emails": 1}).
    Every tool has its own circuit breaker.
    """

    def wrap(fn: Callable[..., Any]) -> Tool:
        return Tool(
            fn,
            name=name,
            description=description,
            side_effect=side_effect,
            idempotent=idempotent,
            timeout_s=timeout_s,
            retry=retry,
            rate_limit=rate_limit,
            bulkhead=bulkhead,
            max_concurrent=max_concurrent,
            cache_ttl_s=cache_ttl_s,
            approval=approval,
            compensate=compensate,
            counts=counts,
        )

    return wrap(function) if function is not None else wrap


def tool_result_text(result: Any) -> str:
    """What the model sees of a tool's return value: strings as they are, anything else as JSON."""
    if isinstance(result, str):
        return result
    return json.dumps(to_jsonable(result), ensure_ascii=False)


def to_jsonable(value: Any) -> Any:
    """Turn a tool's return value (pydantic models, dataclasses, dates …) into JSON-able data."""
    return pydantic_core.to_jsonable_python(value, fallback=repr)


def unknown_tool_error(name: str, available: list[str]) -> ToolNotFoundError:
    listing = ", ".join(sorted(available)) or "(none)"
    return ToolNotFoundError(
        f"Unknown tool {name!r}. Call one of the available tools: {listing}.", tool_name=name
    )


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ")


def _schema_text(definition: ToolDefinition) -> str:
    return json.dumps(definition.parameters, separators=(",", ":"))[:1000]


def _arguments_model(
    function: Callable[..., Any], tool_name: str
) -> tuple[type[pydantic.BaseModel], str | None]:
    """Build the pydantic model of a function's parameters; find the ToolContext parameter if any."""
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:
        raise ConfigurationError(
            f"tool {tool_name!r}: cannot resolve the parameter annotations: {exc}"
        ) from exc
    fields: dict[str, Any] = {}
    context_parameter = None
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {tool_name!r}: *args/**kwargs cannot be described to a model; declare each parameter"
            )
        annotation = hints.get(parameter.name, Any)
        if annotation is ToolContext:
            context_parameter = parameter.name
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            raise ConfigurationError(
                f"tool {tool_name!r}: parameter {parameter.name!r} is positional-only; tools are "
                "called with keyword arguments, so remove the '/'"
            )
        if parameter.name.startswith("_"):
            raise ConfigurationError(
                f"tool {tool_name!r}: parameter {parameter.name!r} starts with '_', which a model "
                "cannot send; rename it"
            )
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model = pydantic.create_model(
        f"{tool_name}_arguments",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    return model, context_parameter


def _ask_person(question: str, options: list[str] | None = None) -> str:
    """Ask a person a targeted question, optionally with options to choose from; the run waits."""
    raise RuntimeError(
        "ask_person is answered by a person through the inbox, never called"
    )  # pragma: no cover


ask_person = Tool(
    _ask_person,
    name="ask_person",
    description=(
        "Ask a person (an operator) a targeted question when you should not decide alone, with the options "
        "they may choose from (e.g. ['refund', 'replace', 'decline']). The run waits durably for the answer."
    ),
    side_effect="none",
)
