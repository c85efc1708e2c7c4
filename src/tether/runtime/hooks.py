"""Hooks: how tracing, metrics and logs see runs. The core calls them; it never imports what they use.

Every event a runtime writes reaches each observer once, in order per run, after it is committed,
with the run it belongs to (its identity — id, agent, version, principal, tenant, session — is exact;
its status may lag the events, which are the truth). An observer must be quick and must not raise:
one that does is logged and skipped, never allowed to break a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tether.types import Run, RunEvent

logger = logging.getLogger("tether.runtime")

EventSink = Callable[[RunEvent], None]


class RunObserver(Protocol):
    def on_events(self, run: Run, events: Sequence[RunEvent]) -> None:
        """Called after `events` of `run` were committed, in order."""
        ...


@dataclass(frozen=True, slots=True)
class SinkObserver:
    """A plain event sink (`callable(event)`) as an observer."""

    sink: EventSink

    def on_events(self, run: Run, events: Sequence[RunEvent]) -> None:
        for event in events:
            self.sink(event)


def notify(observers: Sequence[RunObserver], run: Run, events: Sequence[RunEvent]) -> None:
    """Give `events` to every observer; an observer that fails is logged, never propagated."""
    if not events:
        return
    for observer in observers:
        try:
            observer.on_events(run, events)
        except Exception:  # an observer must never break a run
            logger.exception("observer %r failed on %s of run %s", observer, events[0].kind, run.id)
