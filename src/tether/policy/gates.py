"""Confidence gates: act above 0.85, ask the user to confirm from 0.60, hand to a person below."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from tether.errors import ConfigurationError

GateAction = Literal["act", "confirm", "escalate"]

# The secondary trigger: a user asking for a person gets one at once, whatever the confidence.
_HUMAN_REQUEST = re.compile(
    r"\b(human|real person|a person|someone real|representative|operator|live agent|talk to (an? )?agent|"
    r"speak (to|with) (an? )?(agent|manager|someone))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ConfidenceGate:
    """Thresholds for one agent (route); the confidence comes from the model or a verifier hook."""

    act_at: float = 0.85
    confirm_at: float = 0.60
    transfer_on_request: bool = True  # "let me talk to a human" skips the agent entirely

    def __post_init__(self) -> None:
        if not 0 <= self.confirm_at <= self.act_at <= 1:
            raise ConfigurationError(
                f"ConfidenceGate needs 0 <= confirm_at <= act_at <= 1, not {self.confirm_at}, {self.act_at}"
            )

    def decide(self, confidence: float) -> GateAction:
        if confidence >= self.act_at:
            return "act"
        if confidence >= self.confirm_at:
            return "confirm"
        return "escalate"


def asks_for_a_human(text: str) -> bool:
    """Whether the user asks to be handed to a person."""
    return _HUMAN_REQUEST.search(text) is not None
