"""Agents the release CLI tests name as module:attribute targets: two versions of one desk."""

from __future__ import annotations

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, Usage


def _answer(text: str, cost: float) -> FunctionModel:
    def respond(request: ModelRequest) -> ModelResponse:
        return ModelResponse(content=text, usage=Usage(10, 10, cost))

    return FunctionModel(respond, name=f"m-{cost}")


v1 = Agent("release-desk", version="1", model=_answer("Your order shipped.", 0.001))
v2 = Agent("release-desk", version="2", model=_answer("Shipped yesterday; tracking sent.", 0.004))
