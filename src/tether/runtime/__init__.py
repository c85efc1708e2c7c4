"""The runtime: the agent loop, run state folded from events, the Runtime API and workers."""

from __future__ import annotations

from tether.runtime.hooks import EventSink, RunObserver
from tether.runtime.loop import RunLoop
from tether.runtime.runner import Runtime, Worker, WorkerStats, load_target
from tether.runtime.state import RunState

__all__ = [
    "EventSink",
    "RunLoop",
    "RunObserver",
    "RunState",
    "Runtime",
    "Worker",
    "WorkerStats",
    "load_target",
]
