"""Durable runs seen from outside: start or queue them, execute them, follow, resume and cancel them.

`BackgroundRuns.start` stores a prepared run with its `response.queued` event; a run that can start at
once is claimed by this process and executed inline, its events copied to the waiting client as they
happen (and persisted, so another process can serve the stream). A run that must wait (behind its
conversation's active run) or was queued with `background` is executed by a worker
(`sre.engine.workers`), which claims it with a lease and calls `execute`: renewing the lease, it hands
the run to the `RunEngine`. A run whose worker died is claimed again when its lease expires and
continues from its journal. A paused run (`requires_action`) is resumed by a client's tool outputs or
approval responses, or by decisions at `/v1/approvals`. This module holds no SQL and no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from functools import partial
from typing import Any

from sre.engine.journal import LOST, Journal, RunCheckpoint, output_item
from sre.engine.runs import RunEngine
from sre.engine.shapes import stored_response_object
from sre.engine.turn import PreparedTurn, TurnEngine
from sre.engine.workers import worker_id
from sre.store import DecisionCheck, LeaseLost, Store
from sre.store.tenancy import BOUND_TENANT
from sre.types.audit import ACTING
from sre.types.errors import Conflict, InvalidRequest, NotFound, SREError
from sre.types.quotas import Bound
from sre.types.records import Caller, Lease, RunRecord, StepRecord
from sre.types.requests import CreateResponse
from sre.types.status import CANCELLED, FAILED, FINAL_EVENT, FINAL_TYPES, QUEUED, REQUIRES_ACTION, TERMINAL
from sre.types.steps import CallStepData, RunPayload

log = logging.getLogger("sre.background")

MAX_ATTEMPTS = 5  # a run whose step keeps dying (a crash it causes, say) fails instead of looping
FOLLOW_INTERVAL = 0.05  # seconds between reads of the event log while following a run
CANCEL_WAIT = 5.0  # how long a cancel request waits for the worker to stop a running run


class BackgroundRuns:
    def __init__(self, store: Store, turns: TurnEngine, engine: RunEngine, *, lease_seconds: float) -> None:
        self.store = store
        self.turns = turns
        self.lease_seconds = lease_seconds
        self.engine = engine
        self.inline_owner = worker_id("inline")
        self._tasks: set[asyncio.Task[None]] = set()

    # -- starting -------------------------------------------------------------------------------

    def _payload(self, turn: PreparedTurn) -> RunPayload:
        # The request as the client sent it: a worker prepares it again, folding the agent in.
        request = turn.original.model_dump(mode="json", exclude_none=True)
        if turn.agent is not None:  # a resumed run keeps the agent version it started with
            request["model"] = f"agent:{turn.agent.name}@{turn.agent.version}"
        return RunPayload(
            request=request,
            reported_model=turn.reported_model,
            agent=turn.body.get("agent"),
            response=turn.snapshot(QUEUED, []),
            actor=turn.caller.actor_id,
        )

    async def start(self, turn: PreparedTurn, *, inline: bool, limits: Sequence[Bound] = ()) -> Lease | None:
        """Store the run (applying its conversation's concurrency policy and the caller's concurrency
        `limits`); with `inline`, claim it for this process when it can start at once and return the
        lease."""
        payload = self._payload(turn)
        first = {"type": "response.queued", "response": payload.response, "sequence_number": 0}
        policy = turn.definition.concurrency if turn.definition is not None else "enqueue"
        caller = turn.caller
        return await asyncio.to_thread(
            lambda: self.store.runs.enqueue(
                caller.tenant_id,
                turn.response_id,
                caller.principal_id,
                payload,
                first,
                conversation_id=turn.request.conversation_id,
                background=bool(turn.request.background),
                policy=policy,
                owner=self.inline_owner if inline else None,
                lease_seconds=self.lease_seconds,
                key_id=caller.key_id,
                limits=limits,
            )
        )

    async def enqueue(self, turn: PreparedTurn, limits: Sequence[Bound] = ()) -> dict[str, Any]:
        """Queue a background run for the workers and return its response object, status queued."""
        await self.start(turn, inline=False, limits=limits)
        return turn.snapshot(QUEUED, [])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def watch(
        self,
        caller: Caller,
        response_id: str,
        lease: Lease | None,
        turn: PreparedTurn | None = None,
        *,
        after: int = 0,  # by default, after the queued event: the client had that answer already
        events: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of a run this client waits for, to its end or pause (with `events` False, only
        its final one: a client waiting for the response object). Executed here when this process
        holds (or can take) its lease, else followed through the event log; a client that goes away
        does not stop it."""
        while True:
            if lease is None:
                claimed = await asyncio.to_thread(
                    self.store.runs.claim_runnable_run,
                    self.inline_owner,
                    self.lease_seconds,
                    only=(caller.tenant_id, response_id),
                )
                if claimed is not None:
                    _, lease = claimed
                    turn = None  # prepared again from the stored request, as a worker would
            if lease is not None:
                sink: asyncio.Queue[Any] = asyncio.Queue()
                self._spawn(self._execute_inline(lease, turn, sink, events))
                lease, turn = None, None
                while True:
                    event = await sink.get()
                    if event is LOST:
                        break  # someone else runs it now: follow the log from here
                    if event is None:
                        return
                    after = event["sequence_number"]
                    yield event
                    if event["type"] in FINAL_TYPES:
                        return
                continue
            batch = await asyncio.to_thread(
                self.store.runs.events_after, caller.tenant_id, response_id, after
            )
            for event in batch:
                after = event["sequence_number"]
                yield event
                if event["type"] in FINAL_TYPES:
                    return
            if not batch:
                current = await asyncio.to_thread(self.store.runs.get, caller.tenant_id, response_id)
                if current is None or current.status in TERMINAL or current.status == REQUIRES_ACTION:
                    for event in await asyncio.to_thread(
                        self.store.runs.events_after, caller.tenant_id, response_id, after
                    ):
                        yield event
                        if event["type"] in FINAL_TYPES:
                            return
                    final = await self._final_from_store(caller, response_id)
                    if final is not None:
                        yield {**final, "sequence_number": after + 1}
                    return
                await asyncio.sleep(FOLLOW_INTERVAL)

    async def _drain(self, caller: Caller, response_id: str) -> None:
        """Run a queued run here to its end or pause (or follow it, if a worker is quicker)."""
        after = await asyncio.to_thread(self.store.runs.last_sequence, caller.tenant_id, response_id)
        async for _ in self.watch(caller, response_id, None, after=after):
            pass

    def spawn_drain(self, caller: Caller, response_id: str) -> None:
        """Run a queued run here, in the background, when no worker of this process would."""
        self._spawn(self._drain(caller, response_id))

    async def _final_from_store(self, caller: Caller, response_id: str) -> dict[str, Any] | None:
        """The final event of a run whose events are gone (a foreground run's, dropped at its end)."""

        def read() -> dict[str, Any] | None:
            try:
                record = self.store.responses.get(caller.tenant_id, response_id)
            except NotFound:
                return None
            body = stored_response_object(record, self.store.responses.output_items(record))
            return {"type": FINAL_EVENT.get(record.status, "response.completed"), "response": body}

        return await asyncio.to_thread(read)

    async def _execute_inline(
        self, lease: Lease, turn: PreparedTurn | None, sink: asyncio.Queue[Any], events: bool = True
    ) -> None:
        try:
            run: RunRecord | None = None
            if turn is None or lease.attempt != 1:  # else it was enqueued a moment ago: nothing to read
                run = await asyncio.to_thread(self.store.runs.get, lease.tenant_id, lease.response_id)
                assert run is not None
            await self.execute(run, lease, turn=turn, sink=sink, events=events)
        except Exception:
            log.exception("run %s failed inline", lease.response_id)
            sink.put_nowait(LOST)
        finally:
            sink.put_nowait(None)

    # -- following, reading, cancelling ---------------------------------------------------------

    def _unfinished_object(self, run: RunRecord) -> dict[str, Any]:
        """The response object of a run that has no committed response (yet, or ever)."""
        if run.status in TERMINAL or run.status == REQUIRES_ACTION:
            events = self.store.runs.events_after(run.tenant_id, run.response_id, -1, limit=100_000)
            finals = [e for e in events if e["type"] in FINAL_TYPES]
            if finals:
                return dict(finals[-1]["response"])
        if run.status in TERMINAL:
            # A foreground run drops its events in the commit that writes its response: it ended
            # after the caller looked for that response, so read it now.
            with contextlib.suppress(NotFound):
                record = self.store.responses.get(run.tenant_id, run.response_id)
                return stored_response_object(record, self.store.responses.output_items(record))
        return {**run.payload.response, "status": run.status}

    def response_object(self, tenant_id: str, response_id: str) -> dict[str, Any] | None:
        """A run's response object while it has no committed response; None if it has one or is no
        durable run."""
        run = self.store.runs.get(tenant_id, response_id)
        if run is None:
            return None
        return self._unfinished_object(run)

    async def follow(
        self, caller: Caller, response_id: str, starting_after: int | None
    ) -> AsyncIterator[Any]:
        """Check the run exists (errors raise here), then return its events after `starting_after`,
        following new ones until the run ends or pauses."""
        run = await asyncio.to_thread(self.store.runs.get, caller.tenant_id, response_id)
        if run is None or not run.background:
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
                if current is None or current.status in TERMINAL or current.status == REQUIRES_ACTION:
                    # Its final event is committed with its status: read once more, then stop.
                    for event in await asyncio.to_thread(
                        self.store.runs.events_after, tenant_id, response_id, after
                    ):
                        yield event
                    return
                await asyncio.sleep(FOLLOW_INTERVAL)

    async def cancel(self, caller: Caller, response_id: str) -> dict[str, Any]:
        """Cancel a queued or paused run at once (a paused one whose tools ran ends here, keeping what
        they did); flag a running one and wait (briefly) for its worker to stop it at its next chunk
        or step."""
        tenant_id = caller.tenant_id
        run = await asyncio.to_thread(self.store.runs.get, tenant_id, response_id)
        if run is None:
            record = await asyncio.to_thread(self.store.responses.get, tenant_id, response_id)
            raise Conflict(
                f"Response '{response_id}' is already {record.status}; only a queued, in-progress or "
                "paused response can be cancelled.",
                code="response_not_cancellable",
            )
        run = await asyncio.to_thread(self.store.runs.cancel, tenant_id, response_id)
        if run.status == QUEUED:  # flagged and queued to end: end it here unless a worker is quicker
            await self._drain(caller, response_id)
        deadline = time.monotonic() + CANCEL_WAIT
        while True:
            found = await asyncio.to_thread(self.store.runs.get, tenant_id, response_id)
            if found is None:  # a foreground run's row goes with its end: its response is the record
                final = await self._final_from_store(caller, response_id)
                if final is None:
                    raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
                return dict(final["response"])
            if found.status in TERMINAL or time.monotonic() >= deadline:
                return await asyncio.to_thread(self._unfinished_object, found)
            await asyncio.sleep(FOLLOW_INTERVAL)

    # -- resuming a paused run --------------------------------------------------------------------

    async def resume(
        self, caller: Caller, run: RunRecord, raw_input: object, check: DecisionCheck, decided_by: str
    ) -> None:
        """Apply a client's `function_call_output` and `mcp_approval_response` items to a paused run.
        Everything is checked before anything is written; the run is queued again once nothing is
        pending."""
        if not isinstance(raw_input, list) or not raw_input:
            raise InvalidRequest(
                f"Response '{run.response_id}' is waiting for tool outputs or approvals: send them as "
                "'function_call_output' or 'mcp_approval_response' items in 'input'.",
                param="input",
            )
        steps = await asyncio.to_thread(self.store.runs.steps, run.tenant_id, run.response_id)
        waiting = {s.call_id: s for s in steps if s.kind == "client" and s.status == "pending"}
        page = await asyncio.to_thread(
            lambda: self.store.approvals.list(run.tenant_id, response_id=run.response_id, limit=10_000)
        )
        open_approvals = {a.id: a for a in page.data if a.status == "pending"}
        outputs: list[StepRecord] = []
        decisions: list[tuple[str, bool, str | None]] = []
        for index, item in enumerate(raw_input):
            where = f"input[{index}]"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "function_call_output":
                call_id, output = item.get("call_id"), item.get("output")
                if not isinstance(call_id, str) or call_id not in waiting:
                    raise InvalidRequest(
                        f"Invalid value for '{where}.call_id': response '{run.response_id}' is not waiting "
                        f"for the output of call {call_id!r}.",
                        param=f"{where}.call_id",
                    )
                if not isinstance(output, str):
                    raise InvalidRequest(
                        f"Invalid type for '{where}.output': expected a string.", param=f"{where}.output"
                    )
                if any(o.call_id == call_id for o in outputs):
                    raise InvalidRequest(
                        f"Invalid value for '{where}.call_id': call {call_id!r} is answered twice.",
                        param=f"{where}.call_id",
                    )
                result = output_item(call_id, output)
                outputs.append(
                    StepRecord(
                        waiting[call_id].step, call_id, "client", "completed", CallStepData(output=result)
                    )
                )
            elif kind == "mcp_approval_response":
                approval_id, approve = item.get("approval_request_id"), item.get("approve")
                reason = item.get("reason")
                if not isinstance(approval_id, str) or approval_id not in open_approvals:
                    raise InvalidRequest(
                        f"Invalid value for '{where}.approval_request_id': response '{run.response_id}' has "
                        f"no pending approval {approval_id!r}.",
                        param=f"{where}.approval_request_id",
                    )
                if not isinstance(approve, bool):
                    raise InvalidRequest(
                        f"Invalid type for '{where}.approve': expected a boolean.", param=f"{where}.approve"
                    )
                if reason is not None and not isinstance(reason, str):
                    raise InvalidRequest(
                        f"Invalid type for '{where}.reason': expected a string.", param=f"{where}.reason"
                    )
                check(open_approvals[approval_id])
                decisions.append((approval_id, approve, reason))
            else:
                raise InvalidRequest(
                    f"Invalid value for '{where}.type': a paused response takes only "
                    "'function_call_output' and 'mcp_approval_response' items.",
                    param=f"{where}.type",
                )
        if set(waiting) - {o.call_id for o in outputs} and outputs:
            missing = sorted(set(waiting) - {o.call_id for o in outputs})
            raise InvalidRequest(
                f"Response '{run.response_id}' also waits for the output of call(s) {', '.join(missing)}; "
                "send them together.",
                param="input",
            )
        await asyncio.to_thread(
            partial(
                self.store.approvals.answer,
                run.tenant_id,
                run.response_id,
                outputs=outputs,
                decisions=decisions,
                check=check,
                decided_by=decided_by,
                actor=caller.principal_id,
            )
        )

    # -- the worker side ------------------------------------------------------------------------

    async def execute(
        self,
        run: RunRecord | None,
        lease: Lease,
        *,
        turn: PreparedTurn | None = None,
        sink: asyncio.Queue[Any] | None = None,
        events: bool = True,
    ) -> None:
        """Continue the claimed run from its journal, renewing the lease meanwhile (`run` None: a run
        this process enqueued a moment ago with `turn`, which has no journal yet)."""
        background = run.background if run is not None else bool(turn is not None and turn.request.background)
        checkpoint = RunCheckpoint(
            self.store, lease, self.lease_seconds, sink, eager=background, events=events
        )
        heartbeat = asyncio.create_task(self._heartbeat(checkpoint))
        # The audit events of the run name the service acting for its principal, if one is.
        acting = ACTING.set(run.payload.actor if run is not None else turn.caller.actor_id if turn else None)
        tenant = BOUND_TENANT.set(lease.tenant_id)  # its store work is its tenant's (row-level security)
        try:
            await self._execute(run, checkpoint, turn)
        except LeaseLost:
            log.warning(
                "lost the lease of run %s (attempt %d); another worker has it",
                lease.response_id,
                lease.attempt,
            )
            if sink is not None:
                sink.put_nowait(LOST)
        except asyncio.CancelledError:
            # Shutting down: let the next worker take the run without waiting for the lease.
            with contextlib.suppress(Exception):  # else the lease expires anyway
                self.store.runs.release(lease)
            raise
        finally:
            heartbeat.cancel()
            BOUND_TENANT.reset(tenant)
            ACTING.reset(acting)

    async def _heartbeat(self, checkpoint: RunCheckpoint) -> None:
        """Renew the lease every third of it; a cancel asked for meanwhile reaches the run here."""
        lease = checkpoint.lease
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                if await asyncio.to_thread(self.store.runs.heartbeat, lease, self.lease_seconds):
                    checkpoint.cancel = True
            except LeaseLost:
                return
            except Exception as exc:  # a database hiccup: try again at the next beat
                log.warning("heartbeat of run %s failed: %s", lease.response_id, exc)

    async def _execute(
        self, run: RunRecord | None, checkpoint: RunCheckpoint, turn: PreparedTurn | None
    ) -> None:
        lease = checkpoint.lease
        if run is None:
            assert turn is not None
            await self.engine.execute(turn, checkpoint, Journal())
            return
        payload = run.payload
        grants = await asyncio.to_thread(self.store.directory.grants_of, run.tenant_id, run.principal_id)
        caller = Caller(
            tenant_id=run.tenant_id,
            principal_id=run.principal_id,
            key_id=run.key_id,
            grants=grants,
            actor_id=payload.actor,
        )

        async def end(status: str, extra: dict[str, Any]) -> None:
            response = {**payload.response, "status": status, **extra}
            final = checkpoint.emit({"type": FINAL_EVENT[status], "response": response}, announce=False)
            await asyncio.to_thread(self.store.runs.finish, lease, status, checkpoint.take())
            checkpoint.announce(final)

        try:
            if lease.attempt > MAX_ATTEMPTS + run.steps:
                raise SREError(
                    f"the run was started {lease.attempt - 1} times and never finished", code="server_error"
                )
            if turn is None:
                turn = await self.turns.prepare(caller, CreateResponse.model_validate(payload.request))
                turn.response_id = run.response_id
                turn.created_at = payload.response["created_at"]
                turn.reported_model = payload.reported_model
                if payload.agent is not None:
                    turn.body["agent"] = payload.agent
        except SREError as exc:  # the request no longer holds (a deleted conversation, say)
            if run.cancel_requested:
                await end(CANCELLED, {})
                return
            error = {"code": exc.code or exc.error_type, "message": exc.message}
            await end(FAILED, {"error": error})
            return
        rows = (
            []
            if lease.attempt == 1
            else await asyncio.to_thread(self.store.runs.steps, lease.tenant_id, lease.response_id)
        )
        # A run cancelled while paused or while its last worker was dying starts no step: the engine
        # only ends it (keeping what its tools did).
        checkpoint.cancel = run.cancel_requested
        await self.engine.execute(turn, checkpoint, Journal.of(rows))

    async def aclose(self) -> None:
        """Let inline runs reach their next commit, up to a bound, then cancel (their leases are let go)."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
