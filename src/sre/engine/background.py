"""Background runs: enqueue a prepared turn, execute queued runs as workers, follow and cancel them.

`BackgroundRuns.enqueue` stores the validated request with a `response.queued` event and returns at
once. A `WorkerPool` (tasks inside `sre serve`, or the whole of `sre worker`) claims runnable runs
with a lease, renews it while the model streams, and executes one model step per run through the
`TurnEngine`: the events of each chunk are appended to the run's event log, and the final commit
(items, response, model call, last events, run status) is the turn's one transaction. A run whose
worker died is claimed again when its lease expires and restarts its step: nothing of it had been
committed. Streams are read back from the event log, so any process can serve them. This module
holds no SQL and no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sre.engine.turn import PreparedTurn, TurnEngine
from sre.store import LeaseLost, Store
from sre.types.errors import Conflict, InvalidRequest, NotFound, SREError
from sre.types.records import Caller, Lease, RunRecord
from sre.types.requests import CreateResponse

log = logging.getLogger("sre.background")

FINAL_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed"})
TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
MAX_ATTEMPTS = 5  # a run whose step keeps dying (a crash it causes, say) fails instead of looping
FOLLOW_INTERVAL = 0.1  # seconds between reads of the event log while following a run
CANCEL_WAIT = 5.0  # how long a cancel request waits for the worker to stop a running run
PAYLOAD_VERSION = 1


class RunCheckpoint:
    """One attempt's events: numbered, persisted after each chunk (renewing the lease), and the
    last ones handed to the final commit."""

    def __init__(self, store: Store, lease: Lease, lease_seconds: float) -> None:
        self.store = store
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.sequence = lease.next_sequence
        self.pending: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.pending.append({**event, "sequence_number": self.sequence})
        self.sequence += 1

    async def after_chunk(self) -> bool:
        batch, self.pending = self.pending, []
        return await asyncio.to_thread(self.store.runs.append_events, self.lease, batch, self.lease_seconds)

    def finish(self, final: dict[str, Any]) -> list[dict[str, Any]]:
        self.emit(final)
        batch, self.pending = self.pending, []
        return batch


class BackgroundRuns:
    def __init__(self, store: Store, turns: TurnEngine, *, lease_seconds: float) -> None:
        self.store = store
        self.turns = turns
        self.lease_seconds = lease_seconds

    # -- the API side ---------------------------------------------------------------------------

    async def enqueue(self, turn: PreparedTurn) -> dict[str, Any]:
        """Queue a prepared turn (one transaction) and return its response object, status queued."""
        snapshot = turn.snapshot("queued", [])
        payload = {
            "version": PAYLOAD_VERSION,
            "request": turn.request.model_dump(mode="json", exclude_none=True),
            "reported_model": turn.reported_model,
            "agent": turn.body.get("agent"),
            "response": snapshot,
        }
        first = {"type": "response.queued", "response": snapshot, "sequence_number": 0}
        caller = turn.caller
        await asyncio.to_thread(
            self.store.runs.enqueue, caller.tenant_id, turn.response_id, caller.principal_id, payload, first
        )
        return snapshot

    def _unfinished_object(self, run: RunRecord) -> dict[str, Any]:
        """The response object of a run that has no committed response (yet, or ever)."""
        if run.status in TERMINAL:
            events = self.store.runs.events_after(run.tenant_id, run.response_id, -1, limit=100_000)
            finals = [e for e in events if e["type"] in FINAL_TYPES]
            if finals:
                return dict(finals[-1]["response"])
        return {**run.request["response"], "status": run.status}

    def response_object(self, tenant_id: str, response_id: str) -> dict[str, Any] | None:
        """A background run's response object while it has no committed response; None if it has
        one or is no background run."""
        run = self.store.runs.get(tenant_id, response_id)
        if run is None:
            return None
        return self._unfinished_object(run)

    async def follow(
        self, caller: Caller, response_id: str, starting_after: int | None
    ) -> AsyncIterator[Any]:
        """Check the run exists (errors raise here), then return its events after `starting_after`,
        following new ones until the run ends."""
        run = await asyncio.to_thread(self.store.runs.get, caller.tenant_id, response_id)
        if run is None:
            await asyncio.to_thread(self.store.responses.get, caller.tenant_id, response_id)
            raise InvalidRequest(
                "Only background responses can be streamed again; this one was not created with "
                "'background': true.",
                param="stream",
            )
        return self._follow(run, -1 if starting_after is None else starting_after)

    async def _follow(self, run: RunRecord, after: int) -> AsyncIterator[dict[str, Any]]:
        tenant_id, response_id = run.tenant_id, run.response_id
        while True:
            batch = await asyncio.to_thread(self.store.runs.events_after, tenant_id, response_id, after)
            for event in batch:
                after = event["sequence_number"]
                yield event
                if event["type"] in FINAL_TYPES:
                    return
            if not batch:
                current = await asyncio.to_thread(self.store.runs.get, tenant_id, response_id)
                if current is None or current.status in TERMINAL:
                    # Its final event is committed with its status: read once more, then stop.
                    for event in await asyncio.to_thread(
                        self.store.runs.events_after, tenant_id, response_id, after
                    ):
                        yield event
                    return
                await asyncio.sleep(FOLLOW_INTERVAL)

    async def cancel(self, caller: Caller, response_id: str) -> dict[str, Any]:
        """Cancel a queued run at once; flag a running one and wait (briefly) for its worker to stop it."""
        tenant_id = caller.tenant_id
        run = await asyncio.to_thread(self.store.runs.get, tenant_id, response_id)
        if run is None:
            record = await asyncio.to_thread(self.store.responses.get, tenant_id, response_id)
            raise Conflict(
                f"Response '{response_id}' is already {record.status}; only a queued or in-progress "
                "background response can be cancelled.",
                code="response_not_cancellable",
            )
        final = {
            "type": "response.incomplete",
            "response": {**run.request["response"], "status": "cancelled"},
        }
        run = await asyncio.to_thread(self.store.runs.cancel, tenant_id, response_id, final)
        deadline = time.monotonic() + CANCEL_WAIT
        while run.status not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(FOLLOW_INTERVAL)
            found = await asyncio.to_thread(self.store.runs.get, tenant_id, response_id)
            if found is None:
                raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
            run = found
        return await asyncio.to_thread(self._unfinished_object, run)

    # -- the worker side ------------------------------------------------------------------------

    async def execute(self, run: RunRecord, lease: Lease) -> None:
        """Run the claimed run's model step and commit it, renewing the lease meanwhile."""
        heartbeat = asyncio.create_task(self._heartbeat(lease))
        try:
            await self._execute(run, lease)
        except LeaseLost:
            log.warning(
                "lost the lease of run %s (attempt %d); another worker has it", run.response_id, lease.attempt
            )
        except asyncio.CancelledError:
            # Shutting down: let the next worker take the run without waiting for the lease.
            with contextlib.suppress(Exception):  # else the lease expires anyway
                self.store.runs.release(lease)
            raise
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await asyncio.to_thread(self.store.runs.heartbeat, lease, self.lease_seconds)
            except LeaseLost:
                return
            except Exception as exc:  # a database hiccup: try again at the next beat
                log.warning("heartbeat of run %s failed: %s", lease.response_id, exc)

    async def _execute(self, run: RunRecord, lease: Lease) -> None:
        checkpoint = RunCheckpoint(self.store, lease, self.lease_seconds)
        payload = run.request
        caller = Caller(tenant_id=run.tenant_id, principal_id=run.principal_id)
        if run.cancel_requested:  # cancelled while its last worker was dying: do not start again
            response = {**payload["response"], "status": "cancelled"}
            events = checkpoint.finish({"type": "response.incomplete", "response": response})
            await asyncio.to_thread(self.store.runs.finish, lease, "cancelled", events)
            return
        try:
            if lease.attempt > MAX_ATTEMPTS:
                raise SREError(
                    f"the run was started {MAX_ATTEMPTS} times and never finished", code="server_error"
                )
            turn = await self.turns.prepare(caller, CreateResponse.model_validate(payload["request"]))
        except SREError as exc:  # the request no longer holds (a deleted conversation, say)
            error = {"code": exc.code or exc.error_type, "message": exc.message}
            response = {**payload["response"], "status": "failed", "error": error}
            await asyncio.to_thread(
                self.store.runs.finish,
                lease,
                "failed",
                checkpoint.finish({"type": "response.failed", "response": response}),
            )
            return
        turn.response_id = run.response_id
        turn.created_at = payload["response"]["created_at"]
        turn.reported_model = payload.get("reported_model")
        if payload.get("agent") is not None:
            turn.body["agent"] = payload["agent"]
        await self.turns.run_background(turn, checkpoint)


class WorkerPool:
    """`count` workers claiming runs from the store until closed."""

    def __init__(self, runs: BackgroundRuns, count: int, *, poll_interval: float | None = None) -> None:
        self.runs = runs
        self.count = count
        pg = runs.store.dialect == "postgresql"
        # PostgreSQL wakes workers with NOTIFY, so its polling is only the fallback.
        self.poll_interval = poll_interval if poll_interval is not None else (1.0 if pg else 0.2)
        self._tasks: list[asyncio.Task[None]] = []
        host = socket.gethostname()[:40]
        self.worker_ids = [f"{host}:{os.getpid()}:{i}:{uuid.uuid4().hex[:8]}" for i in range(count)]

    def start(self) -> None:
        for worker_id in self.worker_ids:
            self._tasks.append(asyncio.create_task(self._work(worker_id)))

    async def _work(self, worker_id: str) -> None:
        store = self.runs.store
        listener = store.runs.listener()
        try:
            while True:
                try:
                    claimed = await asyncio.to_thread(
                        store.runs.claim_runnable_run, worker_id, self.runs.lease_seconds
                    )
                except Exception as exc:
                    log.warning("worker %s could not claim a run: %s", worker_id, exc)
                    claimed = None
                if claimed is not None:
                    try:
                        await self.runs.execute(*claimed)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("run %s failed in worker %s", claimed[0].response_id, worker_id)
                    continue
                if store.dialect == "postgresql":
                    await asyncio.to_thread(listener.wait, self.poll_interval)
                else:
                    await asyncio.sleep(self.poll_interval)
        finally:
            listener.close()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
