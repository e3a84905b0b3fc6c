"""A durable run's state between commits: its journal as read back, and one attempt's events.

`Journal` is what a run's committed steps say: model steps by number, tool results by (step, call
id), from which the transcript so far is rebuilt on every attempt. `RunCheckpoint` numbers an
attempt's events, buffers them until the next commit (or a flush while the model streams) and copies
them to a waiting client in this process, if any; a final event reaches that client only after its
commit. No SQL here: the store does the writing.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from sre.store import Store
from sre.types.ids import new_id
from sre.types.records import Lease, ModelCallRecord, StepRecord


def output_item(call_id: str, output: str) -> dict[str, Any]:
    """A tool's result as the `function_call_output` item the run stores and the model sees."""
    return {
        "id": new_id("fco"),
        "type": "function_call_output",
        "call_id": call_id,
        "output": output,
        "status": "completed",
    }


FLUSH_INTERVAL = 0.05  # seconds: a foreground run's streamed events are persisted at most this often
LOST = object()  # put on a sink when the run's lease was lost: its watcher follows the event log


class RunCheckpoint:
    """One attempt's events: numbered, buffered until the next commit or flush, and copied to an
    in-process sink (a waiting client) when there is one."""

    def __init__(
        self,
        store: Store,
        lease: Lease,
        lease_seconds: float,
        sink: asyncio.Queue[Any] | None = None,
        *,
        eager: bool = True,
    ) -> None:
        self.store = store
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.sequence = lease.next_sequence
        self.pending: list[dict[str, Any]] = []
        self.sink = sink
        self.cancel = False
        # Eager: every chunk is persisted at once, for clients following from other processes (a
        # background run's). Otherwise at most every FLUSH_INTERVAL: the waiting client has the sink.
        self.eager = eager
        self._flushed = time.monotonic()

    def emit(self, event: dict[str, Any], *, announce: bool = True) -> dict[str, Any]:
        """Number and buffer an event; a final one (`announce=False`) reaches the sink only through
        `announce` once its commit is done, so no client hears of a state before it is stored."""
        numbered = {**event, "sequence_number": self.sequence}
        self.sequence += 1
        self.pending.append(numbered)
        if announce and self.sink is not None:
            self.sink.put_nowait(numbered)
        return numbered

    def announce(self, event: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.put_nowait(event)

    def take(self) -> list[dict[str, Any]]:
        batch, self.pending = self.pending, []
        return batch

    async def after_chunk(self) -> bool:
        """Persist the streamed events now and then (renewing the lease); say whether to cancel."""
        if self.eager or time.monotonic() - self._flushed >= FLUSH_INTERVAL:
            self._flushed = time.monotonic()
            self.cancel = await asyncio.to_thread(
                self.store.runs.append_events, self.lease, self.take(), self.lease_seconds
            )
        return self.cancel


@dataclass
class Journal:
    """What a run's committed steps say: model steps by number, tool results by (step, call id)."""

    model: dict[int, StepRecord] = field(default_factory=dict)
    calls: dict[tuple[int, str], StepRecord] = field(default_factory=dict)
    last_call: ModelCallRecord | None = None  # a final model step's record, committed with the end

    @classmethod
    def of(cls, rows: list[StepRecord]) -> Journal:
        journal = cls()
        for row in rows:
            if row.kind == "model":
                journal.model[row.step] = row
            else:
                journal.calls[(row.step, row.call_id)] = row
        return journal

    def last_model(self) -> StepRecord | None:
        return self.model[max(self.model)] if self.model else None

    def result(self, step: int, call_id: str) -> dict[str, Any] | None:
        row = self.calls.get((step, call_id))
        if row is None or row.status != "completed":
            return None
        output: dict[str, Any] = row.data["output"]
        return output

    def transcript(self, close: str | None = None) -> list[dict[str, Any]]:
        """The run's output items so far: each model step's items, then its calls' outputs in order.
        With `close` (why the run ends), a call that never ran gets an output saying so, so the
        conversation holds no call without its output."""
        out: list[dict[str, Any]] = []
        for number in sorted(self.model):
            items = self.model[number].data["items"]
            out.extend(items)
            for item in items:
                if item["type"] == "function_call":
                    result = self.result(number + 1, item["call_id"])
                    if result is None and close is not None:
                        not_run = json.dumps({"error": {"code": "not_run", "message": close}})
                        result = output_item(item["call_id"], not_run)
                    if result is not None:
                        out.append(result)
        return out

    def tool_calls_done(self) -> int:
        return sum(1 for row in self.calls.values() if row.kind == "tool" and row.status == "completed")

    def usage(self) -> tuple[int, int, int, bool]:
        totals = [0, 0, 0]
        exact = True
        for row in self.model.values():
            used = row.data["usage"]
            totals = [a + b for a, b in zip(totals, used[:3], strict=True)]
            exact = exact and bool(used[3])
        return totals[0], totals[1], totals[2], exact
