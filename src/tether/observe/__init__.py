"""Observability plugged into a runtime as observers: tracing (OpenTelemetry), metrics (Prometheus), logs.

The core never imports this package; `Runtime(observers=[...])` or the settings wire it in.
"""

from __future__ import annotations
