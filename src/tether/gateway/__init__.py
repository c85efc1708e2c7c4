"""The gateway: every model call goes through it (routing, fallbacks, breakers, retries, cost, cache)."""

from __future__ import annotations

from tether.gateway.gateway import Gateway, GatewayModel, ModelLimits, Route, RoutingRule, Spend
from tether.gateway.pricing import Price, PriceTable

__all__ = ["Gateway", "GatewayModel", "ModelLimits", "Price", "PriceTable", "Route", "RoutingRule", "Spend"]
