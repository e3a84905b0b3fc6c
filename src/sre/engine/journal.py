"""A turn's state between commits: its journal, and the ledger its events and commits go through.

`Journal` is what a turn's steps say: model steps by number, tool and client calls by (step, call
id), the compaction made for its context, and the model call records still to commit; from it the
transcript so far is rebuilt on every attempt. A `Ledger` is where a turn's events and commits go:
`RunCheckpoint` for a durable run (events numbered from the lease, buffered until the next commit or
flush and copied to a waiting client in this process; commits through the store's run repository),
`TurnLedger` for a plain turn (events straight to the waiting client; one commit, at the end). For
both, a final event reaches the client only after its commit. No SQL here: the store does the
writing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sre.context.compaction import CompactionResult
from sre.store import Store, TurnCommit
from sre.types.audit import AuditEvent
from sre.types.errors import SREError
from sre.types.ids import new_id
from sre.types.items import ITEM_ADAPTER, Compaction, read_compaction
from sre.types.records import ApprovalRecord, Lease, ModelCallRecord, StepRecord
from sre.types.status import FINAL_TYPES
from sre.types.steps import CallStepData, CompactionStepData, ModelStepData, StepUsage


def output_item(call_id: str, output: str) -> dict[str, Any]:
    """A tool's result as the `function_call_output` item the run stores and the model sees."""
    return {
        "id": new_id("fco"),
        "type": "function_call_output",
        "call_id": call_id,
        "output": output,
        "status": "completed",
    }


LOST = object()  # put on a sink when the run's lease was lost: its watcher follows the event log
DONE = object()  # put on a plain turn's queue when it has ended


class Ledger(Protocol):
    """Where a turn's events and commits go."""

    durable: bool
    events: bool  # whether anyone wants the streaming events (else only final ones are made)
    cancel: bool  # a cancel was asked for: the turn ends at its next chunk or step

    def emit(self, event: dict[str, Any], *, announce: bool = True) -> dict[str, Any]: ...
    def announce(self, event: dict[str, Any]) -> None: ...
    async def after_chunk(self) -> bool: ...
    async def commit_step(
        self,
        rows: Sequence[StepRecord],
        calls: Sequence[ModelCallRecord],
        cursor: int | None,
        audit: Sequence[AuditEvent] = (),
    ) -> None: ...
    async def pause(self, waiting: Sequence[StepRecord], asks: Sequence[ApprovalRecord]) -> bool: ...
    async def finish(self, commit: TurnCommit, final: dict[str, Any], error: SREError | None) -> None: ...


class RunCheckpoint:
    """A durable run's ledger for one attempt: events numbered from the lease, buffered until the next
    commit (or a flush while the model streams), and copied to an in-process sink (a waiting client)
    when there is one."""

    durable = True

    def __init__(
        self,
        store: Store,
        lease: Lease,
        lease_seconds: float,
        sink: asyncio.Queue[Any] | None = None,
        *,
        eager: bool = True,
        events: bool = True,
    ) -> None:
        self.store = store
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.sequence = lease.next_sequence
        self.pending: list[dict[str, Any]] = []
        self.sink = sink
        self.cancel = False
        # Eager (a background run, which clients may follow from any process): every chunk's events
        # are persisted at once. Otherwise (a foreground run) the waiting client has the sink and
        # only final events are kept (a pause's, read back by the next request); the heartbeat
        # renews the lease and brings a cancel. A foreground client waiting for the response object
        # wants no streaming events at all.
        self.eager = eager
        self.events = eager or events

    def emit(self, event: dict[str, Any], *, announce: bool = True) -> dict[str, Any]:
        """Number and buffer an event; a final one (`announce=False`) reaches the sink only through
        `announce` once its commit is done, so no client hears of a state before it is stored."""
        if announce and not self.events:
            return event
        numbered = {**event, "sequence_number": self.sequence}
        self.sequence += 1
        if self.eager or not announce:
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
        """Persist a background run's streamed events (renewing the lease); say whether to cancel."""
        if self.eager:
            self.cancel = (
                await asyncio.to_thread(
                    self.store.runs.append_events, self.lease, self.take(), self.lease_seconds
                )
                or self.cancel
            )
        return self.cancel

    async def commit_step(
        self,
        rows: Sequence[StepRecord],
        calls: Sequence[ModelCallRecord],
        cursor: int | None,
        audit: Sequence[AuditEvent] = (),
    ) -> None:
        cancel = await asyncio.to_thread(
            lambda: self.store.runs.commit_step(
                self.lease,
                rows,
                self.take(),
                self.lease_seconds,
                model_calls=calls,
                cursor=cursor,
                audit=audit,
            )
        )
        self.cancel = cancel or self.cancel

    async def pause(self, waiting: Sequence[StepRecord], asks: Sequence[ApprovalRecord]) -> bool:
        return await asyncio.to_thread(self.store.runs.pause, self.lease, waiting, self.take(), asks)

    async def finish(self, commit: TurnCommit, final: dict[str, Any], error: SREError | None) -> None:
        from dataclasses import replace

        await asyncio.to_thread(
            self.store.responses.commit_turn, replace(commit, run=(self.lease, self.take()))
        )
        self.announce(final)


class TurnLedger:
    """A plain turn's ledger: no run row, no journal in the store. Events go to the waiting client
    (only the final one unless it streams); the turn commits once, at its end."""

    durable = False

    def __init__(self, store: Store, queue: asyncio.Queue[Any], *, events: bool) -> None:
        self.store = store
        self.queue = queue
        self.events = events
        self.sequence = 0
        self.cancel = False

    def emit(self, event: dict[str, Any], *, announce: bool = True) -> dict[str, Any]:
        if not self.events and event["type"] not in FINAL_TYPES:
            return event
        numbered = {**event, "sequence_number": self.sequence}
        self.sequence += 1
        if announce:
            self.queue.put_nowait(numbered)
        return numbered

    def announce(self, event: dict[str, Any]) -> None:
        self.queue.put_nowait(event)

    async def after_chunk(self) -> bool:
        return False

    async def commit_step(
        self,
        rows: Sequence[StepRecord],
        calls: Sequence[ModelCallRecord],
        cursor: int | None,
        audit: Sequence[AuditEvent] = (),
    ) -> None:
        raise AssertionError("a plain turn has one step, committed with its end")

    async def pause(self, waiting: Sequence[StepRecord], asks: Sequence[ApprovalRecord]) -> bool:
        raise AssertionError("a plain turn never pauses: its client-side calls end it")

    async def finish(self, commit: TurnCommit, final: dict[str, Any], error: SREError | None) -> None:
        await asyncio.to_thread(self.store.responses.commit_turn, commit)
        self.announce(final)
        if error is not None and not self.events:
            self.queue.put_nowait(error)  # a client waiting for the object hears of the failure


@dataclass
class Journal:
    """What a turn's committed steps say: model steps by number, calls by (step, call id), the
    compaction made for its context; and the model call records still to commit (a final step's,
    a compaction's), which go with the next commit."""

    model: dict[int, StepRecord] = field(default_factory=dict)
    calls: dict[tuple[int, str], StepRecord] = field(default_factory=dict)
    compaction: StepRecord | None = None
    uncommitted: list[StepRecord] = field(default_factory=list)
    unrecorded: list[ModelCallRecord] = field(default_factory=list)

    @classmethod
    def of(cls, rows: list[StepRecord]) -> Journal:
        journal = cls()
        for row in rows:
            if row.kind == "model":
                journal.model[row.step] = row
            elif row.kind == "compaction":
                journal.compaction = row
            else:
                journal.calls[(row.step, row.call_id)] = row
        return journal

    def model_data(self, step: int) -> ModelStepData:
        data = self.model[step].data
        assert isinstance(data, ModelStepData)
        return data

    def last_model(self) -> tuple[int, ModelStepData] | None:
        if not self.model:
            return None
        step = max(self.model)
        return step, self.model_data(step)

    def result(self, step: int, call_id: str) -> dict[str, Any] | None:
        row = self.calls.get((step, call_id))
        if row is None or row.status != "completed":
            return None
        assert isinstance(row.data, CallStepData)
        return row.data.output

    def made_compaction(self) -> CompactionResult | None:
        """The compaction this turn made for its context, as the assembler uses it."""
        if self.compaction is None:
            return None
        data = self.compaction.data
        assert isinstance(data, CompactionStepData)
        item = ITEM_ADAPTER.validate_python(data.item)
        assert isinstance(item, Compaction)
        read = read_compaction(item.encrypted_content)
        through = read[2] if read is not None and read[2] is not None else 0
        return CompactionResult(item=item, through_seq=through)

    def transcript(self, close: str | None = None) -> list[dict[str, Any]]:
        """The turn's output items so far: its compaction item, each model step's items, then its
        calls' outputs in order. With `close` (why the turn ends), a call that never ran gets an
        output saying so, so the conversation holds no call without its output."""
        out: list[dict[str, Any]] = []
        if self.compaction is not None:
            data = self.compaction.data
            assert isinstance(data, CompactionStepData)
            out.append(data.item)
        for number in sorted(self.model):
            items = self.model_data(number).items
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

    def usage(self) -> StepUsage:
        total = StepUsage()
        for number in self.model:
            total = total + self.model_data(number).usage
        return total
