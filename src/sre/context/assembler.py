"""Context assembly: one model call's prompt, chosen from every source's candidates under one budget.

`ContextAssembler.assemble` gathers the sources' candidates and has them selected
(`sre.context.selection`: the model's window less the output's reserve, required parts first, the rest
split across sections by the context policy). When the history no longer fits and the policy
compacts, the oldest of it is summarised into a compaction item (`sre.context.compaction`) and the
call is selected again around the summary; when compaction fails, the call falls back to truncation
and says why. The final prompt is counted once more with the model's own counter and never exceeds
the budget; every candidate's fate is written to the manifest (`sre.context.manifest`). Reads nothing
from the store but what compaction needs; writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from sre.context.compaction import CompactionFailed, CompactionResult, Compactor
from sre.context.manifest import build_manifest
from sre.context.selection import ContextOverflow, Selection, Selector, output_reserve, render
from sre.context.sources import (
    HISTORY,
    Candidate,
    ContextSource,
    TurnContext,
    default_sources,
    summary_message,
)
from sre.models.base import ChatModel, FunctionTool, tool_dicts
from sre.models.tokens import PromptCounter
from sre.types.context import (
    CompactionNote,
    ContextManifest,
    ContextPolicy,
)
from sre.types.items import Compaction, ModelItem, item_from_json
from sre.types.records import ModelCallRecord, StoredItem


@dataclass
class ContextRequest:
    """What the engine says about the call being assembled."""

    model: ChatModel
    policy: ContextPolicy
    max_output_tokens: int | None
    tools: Sequence[FunctionTool]
    truncation: str  # "auto" or "disabled"
    compaction_model: ChatModel | None = None  # None: this call does not compact
    response_id: str | None = None
    made: CompactionResult | None = None  # a compaction this run made at an earlier step


@dataclass
class AssembledContext:
    instructions: str | None
    items: list[ModelItem]
    manifest: ContextManifest
    compaction: CompactionResult | None = None  # made for this call: stored with the turn
    compaction_calls: list[ModelCallRecord] = field(default_factory=list)  # also when it failed


class ContextAssembler:
    """The sources, and the one place that decides what of them goes into a model call."""

    def __init__(
        self, sources: Sequence[ContextSource] | None = None, compactor: Compactor | None = None
    ) -> None:
        self.sources: list[ContextSource] = list(sources) if sources is not None else default_sources()
        self.compactor = compactor

    def add_source(self, source: ContextSource) -> None:
        if any(s.name == source.name for s in self.sources):
            raise ValueError(f"a context source named {source.name!r} is already registered")
        self.sources.append(source)

    async def candidates(self, turn: TurnContext) -> list[Candidate]:
        out: list[Candidate] = []
        for source in self.sources:
            out.extend(await source.candidates(turn))
        return out

    def select(
        self, turn: TurnContext, request: ContextRequest, candidates: Sequence[Candidate]
    ) -> Selection:
        counter = turn.counter
        fixed = counter.base + counter.tools(tool_dicts(request.tools))
        if any(c.text is not None for c in candidates):
            fixed += counter.instructions(" ") - counter.text(" ")  # the instructions' framing
        return Selector(
            candidates,
            {s.name for s in self.sources if s.contiguous},
            request.policy,
            request.model.info.context_window,
            output_reserve(request.model.info.context_window, request.max_output_tokens),
            fixed,
            counter,
            lambda c: _where(turn, request, c),
        ).run()

    async def assemble(self, turn: TurnContext, request: ContextRequest) -> AssembledContext:
        candidates = await self.candidates(turn)
        selection = self.select(turn, request, candidates)
        note: CompactionNote | None = None
        made: CompactionResult | None = request.made
        calls: list[ModelCallRecord] = []
        if made is not None:  # an earlier step of this run compacted: use that summary
            candidates = _around(candidates, made, turn.counter, turn.window.compaction)
            selection = self.select(turn, request, candidates)
            note = _note("used", made)
            made = None
        elif (
            request.compaction_model is not None
            and self.compactor is not None
            and _wants(selection, turn, request)
        ):
            try:
                made = await self._compact(turn, request, selection)
                calls = made.calls
                candidates = _around(candidates, made, turn.counter, turn.window.compaction)
                selection = self.select(turn, request, candidates)
                note = _note("created", made)
            except CompactionFailed as exc:
                calls = exc.calls
                note = CompactionNote(status="failed", model=request.compaction_model.name, error=str(exc))
                made = None
        if note is None and turn.window.compaction is not None:
            stored = item_from_json(turn.window.compaction.raw)
            if isinstance(stored, Compaction):
                note = CompactionNote(
                    status="used",
                    item_id=stored.id,
                    first_item_id=stored.covers.first_item_id if stored.covers else None,
                    last_item_id=stored.covers.last_item_id if stored.covers else None,
                    items=stored.covers.items if stored.covers else 0,
                )
        compacting = request.compaction_model is not None and self.compactor is not None
        # The history overflows the window (not merely its share of it, which is the policy's call).
        overflows = turn.window.truncated or selection.section_offered("history") > selection.available
        if (
            overflows
            and selection.history_left_out() | turn.window.truncated
            and request.truncation != "auto"
            and not compacting
        ):
            raise ContextOverflow(
                f"The conversation exceeds the context window of model '{request.model.name}'. Send "
                "truncation='auto' to drop the oldest items, or context_management to compact them."
            )
        instructions, items = render(selection)
        counter = turn.counter
        used = counter.prompt(instructions, items, tool_dicts(request.tools)).tokens
        while used > selection.prompt_budget:  # token boundaries where texts join: drop more
            optional = [ch for ch in selection.choices if ch.included and not ch.candidate.required]
            if not optional:
                raise ContextOverflow(
                    f"The prompt ({used} tokens) does not fit the model's budget ({selection.prompt_budget})."
                )
            worst = min(optional, key=lambda ch: (ch.candidate.score, ch.candidate.order))
            worst.included, worst.tokens_in, worst.content, worst.reason = False, 0, None, "budget"
            instructions, items = render(selection)
            used = counter.prompt(instructions, items, tool_dicts(request.tools)).tokens
        manifest = build_manifest(
            selection,
            model=request.model.name,
            step=turn.step,
            exact=counter.exact,
            used=used,
            compaction=note,
            older_items=turn.window.truncated,
        )
        return AssembledContext(instructions, items, manifest, made, calls)

    async def _compact(
        self, turn: TurnContext, request: ContextRequest, selection: Selection
    ) -> CompactionResult:
        assert self.compactor is not None and request.compaction_model is not None
        policy = request.policy
        room = selection.allotted.get("history", 0)
        if policy.compact_threshold is not None:
            room = min(room, policy.compact_threshold)
        keep_budget = int(room * policy.keep_recent)
        history = sorted(
            (
                ch
                for ch in selection.choices
                if ch.candidate.source == "history" and ch.candidate.excluded_reason is None
                and not ch.candidate.provenance.get("compaction")
            ),
            key=lambda ch: ch.candidate.order,
            reverse=True,
        )  # fmt: skip
        kept, cut_at = 0, len(history)
        for index, ch in enumerate(history):
            if kept + ch.candidate.tokens > keep_budget:
                cut_at = index
                break
            kept += ch.candidate.tokens
        kept_seq = (
            min(ch.candidate.order[1] for ch in history[:cut_at])
            if cut_at
            else (turn.window.items[-1].seq + 1 if turn.window.items else 0)
        )
        read = [s for s in turn.window.items if s.seq < kept_seq]
        model = request.compaction_model
        unread, reaches = self.compactor.older_items(
            turn.caller.tenant_id, turn.window, model.info.context_window * 4
        )
        older = unread + read if reaches else unread  # one unbroken run from the last summary
        summary_tokens = min(512, max(48, (room - kept) // 2))
        return await self.compactor.compact(
            model=model,
            window=turn.window,
            items=older,
            summary_tokens=summary_tokens,
            tenant_id=turn.caller.tenant_id,
            principal_id=turn.caller.principal_id,
            key_id=turn.caller.key_id,
            response_id=request.response_id,
            turn_counter=turn.counter,
        )


def _wants(selection: Selection, turn: TurnContext, request: ContextRequest) -> bool:
    if selection.history_left_out() or turn.window.truncated:
        return True
    threshold = request.policy.compact_threshold
    return threshold is not None and selection.section_offered("history") > threshold


def _around(
    candidates: Sequence[Candidate], made: CompactionResult, counter: PromptCounter, stored: StoredItem | None
) -> list[Candidate]:
    """The candidates once `made` stands for the history up to its last item: what it covers is
    left out as compacted, an older summary as superseded, and its summary goes first."""
    out: list[Candidate] = []
    for c in candidates:
        if c.source == "history" and c.provenance.get("compaction"):
            out.append(replace(c, excluded_reason="superseded"))
        elif c.source == "history" and c.order[1] <= made.through_seq:
            out.append(replace(c, excluded_reason="compacted"))
        else:
            out.append(c)
    summary = summary_message(made.item)
    out.append(
        Candidate(
            source="history",
            id=made.item.id or "compaction",
            section="history",
            tokens=counter.item(summary),
            score=1.0,
            item=summary,
            order=(HISTORY, made.through_seq),
            provenance={"compaction": True, "new": True},
        )
    )
    return out


def _note(status: str, made: CompactionResult) -> CompactionNote:
    covers = made.item.covers
    return CompactionNote(
        status="created" if status == "created" else "used",
        item_id=made.item.id,
        first_item_id=covers.first_item_id if covers else None,
        last_item_id=covers.last_item_id if covers else None,
        items=covers.items if covers else 0,
        model=made.calls[0].model if made.calls else None,
        summary_tokens=len(made.item.summary or "") // 4,
    )


def _where(turn: TurnContext, request: ContextRequest, c: Candidate) -> str:
    item_id = c.item.id if c.item is not None and c.item.id else c.id
    if turn.conversation_id is not None:
        return (
            f"the whole text is item {item_id} of conversation {turn.conversation_id} "
            f"(GET /v1/conversations/{turn.conversation_id}/items/{item_id})"
        )
    if request.response_id is not None:
        return f"the whole text is item {item_id}, stored with response {request.response_id}"
    return f"the whole text is item {item_id}"
