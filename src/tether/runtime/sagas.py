"""Saga compensation: when a run fails for good, or is cancelled or discarded from the dead-letter
queue, after write tools succeeded, undo them in reverse.

Compensations are recorded like tool calls: `compensation.started` first (so a worker that dies
half-way resumes the compensating, not the run), one `compensation.ran` per undo with its own
idempotency key (`<call key>:compensate`), skipped when already recorded as done.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from tether.runtime.steps import LoopSteps
from tether.store.base import EventDraft
from tether.tools import ToolContext
from tether.types import EventKind, JsonDict, RunStatus


class SagaSteps(LoopSteps):
    """Mixed into RunLoop (see LoopSteps for what it provides)."""

    async def _fail_with_compensation(self, detail: JsonDict, error: str) -> RunStatus:
        """End the run failed; first undo its successful writes that declared `compensate`."""
        if self.state.compensating is None:
            await self._append(EventDraft(EventKind.COMPENSATION_STARTED, {"error": error, "detail": detail}))
        done = self.state.compensated
        for write in reversed(self.state.succeeded_writes):
            tool = self.agent.tool(write["tool"])
            key = f"{write['idempotency_key']}:compensate"
            if tool is None or tool.compensate is None or key in done:
                continue
            context = ToolContext(
                run_id=self.run.id,
                idempotency_key=key,
                principal=self.run.principal,
                attempt=1,
                tool_name=tool.name,
                call_id=write["call_id"],
            )
            started = time.perf_counter()
            record: JsonDict = {"tool": tool.name, "idempotency_key": key, "of": write["idempotency_key"]}
            try:
                await _call(tool.compensate, write["arguments"], context, tool.timeout_s)
                record["ok"] = True
            except Exception as exc:
                record.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
            record["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
            await self._append(EventDraft(EventKind.COMPENSATION_RAN, record))
        started_data = self.state.compensating or {"detail": detail, "error": error}
        if started_data.get("outcome") == "cancelled":  # undone on request: it ends cancelled
            return await self._finish(
                RunStatus.CANCELLED,
                EventDraft(EventKind.RUN_CANCELLED, {**started_data["detail"], "compensated": True}),
                error=started_data["error"],
            )
        return await self._finish(
            RunStatus.FAILED,
            EventDraft(EventKind.RUN_FAILED, started_data["detail"]),
            error=started_data["error"],
        )


async def _call(function: Any, arguments: JsonDict, context: ToolContext, timeout_s: float) -> None:
    """Call an undo with the original call's arguments (and `ctx` if it takes one)."""
    kwargs = dict(arguments)
    if "ctx" in inspect.signature(function).parameters:
        kwargs["ctx"] = context
    if inspect.iscoroutinefunction(function):
        await asyncio.wait_for(function(**kwargs), timeout_s)
    else:
        await asyncio.wait_for(asyncio.to_thread(function, **kwargs), timeout_s)
