"""Model providers behind one protocol; `model_from_spec` turns `provider:name` into a Model."""

from __future__ import annotations

from tether.errors import ConfigurationError
from tether.models.base import Model
from tether.models.scripted import FunctionModel, ScriptedModel

__all__ = ["FunctionModel", "Model", "ScriptedModel", "model_from_spec"]

PROVIDERS = ("openai", "anthropic", "scripted")


def model_from_spec(spec: str) -> Model:
    """Build a model from `openai:MODEL`, `anthropic:MODEL` or `scripted:PATH`."""
    provider, sep, name = spec.partition(":")
    if not sep or not name:
        raise ConfigurationError(
            f"model spec {spec!r} must look like PROVIDER:NAME with PROVIDER one of {', '.join(PROVIDERS)}"
        )
    if provider == "scripted":
        return ScriptedModel.from_file(name)
    if provider == "openai":
        from tether.models.openai import OpenAIModel

        return OpenAIModel(name)
    if provider == "anthropic":
        from tether.models.anthropic import AnthropicModel

        return AnthropicModel(name)
    raise ConfigurationError(
        f"unknown model provider {provider!r} in {spec!r}; use one of {', '.join(PROVIDERS)}"
    )
