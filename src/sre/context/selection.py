"""Selection: which of a model call's candidates go in, under one budget, and the prompt they make.

`Selector.run` takes the required parts first (the instructions, the turn's input and the run's own
items, and at least a marker for each of the turn's tool outputs), splits what remains across the
sections by the context policy (`sre.context.budget.allot`), and fills each section by score; a
contiguous source (the history) stops at the first candidate that does not fit, so what goes in has
no gaps; a cuttable text (a tool output) too long for its room is cut with a marker saying where the
rest is; what a section leaves unused flows to the others; a tool output whose call was left out is
left out too. `render` makes the prompt of a selection. Pure: no I/O, no models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sre.context.budget import allot, cut_text, fair_shares, marker
from sre.context.sources import Candidate
from sre.models.tokens import PromptCounter
from sre.types.context import KNOWN_SECTIONS, REQUIRED_SECTIONS, ContextPolicy, Reason, SectionPolicy
from sre.types.errors import InvalidRequest
from sre.types.items import FunctionCall, FunctionCallOutput, Message, ModelItem

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


Where = Callable[[Candidate], str]


class Selector:
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
        self.by_section: dict[str, list[Choice]] = {}
        for choice in self.choices:
            self.by_section.setdefault(choice.candidate.section, []).append(choice)
        self.policies = policy.all_sections(
            [s for s in sorted(self.by_section) if s not in REQUIRED_SECTIONS]
        )

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
        cut = [
            ch for ch in self.by_section.get(section, ()) if ch.candidate.required and ch.candidate.cuttable
        ]
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
            for ch in self.by_section.get(section, ())
            if not ch.included and not ch.candidate.required and ch.candidate.excluded_reason is None
        ]
        if not waiting:
            return 0
        waiting.sort(key=lambda ch: ch.candidate.score, reverse=True)
        used = 0
        stopped: set[str] = set()
        sources = self.contiguous
        for choice in waiting:
            c = choice.candidate
            if c.tokens <= room - used and c.source not in stopped:  # the common case, first
                choice.included, choice.reason, choice.tokens_in = True, None, c.tokens
                choice.content = c.item if c.item is not None else c.text
                used += c.tokens
                continue
            contiguous = c.source in sources
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
        if not any(
            ch.included and not ch.candidate.required and type(ch.candidate.item) is FunctionCallOutput
            for ch in self.choices
        ):
            return
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
