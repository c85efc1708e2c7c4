"""Policies that bound what runs may do: budgets (blast-radius limits, cost guardrails) and gates."""

from __future__ import annotations

from tether.policy.budget_postgres import PostgresBudgetBackend
from tether.policy.budget_stores import (
    BudgetBackend,
    InMemoryBudgetBackend,
    RedisBudgetBackend,
    SqliteBudgetBackend,
)
from tether.policy.gates import ConfidenceGate, asks_for_a_human
from tether.policy.limits import (
    Budget,
    BudgetPolicy,
    CounterUsage,
    Crossing,
    Limits,
    Reservation,
    Scope,
    ScopeLevel,
    usage_amounts,
)

__all__ = [
    "Budget",
    "BudgetBackend",
    "BudgetPolicy",
    "ConfidenceGate",
    "CounterUsage",
    "Crossing",
    "InMemoryBudgetBackend",
    "Limits",
    "PostgresBudgetBackend",
    "RedisBudgetBackend",
    "Reservation",
    "Scope",
    "ScopeLevel",
    "SqliteBudgetBackend",
    "asks_for_a_human",
    "usage_amounts",
]
