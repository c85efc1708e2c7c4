"""Confidence gates: act above 0.85, ask the user to confirm from 0.60, hand to a person below."""

from __future__ import annotations

import re
from collections.abc import Sequence
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


_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "i",
        "me",
        "my",
        "you",
        "your",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "and",
        "or",
        "but",
        "please",
        "can",
        "could",
        "would",
        "will",
        "do",
        "does",
        "did",
        "not",
        "no",
        "this",
        "that",
        "with",
    ]
)


@dataclass(frozen=True, slots=True)
class ConfidenceGate:
    """Thresholds for one agent (route); the confidence comes from the model or a verifier hook."""

    act_at: float = 0.85
    confirm_at: float = 0.60
    transfer_on_request: bool = True  # "let me talk to a human" skips the agent entirely
    # The user asked the same thing this many times before in the session (rephrasing it): transfer.
    # None: never. Similar = at least `rephrase_similarity` of their words (Jaccard) in common.
    transfer_after_rephrasings: int | None = 2
    rephrase_similarity: float = 0.5

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


def rephrasings(text: str, earlier: Sequence[str], similarity: float) -> int:
    """How many of the `earlier` messages (newest first) in a row say what `text` says, in other words:
    Jaccard similarity of their word sets at least `similarity`."""
    words = _words(text)
    count = 0
    for previous in earlier:
        other = _words(previous)
        union = words | other
        if not union or len(words & other) / len(union) < similarity:
            break
        count += 1
    return count


def _words(text: str) -> set[str]:
    return {word for word in _WORD.findall(text.lower()) if word not in _STOPWORDS}


def asks_for_a_human(text: str) -> bool:
    """Whether the user asks to be handed to a person."""
    return _HUMAN_REQUEST.search(text) is not None
