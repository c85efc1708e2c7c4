"""PriceTable: what a call cost, from genai-prices' bundled snapshot (offline) plus configured overrides."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tether.errors import ConfigurationError
from tether.types import Usage

logger = logging.getLogger("tether.gateway")

FREE_PROVIDERS = frozenset({"scripted", "function"})


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        if self.input_per_mtok < 0 or self.output_per_mtok < 0:
            raise ConfigurationError(f"prices must be >= 0, not {self}")

    def cost_usd(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok) / 1e6


class PriceTable:
    """Prices per model spec (`openai:gpt-4o-mini`). Overrides win; unknown models cost None (flagged).

    genai-prices computes with Decimal (about 0.25 ms a call here); flat per-token prices are read
    once per model and applied with float arithmetic, tiered ones fall back to the library.
    """

    def __init__(self, overrides: Mapping[str, Price | tuple[float, float]] | None = None) -> None:
        self._overrides = {
            spec: price if isinstance(price, Price) else Price(*price)
            for spec, price in (overrides or {}).items()
        }
        self._resolved: dict[str, Price | Any | None] = {}

    def cost_usd(self, spec: str, usage: Usage) -> float | None:
        """The cost of `usage` on `spec`, or None when no price is known."""
        provider, _, model = spec.partition(":")
        if provider in FREE_PROVIDERS:
            return 0.0
        override = self._overrides.get(spec)
        if override is not None:
            return override.cost_usd(usage)
        if spec not in self._resolved:
            self._resolved[spec] = _lookup(provider, model)
        price = self._resolved[spec]
        if price is None:
            return None
        if isinstance(price, Price):
            return price.cost_usd(usage)
        from genai_prices import Usage as PricesUsage

        result = price.calc_price(
            PricesUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        )
        return float(result["total_price"])

    def is_known(self, spec: str) -> bool:
        provider, _, model = spec.partition(":")
        if provider in FREE_PROVIDERS or spec in self._overrides:
            return True
        if spec not in self._resolved:
            self._resolved[spec] = _lookup(provider, model)
        return self._resolved[spec] is not None


def _lookup(provider: str, model: str) -> Price | Any | None:
    from genai_prices import Usage as PricesUsage
    from genai_prices import calc_price

    try:
        found = calc_price(
            PricesUsage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider
        )
    except LookupError:
        logger.info("no price known for %s:%s; configure one to account its cost", provider, model)
        return None
    model_price = found.model_price
    if isinstance(model_price.input_mtok, Decimal | int | float | None) and isinstance(
        model_price.output_mtok, Decimal | int | float | None
    ):
        return Price(float(model_price.input_mtok or 0), float(model_price.output_mtok or 0))
    return model_price  # tiered: let the library apply the tiers
