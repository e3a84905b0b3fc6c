"""Context assembly: one model call's prompt, chosen from every source's candidates under one budget.

The budget is the model's window less the output's reserve. The required parts go in first: the
instructions, the turn's new input and the run's own items, and a marker at least for each of the
turn's tool outputs; what remains is split across the sections by the context policy
(`sre.context.budget.allot`), and within a section candidates go in by score (a contiguous source,
the history, stops at the first that does not fit, so what goes in has no gaps). A tool output too
long for its room is cut with a marker saying how much was cut and where the rest is. When the
history no longer fits and the policy compacts, the oldest of it is summarised into a compaction item
(`sre.context.compaction`) and the call is assembled again around the summary; when compaction fails,
the call falls back to truncation and says why. The final prompt is counted once more with the
model's own counter and never exceeds the budget. Every candidate's fate is written to the
`ContextManifest`. Reads nothing from the store but what compaction needs; writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sre.context.budget import allot, cut_text, fair_shares, marker
from sre.context.compaction import CompactionFailed, CompactionResult, Compactor
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
    KNOWN_SECTIONS,
    REQUIRED_SECTIONS,
    CompactionNote,
    ContextManifest,
    ContextPolicy,
    ManifestEntry,
    Reason,
    SectionPolicy,
    SectionTotals,
    WindowArithmetic,
)
from sre.types.errors import InvalidRequest
from sre.types.items import Compaction, FunctionCall, FunctionCallOutput, Message, ModelItem, item_from_json
from sre.types.records import ModelCallRecord, StoredItem

MAX_ENTRIES = 200  # manifest entries per call; beyond, runs of like entries are merged
MIN_CUT = 16  # tokens of content worth keeping when a text is cut (else only the marker goes in)


class ContextOverflow(InvalidRequest):
    """What must go into the call does not fit the model's window."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="input", code="context_length_exceeded")


def output_reserve(context_window: int, max_output_tokens: int | None) -> int:
    """Tokens kept free for the model's answer: what the request allows, else a quarter of the
    window up to 4,096."""
    return max_output_tokens or min(4096, context_window // 4)


@dataclass(slots=True)
class Choice:
    candidate: Candidate
    included: bool = False
    tokens_in: int = 0
    reason: Reason | None = None
    cut: bool = False
    content: ModelItem | str | None = None  # what goes in (cut, where it was)


@dataclass
class Selection:
    choices: list[Choice]
    policies: dict[str, SectionPolicy]
    allotted: dict[str, int]
    context_window: int
    reserve: int
    fixed: int
    required: int
    available: int

    @property
    def prompt_budget(self) -> int:
        return self.context_window - self.reserve

    def history_left_out(self) -> bool:
        return any(
            c.candidate.section == "history" and not c.included and c.reason == "budget" for c in self.choices
        )

    def section_offered(self, section: str) -> int:
        return sum(c.candidate.tokens for c in self.choices if c.candidate.section == section)


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


Where = Callable[[Candidate], str]


def _fits_whole(choice: Choice, room: int) -> bool:
    return choice.candidate.tokens <= room


class _Selector:
    """One pass of selection over a fixed set of candidates."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        contiguous: set[str],
        policy: ContextPolicy,
        context_window: int,
        reserve: int,
        fixed: int,
        counter: PromptCounter,
        where: Where,
    ) -> None:
        # A call the turn's own tool output answers goes in with it, wherever it is.
        answered = {
            c.item.call_id for c in candidates if c.required and isinstance(c.item, FunctionCallOutput)
        }
        self.choices = [
            Choice(replace(c, required=True, cuttable=False, section="input"))
            if not c.required and isinstance(c.item, FunctionCall) and c.item.call_id in answered
            else Choice(c)
            for c in candidates
        ]
        self.contiguous = contiguous
        self.counter = counter
        self.where = where
        self.context_window = context_window
        self.reserve = reserve
        self.fixed = fixed
        sections = sorted({c.section for c in candidates})
        self.policies = policy.all_sections([s for s in sections if s not in REQUIRED_SECTIONS])

    def marker_only(self, choice: Choice) -> int:
        text = marker(choice.candidate.tokens, choice.candidate.tokens, self.where(choice.candidate))
        return self.counter.per_message + self.counter.text(text) + 4

    def run(self) -> Selection:
        budget = self.context_window - self.reserve
        required = 0
        floors: dict[str, int] = {}
        for choice in self.choices:
            c = choice.candidate
            if c.required and not c.cuttable:
                required += c.tokens
            elif c.required:
                floors[c.section] = floors.get(c.section, 0) + min(c.tokens, self.marker_only(choice))
        available = budget - self.fixed - required
        if available < sum(floors.values()):
            raise ContextOverflow(
                f"The instructions, the input and the turn's own items ({required + sum(floors.values())} "
                f"tokens, with {self.fixed} of framing and tool definitions) and the output's reserve "
                f"({self.reserve}) exceed the model's context window ({self.context_window} tokens)."
            )
        for name in floors:
            self.policies.setdefault(name, SectionPolicy())
        demand: dict[str, int] = {}
        for choice in self.choices:
            c = choice.candidate
            if c.excluded_reason is None and not (c.required and not c.cuttable):
                demand[c.section] = demand.get(c.section, 0) + c.tokens
        allotted = allot(available, self.policies, demand, floors)
        used = dict.fromkeys(allotted, 0)
        for choice in self.choices:
            c = choice.candidate
            if c.excluded_reason is not None:
                choice.reason = c.excluded_reason
            elif c.required and not c.cuttable:
                self._take(choice, c.tokens)
        for section in allotted:
            used[section] = self._fill_required(section, allotted[section])
            used[section] += self._fill(section, allotted[section] - used[section])
        # What a section could not use flows to sections that left candidates out.
        left = available - sum(used.values())
        for section in sorted(allotted, key=lambda s: self.policies[s].share, reverse=True):
            if left <= 0:
                break
            cap = self.policies[section].max_tokens
            room = left if cap is None else min(left, cap - used[section])
            if room > 0:
                extra = self._fill(section, room)
                used[section] += extra
                left -= extra
        self._drop_orphans()
        return Selection(
            choices=self.choices,
            policies=self.policies,
            allotted=allotted,
            context_window=self.context_window,
            reserve=self.reserve,
            fixed=self.fixed,
            required=required,
            available=available,
        )

    def _take(self, choice: Choice, tokens: int, content: ModelItem | str | None = None) -> None:
        c = choice.candidate
        choice.included = True
        choice.reason = None
        choice.tokens_in = tokens
        choice.content = content if content is not None else (c.item if c.item is not None else c.text)

    def _cut(self, choice: Choice, room: int) -> int:
        """Put a cut copy of a cuttable candidate in `room` tokens; return the tokens it takes."""
        c = choice.candidate
        full = self._text_of(c)
        where = self.where(c)
        frame = self.counter.per_message + 4 if c.item is not None else 1
        keep = room - frame - self.counter.text(marker(c.tokens, c.tokens + 1, where))
        if keep >= MIN_CUT:
            kept = cut_text(full, keep, self.counter)
            cut_tokens = max(1, c.tokens - frame - self.counter.text(kept))
            text = kept + marker(cut_tokens, c.tokens, where)
        else:
            text = marker(c.tokens, c.tokens, where)
        content: ModelItem | str = self._with_text(c, text)
        tokens = self.counter.item(content) if not isinstance(content, str) else self.counter.text(text) + 1
        self._take(choice, tokens, content)
        choice.cut = True
        return tokens

    @staticmethod
    def _text_of(c: Candidate) -> str:
        if c.item is None:
            return c.text or ""
        if isinstance(c.item, FunctionCallOutput):
            return c.item.output_text()
        if isinstance(c.item, Message):
            return c.item.text()
        return c.item.arguments

    @staticmethod
    def _with_text(c: Candidate, text: str) -> ModelItem | str:
        if c.item is None:
            return text
        if isinstance(c.item, FunctionCallOutput):
            # No id: a cut copy must never be mistaken (or cached) for the stored item.
            return c.item.model_copy(update={"output": text, "id": None})
        return c.item

    def _fill_required(self, section: str, room: int) -> int:
        """The section's required, cuttable candidates (the turn's tool outputs): each whole if
        they all fit, else cut to a fair share of the room."""
        cut = [ch for ch in self.choices if ch.candidate.section == section and ch.candidate.required
               and ch.candidate.cuttable]  # fmt: skip
        if not cut:
            return 0
        shares = fair_shares([ch.candidate.tokens for ch in cut], room)
        used = 0
        for choice, share in zip(cut, shares, strict=True):
            if choice.candidate.tokens <= share:
                self._take(choice, choice.candidate.tokens)
                used += choice.candidate.tokens
            else:
                used += self._cut(choice, max(share, self.marker_only(choice)))
        return used

    def _fill(self, section: str, room: int) -> int:
        """Optional candidates of the section by score, within `room`; return the tokens taken."""
        waiting = [
            ch
            for ch in self.choices
            if ch.candidate.section == section
            and not ch.candidate.required
            and not ch.included
            and ch.candidate.excluded_reason is None
        ]
        waiting.sort(key=lambda ch: ch.candidate.score, reverse=True)
        used = 0
        stopped: set[str] = set()
        for choice in waiting:
            c = choice.candidate
            contiguous = c.source in self.contiguous
            if contiguous and c.source in stopped:
                choice.reason = "budget"
                continue
            if c.tokens <= room - used:
                self._take(choice, c.tokens)
                used += c.tokens
                continue
            if c.cuttable and room - used >= self.marker_only(choice) + MIN_CUT:
                used += self._cut(choice, room - used)
                if contiguous:
                    stopped.add(c.source)
                continue
            choice.reason = "budget" if contiguous or c.tokens > room else "score"
            if contiguous:
                stopped.add(c.source)
        return used

    def _drop_orphans(self) -> None:
        """A tool output whose call was left out is left out too (no provider takes it alone)."""
        calls = {
            ch.candidate.item.call_id
            for ch in self.choices
            if ch.included and isinstance(ch.candidate.item, FunctionCall)
        }
        for choice in self.choices:
            item = choice.candidate.item
            if (
                choice.included
                and not choice.candidate.required
                and isinstance(item, FunctionCallOutput)
                and item.call_id not in calls
            ):
                choice.included = False
                choice.tokens_in = 0
                choice.content = None
                choice.reason = "orphaned"
                choice.cut = False


def render(selection: Selection) -> tuple[str | None, list[ModelItem]]:
    """The prompt: text candidates joined into the instructions (instructions first, then each
    section's in score order), items in their places."""
    texts = [ch for ch in selection.choices if ch.included and isinstance(ch.content, str)]
    section_rank = {s: i for i, s in enumerate(("instructions", *KNOWN_SECTIONS))}
    texts.sort(key=lambda ch: (section_rank.get(ch.candidate.section, 99), -ch.candidate.score))
    instructions = "\n\n".join(str(ch.content) for ch in texts) or None
    placed = [ch for ch in selection.choices if ch.included and not isinstance(ch.content, str)]
    placed.sort(key=lambda ch: ch.candidate.order)
    return instructions, [
        ch.content for ch in placed if ch.content is not None and not isinstance(ch.content, str)
    ]


def _entries(choices: list[Choice]) -> list[ManifestEntry]:
    """Each source's candidates in prompt order, neighbours that shared one fate as one entry."""
    by_source: dict[str, list[Choice]] = {}
    for choice in choices:
        by_source.setdefault(choice.candidate.source, []).append(choice)
    runs: list[
        list[Any]
    ] = []  # source, section, first, last, count, tokens, in, score, included, cut, reason
    for group in by_source.values():
        group.sort(key=lambda ch: ch.candidate.order)
        run: list[Any] | None = None
        for ch in group:
            c = ch.candidate
            if (
                run is not None
                and run[1] == c.section
                and run[8] == ch.included
                and run[10] == ch.reason
                and (run[9] > 0) == ch.cut
            ):
                run[3] = c.id
                run[4] += 1
                run[5] += c.tokens
                run[6] += ch.tokens_in
                run[7] = max(run[7], c.score)
                run[9] += 1 if ch.cut else 0
                continue
            run = [
                c.source,
                c.section,
                c.id,
                None,
                1,
                c.tokens,
                ch.tokens_in,
                c.score,
                ch.included,
                int(ch.cut),
                ch.reason,
            ]
            runs.append(run)
    if len(runs) > MAX_ENTRIES:  # merge like runs regardless of their neighbours
        merged: dict[tuple[Any, ...], list[Any]] = {}
        for r in runs:
            key = (r[0], r[1], r[8], r[10])
            found = merged.get(key)
            if found is None:
                merged[key] = list(r)
            else:
                found[3] = r[3] or r[2]
                for i in (4, 5, 6, 9):
                    found[i] += r[i]
                found[7] = max(found[7], r[7])
        runs = list(merged.values())
    return [
        ManifestEntry.model_construct(
            source=r[0],
            section=r[1],
            first_id=r[2],
            last_id=r[3],
            count=r[4],
            tokens=r[5],
            tokens_in=r[6],
            score=round(r[7], 4),
            included=r[8],
            cut=r[9],
            reason=r[10],
        )
        for r in runs
    ]


def build_manifest(
    selection: Selection,
    *,
    model: str,
    step: int,
    exact: bool,
    used: int,
    compaction: CompactionNote | None,
    older_items: bool,
) -> ContextManifest:
    sums: dict[str, list[int]] = {}  # offered, used, candidates, included
    for name in (*REQUIRED_SECTIONS, *selection.policies):
        sums[name] = [0, 0, 0, 0]
    for ch in selection.choices:
        t = sums[ch.candidate.section]
        t[0] += ch.candidate.tokens
        t[2] += 1
        if ch.included:
            t[1] += ch.tokens_in
            t[3] += 1
    totals: list[SectionTotals] = []
    for name, (offered, used_tokens, candidates, included) in sums.items():
        policy = selection.policies.get(name)
        allotted = selection.allotted.get(name, 0) if policy is not None else used_tokens
        if not (candidates or allotted or (policy is not None and policy.share)):
            continue
        totals.append(
            SectionTotals.model_construct(
                section=name,
                share=None if policy is None else policy.share,
                min_tokens=0 if policy is None else policy.min_tokens,
                max_tokens=None if policy is None else policy.max_tokens,
                offered=offered,
                allotted=allotted,
                used=used_tokens,
                candidates=candidates,
                included=included,
            )
        )
    window = WindowArithmetic(
        context_window=selection.context_window,
        output_reserve=selection.reserve,
        prompt_budget=selection.prompt_budget,
        fixed=selection.fixed,
        required=selection.required,
        available=selection.available,
        used=used,
    )
    return ContextManifest(
        model=model,
        step=step,
        exact=exact,
        window=window,
        sections=totals,
        entries=_entries(selection.choices),
        compaction=compaction,
        older_items=older_items,
    )


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
        return _Selector(
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
        summary_tokens = min(1024, max(48, (room - kept) // 2))
        return await self.compactor.compact(
            model=model,
            window=turn.window,
            items=older,
            summary_tokens=summary_tokens,
            tenant_id=turn.caller.tenant_id,
            principal_id=turn.caller.principal_id,
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
