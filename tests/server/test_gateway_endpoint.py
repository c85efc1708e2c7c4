"""The OpenAI-compatible endpoint in front of the real Gateway: fallbacks, breakers and cost reach clients."""

from __future__ import annotations

from typing import Any

from test_openai_api import client, serving

from tether.gateway import Gateway, Price, PriceTable
from tether.models.openai import OpenAIModel
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry
from tether.resilience.retry import RetryPolicy
from tether.testing.fakellm import FakeLLMServer, Fault


def test_official_client_gets_a_fallback_answer_with_cost_and_events() -> None:
    """A dead primary is retried, then the backup answers; the client sees the cost and what happened."""
    dead = FakeLLMServer([{"content": "never"}], faults=[Fault("http_503", every=1, retry_after_s=None)])
    backup = FakeLLMServer([{"content": "from the backup"}])
    with dead.run_in_thread(), backup.run_in_thread():
        routing = Gateway(
            {"support": ["openai:primary", "openai:backup"]},
            models={
                "openai:primary": OpenAIModel("primary", base_url=dead.url, api_key="x"),
                "openai:backup": OpenAIModel("backup", base_url=backup.url, api_key="x"),
            },
            retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01),
            breakers=BreakerRegistry(BreakerPolicy(failure_threshold=4, cooldown_s=600)),
            prices=PriceTable({"openai:backup": Price(1.0, 2.0)}),
        )
        with serving(routing) as url, client(url) as openai_client:
            calls(openai_client, routing, dead, backup)


def calls(openai_client: Any, routing: Gateway, dead: FakeLLMServer, backup: FakeLLMServer) -> None:
    """One call through a dead primary, then three more that trip its breaker."""
    raw = openai_client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "from the backup"
    assert float(raw.headers["x-tether-cost-usd"]) > 0
    assert "fallback.used" in raw.headers["x-tether-events"]
    assert dead.stats["requests"] == 2
    # two more calls trip the primary's breaker (4 failures); after that it gets no traffic
    for _ in range(3):
        openai_client.chat.completions.create(
            model="support", messages=[{"role": "user", "content": "again"}]
        )
    assert dead.stats["requests"] == 4
    assert backup.stats["requests"] == 4
    assert routing.spend.by_model["openai:backup"].input_tokens > 0
