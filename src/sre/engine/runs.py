"""The run engine: a durable run's step loop, from its journal to its next pause or its end.

A run alternates model steps and tool steps. A model step streams the model and commits its output
items, its model call record, its events and the run's cursor in one transaction before any tool
runs (a final answer commits with the run's end instead). A tool step looks at each function call the model made: a client-side function pauses the run
in `requires_action` until the client sends its output; a call the agent's policy marks pauses it
for an approver; any other server-side call runs (concurrently with the step's others) and its
output commits as soon as it is known. A call that is not idempotent commits a `started` row first,
so after a crash its outcome is known to be unknown: the run pauses and asks for a decision instead
of running it again. A recovered run rebuilds its transcript from the journal, so nothing that
completed runs twice. The end (completed, incomplete, failed, cancelled) is the turn's one commit:
items, response, run status and last events. Holds no SQL and no HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from sre.engine.assembler import Assembler
from sre.engine.journal import Journal, RunCheckpoint, output_item
from sre.engine.shapes import usage_object
from sre.engine.turn import FINAL_EVENT, PreparedTurn, count_usage
from sre.store import LeaseLost, Store, approval_row
from sre.tools.base import ToolError
from sre.tools.policy import needs_approval
from sre.types.errors import ModelError, SREError
from sre.types.ids import new_id
from sre.types.items import ITEM_ADAPTER, FunctionCall, FunctionCallOutput, Message, estimate_tokens
from sre.types.records import ApprovalRecord, ModelCallRecord, StepRecord

AnyItem = Message | FunctionCall | FunctionCallOutput

PAUSED_EVENT = "response.completed"  # a pause ends the stream like OpenAI's function-call turns do
PAUSE_STATUS = "requires_action"


def _fit(turn: PreparedTurn, transcript: list[AnyItem]) -> list[AnyItem] | None:
    """The next model call's items: the conversation's window, the turn's input and the run's items
    so far, within the model's context window (less the output's reserve). With `truncation: auto`
    the oldest conversation items give way; None when even the input and the run's items do not fit."""
    window = turn.model.info.context_window
    reserve = turn.request.max_output_tokens or min(4096, window // 4)
    budget = window - reserve - (len(turn.request.instructions or "") + 3) // 4
    history = list(turn.model_request.items[: len(turn.window.items)])
    rest = list(turn.model_request.items[len(turn.window.items) :]) + transcript
    used = sum(estimate_tokens(i) for i in rest)
    sizes = [estimate_tokens(i) for i in history]
    total = used + sum(sizes)
    if total <= budget:
        return history + rest
    if used > budget or turn.request.truncation != "auto":
        return None
    drop = 0
    while total > budget:
        total -= sizes[drop]
        drop += 1
    return history[drop:] + rest


def _error_output(exc: ToolError) -> str:
    return json.dumps({"error": {"code": exc.code, "message": exc.message}})


def approval_item(record: ApprovalRecord) -> dict[str, Any]:
    """A pending decision as a Responses-style approval request item."""
    return {
        "id": record.id,
        "type": "mcp_approval_request",
        "server_label": "sre" if record.kind == "approval" else "sre:unknown_outcome",
        "name": record.tool,
        "arguments": record.arguments,
        "call_id": record.call_id,
        "kind": record.kind,
    }


class RunEngine:
    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        self.lease_seconds = lease_seconds

    async def execute(self, turn: PreparedTurn, cp: RunCheckpoint) -> None:
        """Drive the run from its journal until it pauses or ends (its last commit), or its lease is lost."""
        lease = cp.lease
        rows = await asyncio.to_thread(self.store.runs.steps, lease.tenant_id, lease.response_id)
        journal = Journal.of(rows)
        if not journal.model:  # a first attempt, or a retry of one that committed nothing
            cp.emit({"type": "response.created", "response": turn.snapshot("in_progress", [])})
        cp.emit(
            {"type": "response.in_progress", "response": turn.snapshot("in_progress", journal.transcript())}
        )
        limits = turn.definition.limits if turn.definition is not None else None
        while True:
            if cp.cancel:
                return await self._end(turn, cp, journal, "cancelled")
            last = journal.last_model()
            if last is not None:
                if last.data["status"] != "completed":
                    return await self._end(
                        turn, cp, journal, last.data["status"], reason=last.data.get("reason")
                    )
                calls = [i for i in last.data["items"] if i["type"] == "function_call"]
                if not calls:
                    return await self._end(turn, cp, journal, "completed")
                open_calls = [c for c in calls if journal.result(last.step + 1, c["call_id"]) is None]
                if open_calls:
                    outcome = await self._tool_step(turn, cp, journal, last.step + 1, open_calls)
                    if outcome == "paused":
                        return None
                    if outcome is not None:  # a limit was reached
                        return await self._end(turn, cp, journal, "incomplete", reason=outcome)
                    continue
            if limits is not None and limits.max_steps is not None and len(journal.model) >= limits.max_steps:
                return await self._end(turn, cp, journal, "incomplete", reason="max_steps")
            if (
                limits is not None
                and limits.deadline_seconds is not None
                and time.time() > turn.created_at + limits.deadline_seconds
            ):
                return await self._end(turn, cp, journal, "incomplete", reason="deadline")
            number = 0 if last is None else last.step + 2
            if not await self._model_step(turn, cp, journal, number):
                return None

    # -- a model step -----------------------------------------------------------------------------

    async def _model_step(self, turn: PreparedTurn, cp: RunCheckpoint, journal: Journal, number: int) -> bool:
        """Stream one model call and commit it; False when the run ended instead (failure, cancel)."""
        transcript = journal.transcript()
        fitted = _fit(turn, [ITEM_ADAPTER.validate_python(i) for i in transcript])
        if fitted is None:
            await self._end(turn, cp, journal, "incomplete", reason="context_length_exceeded")
            return False
        request = dataclasses.replace(turn.model_request, items=fitted)
        assembler = Assembler(events=True, offset=len(transcript))
        started = time.perf_counter()
        error: SREError | None = None
        try:
            stream = turn.model.stream(request)
            try:
                async for model_event in stream:
                    for event in assembler.feed(model_event):
                        cp.emit(event)
                    if await cp.after_chunk():
                        break
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
        except LeaseLost:
            raise
        except SREError as exc:
            error = exc
        except Exception as exc:
            error = ModelError(
                f"model '{turn.model.name}' failed: {type(exc).__name__}: {exc}", code="model_error"
            )
        latency_ms = (time.perf_counter() - started) * 1000
        if error is not None or cp.cancel:
            for event in assembler.close("incomplete"):
                cp.emit(event)
            await self._end(turn, cp, journal, "failed" if error else "cancelled", error=error)
            return False
        finish = assembler.finish.reason if assembler.finish is not None else None
        status = "incomplete" if finish in ("length", "content_filter") else "completed"
        for event in assembler.close("completed"):
            cp.emit(event)
        counted = count_usage(turn.model, request, assembler)
        input_tokens, cached_tokens, output_tokens, exact = counted
        pricing = turn.model.info.pricing
        items = [i.model_dump(mode="json", exclude_none=True) for i in assembler.items()]
        row = StepRecord(
            step=number,
            call_id="",
            kind="model",
            status="completed",
            data={
                "items": items,
                "usage": list(counted),
                "status": status,
                "reason": None
                if status == "completed"
                else ("max_output_tokens" if finish == "length" else finish),
            },
        )
        call = ModelCallRecord(
            tenant_id=turn.caller.tenant_id,
            id=new_id("mc"),
            response_id=turn.response_id,
            principal_id=turn.caller.principal_id,
            model=turn.model.name,
            provider=turn.model.info.provider,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            tokens_exact=exact,
            cost_usd=None if pricing is None else pricing.cost(input_tokens, output_tokens, cached_tokens),
            latency_ms=latency_ms,
            manifest={**turn.manifest(), "step": number, "run_items": len(transcript)},
            error=None,
            created_at=int(time.time()),
        )
        journal.model[number] = row
        if not any(i["type"] == "function_call" for i in items):
            # The last step: it commits with the run's end, one transaction instead of two.
            journal.last_call = call
            return True
        cp.cancel = await asyncio.to_thread(
            self.store.runs.commit_step,
            cp.lease,
            [row],
            cp.take(),
            self.lease_seconds,
            model_call=call,
            cursor=number + 1,
        )
        return True

    # -- a tool step ------------------------------------------------------------------------------

    async def _tool_step(
        self, turn: PreparedTurn, cp: RunCheckpoint, journal: Journal, step: int, calls: list[dict[str, Any]]
    ) -> str | None:
        """Run, record or defer each open call; "paused", a limit's name, or None to go on."""
        tenant_id, response_id = turn.caller.tenant_id, turn.response_id
        decided = await asyncio.to_thread(self._approvals, tenant_id, response_id)
        client = {t.name for t in turn.request.tools or []}
        policy = turn.definition.approval if turn.definition is not None else None
        limits = turn.definition.limits if turn.definition is not None else None
        recorded: list[StepRecord] = []  # outputs known without running anything
        runnable: list[tuple[dict[str, Any], dict[str, Any]]] = []
        waiting: list[StepRecord] = []  # client calls to wait for
        asks: list[ApprovalRecord] = []  # new decisions to ask for
        pending = False  # an earlier decision is still open

        def record(call: dict[str, Any], output: str) -> None:
            recorded.append(
                StepRecord(
                    step,
                    call["call_id"],
                    "tool",
                    "completed",
                    {"output": output_item(call["call_id"], output)},
                )
            )

        def ask(call: dict[str, Any], kind: str) -> None:
            asks.append(
                ApprovalRecord(
                    tenant_id=tenant_id,
                    id=new_id("apr"),
                    response_id=response_id,
                    principal_id=turn.caller.principal_id,
                    step=step,
                    call_id=call["call_id"],
                    kind=kind,
                    tool=call["name"],
                    arguments=call["arguments"],
                    approvers=list(policy.approvers) if policy is not None else [],
                    status="pending",
                    reason=None,
                    decided_by=None,
                    created_at=int(time.time()),
                    decided_at=None,
                )
            )

        for call in calls:
            name, call_id = call["name"], call["call_id"]
            row = journal.calls.get((step, call_id))
            if name in client:
                if row is None:
                    waiting.append(StepRecord(step, call_id, "client", "pending", {"name": name}))
                else:
                    pending = True
                continue
            bound = turn.tools.get(name)
            if bound is None:
                record(
                    call, _error_output(ToolError(f"There is no tool named '{name}'.", code="unknown_tool"))
                )
                continue
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                record(
                    call,
                    _error_output(
                        ToolError("The arguments are not a JSON object.", code="invalid_arguments")
                    ),
                )
                continue
            if row is not None and row.status == "started" and not bound.spec.idempotent:
                decision = decided.get((call_id, "unknown_outcome"))
                if decision is None:
                    ask(call, "unknown_outcome")
                elif decision.status == "pending":
                    pending = True
                elif decision.status == "approved":
                    runnable.append((call, arguments))
                else:
                    record(call, self._refusal(decision, unknown=True))
                continue
            if policy is not None and needs_approval(policy, name, arguments):
                decision = decided.get((call_id, "approval"))
                if decision is None:
                    ask(call, "approval")
                elif decision.status == "pending":
                    pending = True
                elif decision.status == "approved":
                    runnable.append((call, arguments))
                else:
                    record(call, self._refusal(decision, unknown=False))
                continue
            runnable.append((call, arguments))
        if (
            limits is not None
            and limits.max_tool_calls is not None
            and journal.tool_calls_done() + len(runnable) > limits.max_tool_calls
        ):
            return "max_tool_calls"
        if recorded:
            await self._commit_results(turn, cp, journal, recorded)
        if runnable:
            await asyncio.gather(*(self._run_call(turn, cp, journal, step, c, a) for c, a in runnable))
        if waiting or asks or pending:
            return await self._pause(turn, cp, journal, waiting, asks, decided)
        return None

    def _approvals(self, tenant_id: str, response_id: str) -> dict[tuple[str, str], ApprovalRecord]:
        page = self.store.approvals.list(tenant_id, response_id=response_id, limit=10_000)
        return {(a.call_id, a.kind): a for a in page.data}

    @staticmethod
    def _refusal(decision: ApprovalRecord, *, unknown: bool) -> str:
        what = (
            "The call was interrupted and its outcome is unknown; it was not run again"
            if unknown
            else "The call was denied and did not run"
        )
        by = f" (decided by {decision.decided_by}" + (f": {decision.reason})" if decision.reason else ")")
        return json.dumps({"error": {"code": "denied", "message": what + by + "."}})

    async def _commit_results(
        self, turn: PreparedTurn, cp: RunCheckpoint, journal: Journal, rows: list[StepRecord]
    ) -> None:
        offset = len(journal.transcript())
        for index, row in enumerate(rows):
            item = row.data["output"]
            cp.emit({"type": "response.output_item.added", "output_index": offset + index, "item": item})
            cp.emit({"type": "response.output_item.done", "output_index": offset + index, "item": item})
        cp.cancel = (
            await asyncio.to_thread(
                self.store.runs.commit_step, cp.lease, rows, cp.take(), self.lease_seconds
            )
            or cp.cancel
        )
        for row in rows:
            journal.calls[(row.step, row.call_id)] = row

    async def _run_call(
        self,
        turn: PreparedTurn,
        cp: RunCheckpoint,
        journal: Journal,
        step: int,
        call: dict[str, Any],
        arguments: dict[str, Any],
    ) -> None:
        bound = turn.tools[call["name"]]
        call_id = call["call_id"]
        if not bound.spec.idempotent:  # from here on, a crash leaves the outcome unknown
            started = StepRecord(step, call_id, "tool", "started", {"name": call["name"]})
            await asyncio.to_thread(self.store.runs.commit_step, cp.lease, [started], [], self.lease_seconds)
            journal.calls[(step, call_id)] = started
        key = f"{turn.response_id}:{step}:{call_id}"
        try:
            # The source enforces the tool's timeout; this bound only catches a source that does not.
            output = await asyncio.wait_for(
                bound.source.call(call["name"], arguments, key=key), bound.spec.timeout + 5
            )
        except TimeoutError:
            output = _error_output(
                ToolError(
                    f"Tool '{call['name']}' did not finish within {bound.spec.timeout:g} s.", code="timeout"
                )
            )
        except ToolError as exc:
            output = _error_output(exc)
        except Exception as exc:  # a source's own bug: the model hears of it, the run goes on
            output = _error_output(ToolError(f"{type(exc).__name__}: {exc}"))
        done = StepRecord(step, call_id, "tool", "completed", {"output": output_item(call_id, output)})
        await self._commit_results(turn, cp, journal, [done])

    async def _pause(
        self,
        turn: PreparedTurn,
        cp: RunCheckpoint,
        journal: Journal,
        waiting: list[StepRecord],
        asks: list[ApprovalRecord],
        decided: dict[tuple[str, str], ApprovalRecord],
    ) -> str | None:
        """Stop in `requires_action` (its earlier and new open decisions, `decided` as the tool step
        read them, are listed in the pause's response); "paused", or None if nothing was pending."""
        open_asks = [a for a in decided.values() if a.status == "pending"] + asks
        output = journal.transcript() + [approval_item(a) for a in open_asks]
        waiting_calls = [
            key[1] for key, row in journal.calls.items() if row.kind == "client" and row.status == "pending"
        ] + [row.call_id for row in waiting]
        snapshot = turn.snapshot(PAUSE_STATUS, output)
        snapshot["required_action"] = {
            "type": "tool_outputs_or_approvals",
            "call_ids": waiting_calls,
            "approval_ids": [a.id for a in open_asks],
        }
        input_tokens, cached_tokens, output_tokens, _ = journal.usage()
        snapshot["usage"] = usage_object(input_tokens, output_tokens, cached_tokens)
        final = cp.emit({"type": PAUSED_EVENT, "response": snapshot}, announce=False)
        paused = await asyncio.to_thread(
            self.store.runs.pause, cp.lease, waiting, cp.take(), [approval_row(a) for a in asks]
        )
        if paused:
            cp.announce(final)
            return "paused"
        return None

    # -- the end ----------------------------------------------------------------------------------

    async def _end(
        self,
        turn: PreparedTurn,
        cp: RunCheckpoint,
        journal: Journal,
        status: str,
        *,
        reason: str | None = None,
        error: SREError | None = None,
    ) -> None:
        """The run's last commit: its response is written and the run ends, with its last events. Its
        items join the conversation, unless it failed or was cancelled before any tool ran (then the
        conversation stays as it was, and the client may simply retry); calls it never ran get an
        output saying why."""
        keep = status not in ("failed", "cancelled") or journal.tool_calls_done() > 0
        why = f"The call did not run: the response ended {status}" + (f" ({reason})." if reason else ".")
        transcript = journal.transcript(close=why) if keep else []
        input_tokens, cached_tokens, output_tokens, _ = journal.usage()
        body = dict(turn.body)
        body["usage"] = usage_object(input_tokens, output_tokens, cached_tokens)
        if status == "incomplete":
            body["incomplete_details"] = {"reason": reason or "max_output_tokens"}
        if error is not None:
            body["error"] = {"code": error.code or "server_error", "message": error.message}
        turn.body = body
        now = int(time.time())
        turn.completed_at = now
        snapshot = turn.snapshot(status, transcript, now if status != "failed" else None)
        final = cp.emit({"type": FINAL_EVENT[status], "response": snapshot}, announce=False)
        output = [ITEM_ADAPTER.validate_python(i) for i in transcript]
        await asyncio.to_thread(
            self.store.responses.commit_turn,
            turn.commit(status, output, model_call=journal.last_call, run=(cp.lease, cp.take()), keep=keep),
        )
        cp.announce(final)
