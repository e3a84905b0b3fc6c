"""The one model step every turn goes through, and what a step leads to.

A model step assembles the call's context (`sre.context`: every source under one budget, compacting
the history when the policy says so), streams the model into output items and events, counts the
usage and cost, and records the call with its context manifest. Plain turns, agent turns and
background runs all call it; what differs is only the ledger its events and commits go through. A
step returns a `StepOutcome`: `Continue` (run the next step), `Pause` (the run waits, its pause
committed) or `End` (the turn ends with a status and a reason), never bare strings or booleans.
A final answer that breaks the request's `text.format` (not JSON, or against a strict schema) ends
the turn `incomplete` with the reason `invalid_output`: its deltas have streamed, but it never
completes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from sre.context import ContextAssembler, ContextOverflow
from sre.engine.journal import Journal, Ledger
from sre.engine.output import OutputAssembler
from sre.engine.turn import PreparedTurn
from sre.models.base import ChatModel
from sre.store import LeaseLost
from sre.types.context import ContextManifest
from sre.types.errors import ModelError, SREError
from sre.types.formats import INVALID_OUTPUT, output_violation
from sre.types.ids import new_id
from sre.types.items import ITEM_ADAPTER, Compaction, ModelItem
from sre.types.records import ModelCallRecord, StepRecord
from sre.types.status import CANCELLED, COMPLETED, FAILED, INCOMPLETE, ResponseStatus
from sre.types.steps import CompactionStepData, ModelStepData, StepUsage


@dataclass(frozen=True, slots=True)
class Continue:
    """Run the next step."""


@dataclass(frozen=True, slots=True)
class Pause:
    """The run waits (committed) for client tool outputs or decisions."""

    waiting_for: Literal["client_tools", "approvals", "client_tools_and_approvals"]


@dataclass(frozen=True, slots=True)
class End:
    """The turn ends: its last commit writes its response with this status."""

    status: ResponseStatus
    reason: str | None = None  # an incomplete turn's: max_output_tokens, a limit's name, ...
    error: SREError | None = None  # a failed turn's


StepOutcome = Continue | Pause | End


def usage_of(model: ChatModel, prompt: ContextManifest, output: OutputAssembler) -> StepUsage:
    """A model call's usage: the upstream's report if it sent one, else the model's own counter
    (the prompt as the assembler counted it last)."""
    if output.usage is not None:
        u = output.usage
        return StepUsage(
            input_tokens=u.input_tokens,
            cached_tokens=u.cached_tokens,
            output_tokens=u.output_tokens,
            exact=u.exact,
        )
    counter = model.prompt_counter()
    return StepUsage(
        input_tokens=prompt.window.used, output_tokens=counter.text(output.output_text()), exact=prompt.exact
    )


def call_record(
    turn: PreparedTurn,
    usage: StepUsage,
    *,
    status: str,
    latency_ms: float,
    manifest: dict[str, object],
    error: SREError | None = None,
) -> ModelCallRecord:
    pricing = turn.model.info.pricing
    return ModelCallRecord(
        tenant_id=turn.caller.tenant_id,
        id=new_id("mc"),
        response_id=turn.response_id,  # also an unstored one's: its create can include the manifest
        principal_id=turn.caller.principal_id,
        key_id=turn.caller.key_id,
        model=turn.model.name,
        provider=turn.model.info.provider,
        status=status,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        tokens_exact=usage.exact,
        cost_usd=None
        if pricing is None
        else pricing.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        latency_ms=latency_ms,
        manifest=manifest,
        error=None if error is None else error.message,
        created_at=int(time.time()),
        agent=turn.agent.name if turn.agent is not None else None,
        agent_version=turn.agent.version if turn.agent is not None else None,
    )


def format_violation(turn: PreparedTurn, output: OutputAssembler) -> str | None:
    """Why a final answer breaks the turn's `text.format` (`None` when it honours it, or when the
    step called tools: the format is the final answer's, not a tool call's)."""
    if not turn.text_format.is_json or output.has_calls():
        return None
    return output_violation(turn.text_format, output.output_text())


async def model_step(
    context: ContextAssembler, turn: PreparedTurn, ledger: Ledger, journal: Journal, number: int
) -> StepOutcome:
    """Assemble, call the model, count, record; commit unless this is the turn's last step (that one
    commits with the turn's end)."""
    transcript = journal.transcript()
    run_items: list[ModelItem] = []
    for raw in transcript:
        item = ITEM_ADAPTER.validate_python(raw)
        if not isinstance(item, Compaction):
            run_items.append(item)
    try:
        assembled = await turn.assemble(context, run_items, number, journal.made_compaction())
    except ContextOverflow:
        return End(INCOMPLETE, reason="context_length_exceeded")
    journal.unrecorded.extend(assembled.compaction_calls)
    if assembled.compaction is not None:  # made now: it leads the turn's output
        made = assembled.compaction.item.model_dump(mode="json", exclude_none=True)
        note = assembled.manifest.compaction
        data = CompactionStepData(item=made, note={} if note is None else note.model_dump())
        row = StepRecord(number, "compaction", "compaction", "completed", data)
        journal.compaction = row
        journal.uncommitted.append(row)
        index = len(transcript)
        ledger.emit({"type": "response.output_item.added", "output_index": index, "item": made})
        ledger.emit({"type": "response.output_item.done", "output_index": index, "item": made})
        transcript.append(made)
    request = turn.model_request(assembled.items, assembled.instructions)
    output = OutputAssembler(events=ledger.events, offset=len(transcript))
    started = time.perf_counter()
    error: SREError | None = None
    try:
        stream = turn.model.stream(request)
        try:
            async for model_event in stream:
                for event in output.feed(model_event):
                    ledger.emit(event)
                if await ledger.after_chunk():
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
    manifest = assembled.manifest.to_stored()
    if error is not None or ledger.cancel:
        for event in output.close("incomplete"):
            ledger.emit(event)
        usage = usage_of(turn.model, assembled.manifest, output)
        ended = FAILED if error is not None else CANCELLED
        journal.unrecorded.append(
            call_record(turn, usage, status=ended, latency_ms=latency_ms, manifest=manifest, error=error)
        )
        return End(FAILED, error=error) if error is not None else End(CANCELLED)
    finish = output.finish.reason if output.finish is not None else None
    status: Literal["completed", "incomplete"] = (
        "incomplete" if finish in ("length", "content_filter") else "completed"
    )
    for event in output.close("completed"):
        ledger.emit(event)
    usage = usage_of(turn.model, assembled.manifest, output)
    items = [i.model_dump(mode="json", exclude_none=True) for i in output.items()]
    reason: str | None = (
        None if status == COMPLETED else ("max_output_tokens" if finish == "length" else finish)
    )
    violation = format_violation(turn, output) if status == COMPLETED else None
    if violation is not None:  # never a completed response whose text breaks its format
        status, reason = INCOMPLETE, INVALID_OUTPUT
    row = StepRecord(
        number,
        "",
        "model",
        "completed",
        ModelStepData(items=items, usage=usage, status=status, reason=reason),
    )
    journal.model[number] = row
    journal.uncommitted.append(row)
    journal.unrecorded.append(
        call_record(
            turn,
            usage,
            status=status,
            latency_ms=latency_ms,
            manifest=manifest,
            error=None if violation is None else ModelError(violation, code=INVALID_OUTPUT),
        )
    )
    if output.has_calls() and ledger.durable and status == COMPLETED:
        # Its calls come next: the step commits now, before any of them runs.
        rows, calls = journal.uncommitted, journal.unrecorded
        journal.uncommitted, journal.unrecorded = [], []
        await ledger.commit_step(rows, calls, number + 1)
    return Continue()
