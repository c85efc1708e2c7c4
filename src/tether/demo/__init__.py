"""The `tether demo` support desk: a ReAct support agent, flaky fake providers, the gateway."""

from __future__ import annotations

from tether.demo.run import run_demo

__all__ = ["run_demo"]
