"""The run engine: a turn's step loop, from its journal to its next pause or its end.

Every turn runs here: a plain turn (one model step, its ledger a `TurnLedger`) and a durable run
(`RunCheckpoint`: model steps and tool steps, each committed before the next). `_next` reads the
journal and takes the next step, which returns a `StepOutcome`. A model step (`sre.engine.step`)
assembles the context, streams the model and records the call. A tool step looks at each function
call the model made: a client-side function pauses a durable run in `requires_action` until the
client sends its output (a plain turn simply ends there, as OpenAI's do); a call the agent's policy
marks pauses it for an approver; any other server-side call runs (concurrently with the step's
others) and its output commits as soon as it is known. A call that is not idempotent commits a
`started` row first, so after a crash its outcome is known to be unknown: the run pauses and asks for
a decision instead of running it again. A recovered run rebuilds its transcript from the journal,
so nothing that completed runs twice. `_end` is a turn's ending, in one place: its items, response,
model calls (and a durable run's status and last events) commit in one transaction, then the final
event is announced. Holds no SQL and no HTTP.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sre.context import ContextAssembler
from sre.engine.journal import Journal, Ledger, output_item
from sre.engine.shapes import usage_object
from sre.engine.step import Continue, End, Pause, StepOutcome, model_step
from sre.engine.turn import PreparedTurn
from sre.store import Store
from sre.tools.base import ToolError
from sre.tools.policy import denied, needs_approval
from sre.types.audit import AuditEvent, Outcome
from sre.types.ids import new_id
from sre.types.items import ITEM_ADAPTER
from sre.types.records import ApprovalRecord, StepRecord
from sre.types.status import (
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL_EVENT,
    IN_PROGRESS,
    INCOMPLETE,
    REQUIRES_ACTION,
)
from sre.types.steps import CallStepData


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


def tool_event(
    turn: PreparedTurn, step: int, call: dict[str, Any], outcome: Outcome, reason: str
) -> AuditEvent:
    """The audit event of a server-side tool call: ran, refused or failed, and why; never its
    arguments or output."""
    return AuditEvent(
        action="tool.call",
        resource_type="tool_call",
        resource_id=call["call_id"],
        actor=turn.caller.actor_id or turn.caller.principal_id,
        on_behalf_of=turn.caller.principal_id if turn.caller.actor_id else None,
        outcome=outcome,
        agent=turn.agent.name if turn.agent is not None else None,
        agent_version=turn.agent.version if turn.agent is not None else None,
        details={"tool": call["name"], "response_id": turn.response_id, "step": step, "reason": reason},
    )


class RunEngine:
    def __init__(self, store: Store, context: ContextAssembler) -> None:
        self.store = store
        self.context = context

    async def execute(self, turn: PreparedTurn, ledger: Ledger, journal: Journal | None = None) -> None:
        """Drive the turn from its journal until it pauses or ends (its last commit)."""
        journal = journal if journal is not None else Journal()
        if not journal.model:  # a first attempt, or a retry of one that committed nothing
            ledger.emit({"type": "response.created", "response": turn.snapshot(IN_PROGRESS, [])})
        ledger.emit(
            {"type": "response.in_progress", "response": turn.snapshot(IN_PROGRESS, journal.transcript())}
        )
        while True:
            outcome = await self._next(turn, ledger, journal)
            if isinstance(outcome, Continue):
                continue
            if isinstance(outcome, Pause):
                return
            await self._end(turn, ledger, journal, outcome)
            return

    async def _next(self, turn: PreparedTurn, ledger: Ledger, journal: Journal) -> StepOutcome:
        """The journal's next step, taken."""
        if ledger.cancel:
            return End(CANCELLED)
        last = journal.last_model()
        if last is not None:
            number, data = last
            if data.status != COMPLETED:
                return End(data.status, reason=data.reason)
            calls = [i for i in data.items if i["type"] == "function_call"]
            if not calls or not ledger.durable:  # a plain turn's calls are its client's: it ends
                return End(COMPLETED)
            open_calls = [c for c in calls if journal.result(number + 1, c["call_id"]) is None]
            if open_calls:
                return await self._tool_step(turn, ledger, journal, number + 1, open_calls)
        limits = turn.definition.limits if turn.definition is not None else None
        if limits is not None and limits.max_steps is not None and len(journal.model) >= limits.max_steps:
            return End(INCOMPLETE, reason="max_steps")
        if (
            limits is not None
            and limits.deadline_seconds is not None
            and time.time() > turn.created_at + limits.deadline_seconds
        ):
            return End(INCOMPLETE, reason="deadline")
        number = 0 if last is None else last[0] + 2
        return await model_step(self.context, turn, ledger, journal, number)

    # -- a tool step ------------------------------------------------------------------------------

    async def _tool_step(
        self, turn: PreparedTurn, ledger: Ledger, journal: Journal, step: int, calls: list[dict[str, Any]]
    ) -> StepOutcome:
        """Run, record or defer each open call."""
        tenant_id, response_id = turn.caller.tenant_id, turn.response_id
        policy = turn.definition.approval if turn.definition is not None else None
        asks_possible = (policy is not None and (policy.tools_requiring_approval or policy.rules)) or any(
            (step, c["call_id"]) in journal.calls for c in calls
        )
        decided = await asyncio.to_thread(self._approvals, tenant_id, response_id) if asks_possible else {}
        client = {t.name for t in turn.request.tools or []}
        # What the principal the run acts for may use, as of this step (a narrowed grant holds
        # from the next step on, whatever the run was started with).
        grants = self.store.directory.cached_grants(tenant_id, turn.caller.principal_id)
        if grants is None:
            grants = await asyncio.to_thread(
                self.store.directory.grants_of, tenant_id, turn.caller.principal_id
            )
        limits = turn.definition.limits if turn.definition is not None else None
        recorded: list[StepRecord] = []  # outputs known without running anything
        audited: list[AuditEvent] = []  # and what each of them was, for the audit trail
        runnable: list[tuple[dict[str, Any], dict[str, Any]]] = []
        waiting: list[StepRecord] = []  # client calls to wait for
        asks: list[ApprovalRecord] = []  # new decisions to ask for
        pending = False  # an earlier decision is still open

        def record(call: dict[str, Any], output: str, outcome: Outcome, reason: str) -> None:
            done = CallStepData(output=output_item(call["call_id"], output))
            recorded.append(StepRecord(step, call["call_id"], "tool", "completed", done))
            audited.append(tool_event(turn, step, call, outcome, reason))

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

        def decide(call: dict[str, Any], arguments: dict[str, Any], kind: str) -> None:
            nonlocal pending
            decision = decided.get((call["call_id"], kind))
            if decision is None:
                ask(call, kind)
            elif decision.status == "pending":
                pending = True
            elif decision.status == "approved":
                runnable.append((call, arguments))
            else:
                unknown = kind == "unknown_outcome"
                record(
                    call,
                    self._refusal(decision, unknown=unknown),
                    "error" if unknown else "denied",
                    "outcome_unknown" if unknown else "approval_denied",
                )

        for call in calls:
            name, call_id = call["name"], call["call_id"]
            row = journal.calls.get((step, call_id))
            if name in client:
                if row is None:
                    waiting.append(StepRecord(step, call_id, "client", "pending", CallStepData(name=name)))
                else:
                    pending = True
                continue
            bound = turn.bound.get(name)
            if bound is None:
                record(
                    call,
                    _error_output(ToolError(f"There is no tool named '{name}'.", code="unknown_tool")),
                    "denied",
                    "not_granted",  # the agent was not given it (whatever the model was told)
                )
                continue
            if not grants.allows_tool(name):
                error = ToolError(
                    f"Tool '{name}' is not granted to the principal this run acts for; it did not run.",
                    code="not_granted",
                )
                record(call, _error_output(error), "denied", "principal_not_granted")
                continue
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except ValueError:
                arguments = None
            if not isinstance(arguments, dict):
                error = ToolError("The arguments are not a JSON object.", code="invalid_arguments")
                record(call, _error_output(error), "error", "invalid_arguments")
                continue
            if policy is not None and denied(policy, name, arguments):
                error = ToolError(
                    f"The agent's policy refuses tool '{name}' here; it did not run.", code="denied"
                )
                record(call, _error_output(error), "denied", "policy_denied")
            elif row is not None and row.status == "started" and not bound.spec.idempotent:
                decide(call, arguments, "unknown_outcome")
            elif policy is not None and needs_approval(policy, name, arguments):
                decide(call, arguments, "approval")
            else:
                runnable.append((call, arguments))
        if (
            limits is not None
            and limits.max_tool_calls is not None
            and journal.tool_calls_done() + len(runnable) > limits.max_tool_calls
        ):
            return End(INCOMPLETE, reason="max_tool_calls")
        if recorded:
            await self._commit_results(ledger, journal, recorded, audited)
        if runnable:
            await asyncio.gather(*(self._run_call(turn, ledger, journal, step, c, a) for c, a in runnable))
        if waiting or asks or pending:
            return await self._pause(turn, ledger, journal, waiting, asks, decided)
        return Continue()

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
        self, ledger: Ledger, journal: Journal, rows: list[StepRecord], audit: list[AuditEvent]
    ) -> None:
        offset = len(journal.transcript())
        for index, row in enumerate(rows):
            assert isinstance(row.data, CallStepData)
            item = row.data.output
            ledger.emit({"type": "response.output_item.added", "output_index": offset + index, "item": item})
            ledger.emit({"type": "response.output_item.done", "output_index": offset + index, "item": item})
        await ledger.commit_step(rows, [], None, audit)
        for row in rows:
            journal.calls[(row.step, row.call_id)] = row

    async def _run_call(
        self,
        turn: PreparedTurn,
        ledger: Ledger,
        journal: Journal,
        step: int,
        call: dict[str, Any],
        arguments: dict[str, Any],
    ) -> None:
        bound = turn.bound[call["name"]]
        call_id = call["call_id"]
        if not bound.spec.idempotent:  # from here on, a crash leaves the outcome unknown
            started = StepRecord(step, call_id, "tool", "started", CallStepData(name=call["name"]))
            await ledger.commit_step([started], [], None)
            journal.calls[(step, call_id)] = started
        key = f"{turn.response_id}:{step}:{call_id}"
        outcome: Outcome = "failure"
        reason = "error"
        try:
            # The source enforces the tool's timeout; this bound only catches a source that does not.
            output = await asyncio.wait_for(
                bound.source.call(call["name"], arguments, key=key), bound.spec.timeout + 5
            )
            outcome, reason = "success", "ran"
        except TimeoutError:
            output = _error_output(
                ToolError(
                    f"Tool '{call['name']}' did not finish within {bound.spec.timeout:g} s.", code="timeout"
                )
            )
            reason = "timeout"
        except ToolError as exc:
            output = _error_output(exc)
            reason = exc.code or "error"
        except Exception as exc:  # a source's own bug: the model hears of it, the run goes on
            output = _error_output(ToolError(f"{type(exc).__name__}: {exc}"))
        done = StepRecord(
            step, call_id, "tool", "completed", CallStepData(output=output_item(call_id, output))
        )
        event = tool_event(turn, step, call, outcome, reason)
        await self._commit_results(ledger, journal, [done], [event])

    async def _pause(
        self,
        turn: PreparedTurn,
        ledger: Ledger,
        journal: Journal,
        waiting: list[StepRecord],
        asks: list[ApprovalRecord],
        decided: dict[tuple[str, str], ApprovalRecord],
    ) -> StepOutcome:
        """Stop in `requires_action` (its earlier and new open decisions, `decided` as the tool step
        read them, are listed in the pause's response); go on if nothing was left pending after all."""
        open_asks = [a for a in decided.values() if a.status == "pending"] + asks
        output = journal.transcript() + [approval_item(a) for a in open_asks]
        waiting_calls = [
            key[1] for key, row in journal.calls.items() if row.kind == "client" and row.status == "pending"
        ] + [row.call_id for row in waiting]
        snapshot = turn.snapshot(REQUIRES_ACTION, output)
        snapshot["required_action"] = {
            "type": "tool_outputs_or_approvals",
            "call_ids": waiting_calls,
            "approval_ids": [a.id for a in open_asks],
        }
        usage = journal.usage()
        snapshot["usage"] = usage_object(usage.input_tokens, usage.output_tokens, usage.cached_tokens)
        final = ledger.emit({"type": FINAL_EVENT[REQUIRES_ACTION], "response": snapshot}, announce=False)
        if not await ledger.pause(waiting, asks):
            return Continue()
        ledger.announce(final)
        if waiting_calls and open_asks:
            return Pause("client_tools_and_approvals")
        return Pause("client_tools" if waiting_calls else "approvals")

    # -- the end ----------------------------------------------------------------------------------

    async def _end(self, turn: PreparedTurn, ledger: Ledger, journal: Journal, end: End) -> None:
        """The turn's last commit: its response is written (and a durable run ends), with its last
        events. Its items join the conversation, unless it failed or was cancelled before any tool ran
        (then the conversation stays as it was, and the client may simply retry); calls it never ran
        get an output saying why."""
        status = end.status
        keep = status not in (FAILED, CANCELLED) or journal.tool_calls_done() > 0
        why = f"The call did not run: the response ended {status}" + (
            f" ({end.reason})." if end.reason else "."
        )
        transcript = journal.transcript(close=why if ledger.durable else None) if keep else []
        usage = journal.usage()
        body = dict(turn.body)
        body["usage"] = usage_object(usage.input_tokens, usage.output_tokens, usage.cached_tokens)
        if status == INCOMPLETE:
            body["incomplete_details"] = {"reason": end.reason or "max_output_tokens"}
        if end.error is not None:
            body["error"] = {"code": end.error.code or "server_error", "message": end.error.message}
        turn.body = body
        now = int(time.time())
        turn.completed_at = now
        snapshot = turn.snapshot(status, transcript, now if status != FAILED else None)
        final = ledger.emit({"type": FINAL_EVENT[status], "response": snapshot}, announce=False)
        output = [ITEM_ADAPTER.validate_python(i) for i in transcript]
        commit = turn.commit(status, output, model_calls=journal.unrecorded, keep=keep)
        journal.unrecorded = []
        await ledger.finish(commit, final, end.error)
