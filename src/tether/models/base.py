"""The Model protocol: one async `request` per turn, plus `aclose` to release connections."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from tether.types import ModelRequest, ModelResponse


@runtime_checkable
class Model(Protocol):
    """A chat model. Implementations raise `tether.errors.ModelError` subclasses, never retry."""

    @property
    def name(self) -> str:
        """The spec this model was made from, e.g. `openai:gpt-4o-mini`."""
        ...

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer one turn."""
        ...

    async def aclose(self) -> None:
        """Release connections; the model may not be used afterwards."""
        ...


def estimate_tokens(text: str) -> int:
    """A rough offline token estimate (about four characters a token) for models that report none."""
    return (len(text) + 3) // 4
