"""The Model protocol: one async `request` per turn, plus `aclose` to release connections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from tether.errors import ConfigurationError
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


def secret_from_env(name: str) -> str | None:
    """A provider key from the environment: `NAME`, or the file `NAME_FILE` names (a mounted secret,
    e.g. /run/secrets/openai). Keys are never written to events, logs or traces."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None
    if not text:
        raise ConfigurationError(f"{name}_FILE={path!r} is empty")
    return text
