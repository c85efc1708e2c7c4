"""@tool: schema from the signature, validation errors for the model, timeouts, threads, side effects."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from typing import Annotated, Any, Literal

import pydantic
import pytest

from tether import Tool, ToolContext, tool
from tether.errors import (
    ConfigurationError,
    ToolArgumentsError,
    ToolExecutionError,
    ToolTimeoutError,
)
from tether.tools import DEFAULT_TOOL_TIMEOUT_S, tool_result_text


def context(name: str = "t", attempt: int = 1) -> ToolContext:
    return ToolContext(
        run_id="run_1",
        idempotency_key="run_1:0:0",
        principal="alice",
        attempt=attempt,
        tool_name=name,
        call_id="call_0_0",
    )


async def call(t: Tool, arguments: dict[str, Any] | None = None) -> Any:
    return await t.invoke(t.validate(arguments or {}), context(t.name))


@tool
def search_orders(
    customer: str,
    limit: int = 10,
    status: Literal["open", "closed"] = "open",
    tags: list[str] | None = None,
) -> list[str]:
    """Search a customer's orders.

    Longer explanation that the model does not need.
    """
    return [customer] * limit


# --- schema -------------------------------------------------------------------------------------


def test_schema_types_defaults_and_required() -> None:
    """The schema has each parameter's type and default; only parameters without defaults are required."""
    schema = search_orders.definition.parameters
    properties = schema["properties"]
    assert properties["customer"]["type"] == "string"
    assert properties["limit"] == {"default": 10, "title": "Limit", "type": "integer"}
    assert properties["status"]["enum"] == ["open", "closed"]
    assert properties["status"]["default"] == "open"
    assert properties["tags"]["default"] is None
    assert schema["required"] == ["customer"]
    assert schema["additionalProperties"] is False


def test_name_and_description_come_from_the_function() -> None:
    """The tool is named after the function; the docstring's first paragraph is its description."""
    assert search_orders.name == "search_orders"
    assert search_orders.definition.name == "search_orders"
    assert search_orders.description == "Search a customer's orders."
    assert search_orders.definition.description == "Search a customer's orders."


def test_explicit_name_and_description_win() -> None:
    """`@tool(name=..., description=...)` overrides what the function says."""

    @tool(name="find", description="Find things.")
    def anything(query: str) -> str:
        """Ignored docstring."""
        return query

    assert anything.name == "find"
    assert anything.definition.name == "find"
    assert anything.definition.description == "Find things."


def test_multiline_first_paragraph_is_joined() -> None:
    """A wrapped first docstring paragraph becomes one line of description."""

    @tool
    def wrapped(x: int) -> int:
        """Add one
        to a number.

        Details.
        """
        return x + 1

    assert wrapped.description == "Add one to a number."


def test_function_without_docstring_has_empty_description() -> None:
    """No docstring gives an empty description rather than None."""

    @tool
    def bare(x: int) -> int:
        return x

    assert bare.description == ""


def test_annotated_field_description_reaches_the_schema() -> None:
    """pydantic Field metadata in Annotated parameters is kept in the schema."""

    @tool
    def refund(amount_usd: Annotated[float, pydantic.Field(gt=0, description="Amount in USD")]) -> str:
        """Refund."""
        return "ok"

    prop = refund.definition.parameters["properties"]["amount_usd"]
    assert prop["description"] == "Amount in USD"
    assert prop["exclusiveMinimum"] == 0
    with pytest.raises(ToolArgumentsError, match="amount_usd"):
        refund.validate({"amount_usd": -5})


def test_tool_context_parameter_is_injected_and_not_in_schema() -> None:
    """A `ToolContext` parameter is absent from the schema and receives the call's context."""
    seen: list[ToolContext] = []

    @tool
    def charge(amount: float, ctx: ToolContext) -> str:
        """Charge."""
        seen.append(ctx)
        return "charged"

    schema = charge.definition.parameters
    assert set(schema["properties"]) == {"amount"}
    assert schema["required"] == ["amount"]
    given = context("charge", attempt=2)
    assert asyncio.run(charge.invoke(charge.validate({"amount": 3}), given)) == "charged"
    assert seen == [given]


async def test_tool_context_parameter_may_have_any_name() -> None:
    """The context parameter is found by its annotation, not its name."""
    seen: list[str] = []

    @tool
    async def send(to: str, whatever: ToolContext) -> str:
        """Send."""
        seen.append(whatever.idempotency_key)
        return to

    assert "whatever" not in send.definition.parameters["properties"]
    assert await call(send, {"to": "bob"}) == "bob"
    assert seen == ["run_1:0:0"]


def test_direct_call_runs_the_function() -> None:
    """Calling a Tool calls the plain function, so tools stay testable as ordinary code."""
    assert search_orders("c", limit=2) == ["c", "c"]


@pytest.mark.parametrize("kind", ["args", "kwargs"])
def test_variadic_parameters_are_rejected(kind: str) -> None:
    """*args and **kwargs cannot be described to a model: ConfigurationError naming the tool."""

    def with_args(*items: int) -> int:
        return 0

    def with_kwargs(**items: int) -> int:
        return 0

    with pytest.raises(ConfigurationError, match=r"with_(args|kwargs).*\*args/\*\*kwargs"):
        tool(with_args if kind == "args" else with_kwargs)


def test_unresolvable_annotation_is_a_configuration_error() -> None:
    """An annotation that cannot be resolved is reported with the tool's name."""

    def broken(x: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 0

    with pytest.raises(ConfigurationError, match="broken"):
        tool(broken)


async def test_positional_only_parameter_is_usable_or_rejected() -> None:
    """A positional-only parameter is either rejected at definition or passed correctly on invoke."""

    def double(x: int, /) -> int:
        return 2 * x

    try:
        doubled = tool(double)
    except ConfigurationError:
        return
    assert await call(doubled, {"x": 4}) == 8


async def test_underscore_parameter_is_usable_or_rejected() -> None:
    """A parameter named with a leading underscore is either described and passed, or rejected."""

    def private(_x: int) -> int:
        return _x

    try:
        t = tool(private)
    except ConfigurationError as exc:
        rejection = str(exc)
    else:
        assert "_x" in t.definition.parameters["properties"]
        assert await call(t, {"_x": 3}) == 3
        return
    assert "_x" in rejection


# --- declared behaviour -------------------------------------------------------------------------


def test_default_side_effect_is_write_not_idempotent() -> None:
    """An undeclared tool is assumed to write and to be unsafe to repeat."""
    assert search_orders.side_effect == "write"
    assert search_orders.idempotent is False
    assert search_orders.timeout_s == DEFAULT_TOOL_TIMEOUT_S


@pytest.mark.parametrize("side_effect", ["read", "none"])
def test_read_and_pure_tools_are_idempotent(side_effect: Literal["read", "none"]) -> None:
    """Tools without writes are idempotent by default."""

    @tool(side_effect=side_effect)
    def look(x: int) -> int:
        return x

    assert look.side_effect == side_effect
    assert look.idempotent is True


def test_write_tool_may_declare_itself_idempotent() -> None:
    """`idempotent=True` on a write tool is kept."""

    @tool(side_effect="write", idempotent=True)
    def pay(x: int) -> int:
        return x

    assert pay.idempotent is True


def test_invalid_side_effect_is_a_configuration_error() -> None:
    """An unknown side_effect names the tool, the bad value and the choices."""
    with pytest.raises(ConfigurationError, match=r"'oops'.*none, read, write.*'delete'"):

        @tool(name="oops", side_effect="delete")  # type: ignore[call-overload]
        def oops(x: int) -> int:
            return x


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan")])
def test_invalid_timeout_is_a_configuration_error(timeout_s: float) -> None:
    """A timeout that is not a positive number is refused at definition."""
    with pytest.raises(ConfigurationError, match="timeout_s"):

        @tool(timeout_s=timeout_s)
        def slow(x: int) -> int:
            return x


def test_repr_shows_declared_behaviour() -> None:
    """repr names the tool and its side effect and idempotency."""
    assert repr(search_orders) == "Tool('search_orders', side_effect='write', idempotent=False)"


# --- validation ---------------------------------------------------------------------------------


def test_validation_returns_typed_arguments() -> None:
    """Valid arguments are coerced to the declared types and defaults filled in."""
    arguments = search_orders.validate({"customer": "c1", "limit": "3"})
    assert arguments.customer == "c1"  # type: ignore[attr-defined]
    assert arguments.limit == 3  # type: ignore[attr-defined]
    assert arguments.status == "open"  # type: ignore[attr-defined]


def test_validation_error_names_field_value_and_schema() -> None:
    """An invalid argument: the error names the tool, the field, the bad value and includes the schema."""
    with pytest.raises(ToolArgumentsError) as info:
        search_orders.validate({"customer": "c1", "limit": "many"})
    message = str(info.value)
    assert info.value.tool_name == "search_orders"
    assert "'search_orders'" in message
    assert "limit" in message
    assert "'many'" in message
    assert "Expected schema:" in message
    schema_text = message.split("Expected schema: ", 1)[1]
    assert json.loads(schema_text) == search_orders.definition.parameters


def test_missing_required_argument_is_named() -> None:
    """A missing required argument is named in the error."""
    with pytest.raises(ToolArgumentsError, match=r"customer: Field required"):
        search_orders.validate({})


def test_extra_arguments_are_rejected() -> None:
    """Arguments the signature does not declare are refused, naming the extra field."""
    with pytest.raises(ToolArgumentsError, match=r"color: Extra inputs are not permitted \(got 'red'\)"):
        search_orders.validate({"customer": "c1", "color": "red"})


def test_unparseable_arguments_are_an_arguments_error() -> None:
    """Arguments that did not parse (None) give an error quoting the raw text and showing the schema."""
    with pytest.raises(ToolArgumentsError) as info:
        search_orders.validate(None, '{"customer": ')
    message = str(info.value)
    assert "not valid JSON" in message
    assert '{"customer": ' in message
    assert '"required":["customer"]' in message


def test_non_object_arguments_are_an_arguments_error() -> None:
    """A JSON value that is not an object (a list) is rejected as invalid arguments."""
    with pytest.raises(ToolArgumentsError, match="search_orders"):
        search_orders.validate([1, 2])  # type: ignore[arg-type]


# --- invocation ---------------------------------------------------------------------------------


async def test_async_tool_returns_its_value() -> None:
    """An async tool is awaited and its value returned."""

    @tool
    async def add(a: int, b: int = 1) -> int:
        return a + b

    assert await call(add, {"a": 2}) == 3


async def test_sync_tool_runs_in_a_thread_without_blocking_the_loop() -> None:
    """A sync tool runs off the event loop's thread: a concurrent task keeps ticking while it sleeps."""
    threads: list[int] = []

    @tool
    def blocking(seconds: float) -> str:
        threads.append(threading.get_ident())
        time.sleep(seconds)
        return "done"

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        assert await call(blocking, {"seconds": 0.3}) == "done"
    finally:
        ticking.cancel()
    assert threads
    assert threads[0] != threading.get_ident()
    assert ticks >= 5


async def test_async_tool_timeout_raises_tool_timeout() -> None:
    """An async tool that overruns timeout_s is cancelled; ToolTimeoutError says the outcome is unknown."""
    cancelled = asyncio.Event()

    @tool(timeout_s=0.05)
    async def hang() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    with pytest.raises(ToolTimeoutError, match=r"'hang' did not finish within 0.05 s.*unknown") as info:
        await call(hang)
    assert info.value.tool_name == "hang"
    assert cancelled.is_set()


async def test_sync_tool_timeout_raises_tool_timeout() -> None:
    """A sync tool that overruns timeout_s raises ToolTimeoutError without waiting for its thread."""
    finished = threading.Event()

    @tool(timeout_s=0.05)
    def hang() -> str:
        time.sleep(0.3)
        finished.set()
        return "late"

    with pytest.raises(ToolTimeoutError, match="did not finish within"):
        await call(hang)
    assert not finished.is_set()


@pytest.mark.parametrize("is_async", [True, False])
async def test_exception_becomes_execution_error(is_async: bool) -> None:
    """A tool that raises gives ToolExecutionError with the exception's type and message."""

    def failing_sync(order_id: str) -> str:
        raise ValueError(f"order {order_id} is locked")

    async def failing_async(order_id: str) -> str:
        raise ValueError(f"order {order_id} is locked")

    t = Tool(failing_async if is_async else failing_sync, name="failing")
    with pytest.raises(ToolExecutionError, match=r"'failing' failed: ValueError: order A1 is locked") as info:
        await call(t, {"order_id": "A1"})
    assert info.value.tool_name == "failing"
    assert isinstance(info.value.__cause__, ValueError)


async def test_validated_values_are_passed_as_keywords() -> None:
    """invoke passes each validated (coerced) argument by name."""
    received: dict[str, Any] = {}

    @tool
    def record(a: int, b: str = "x", c: list[int] | None = None) -> str:
        received.update(a=a, b=b, c=c)
        return "ok"

    await call(record, {"a": "5", "c": [1, "2"]})
    assert received == {"a": 5, "b": "x", "c": [1, 2]}


# --- result text --------------------------------------------------------------------------------


class Order(pydantic.BaseModel):
    id: str
    total_usd: float


@dataclasses.dataclass
class Shipment:
    id: str
    items: list[str]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ("", ""),
        ({"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
        ({"city": "Zürich"}, {"city": "Zürich"}),
        (Order(id="o1", total_usd=9.5), {"id": "o1", "total_usd": 9.5}),
        (Shipment(id="s1", items=["x"]), {"id": "s1", "items": ["x"]}),
        ([Order(id="o2", total_usd=1.0)], [{"id": "o2", "total_usd": 1.0}]),
        (None, None),
        (42, 42),
    ],
    ids=["str", "empty-str", "dict", "unicode", "pydantic", "dataclass", "list-of-models", "none", "int"],
)
def test_tool_result_text(value: Any, expected: Any) -> None:
    """Strings pass through unchanged; other values become JSON the model can read."""
    text = tool_result_text(value)
    if isinstance(value, str):
        assert text == expected
    else:
        assert json.loads(text) == expected


def test_tool_result_text_keeps_non_ascii() -> None:
    """Non-ASCII text is kept as is, not escaped (fewer tokens, readable)."""
    assert tool_result_text({"city": "Zürich"}) == '{"city": "Zürich"}'
