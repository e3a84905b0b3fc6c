"""Context sources: what may go into a model call, offered as candidates.

A `ContextSource` is given the turn (`TurnContext`: the caller, the agent version, the conversation's
window, the new input, the run's own items, the time and the model's token counter) and returns
`Candidate`s: each with a section, a stable id, its content (an item or text), its tokens, a score
and its provenance. Sources never see each other and never decide what fits: the assembler alone
owns the budget. The built-in sources are the instructions, the conversation's history and the
turn's tool outputs (plus the turn's input, which always goes in); memory, knowledge and an
application's own sources plug in beside them. No store access here: the engine reads the window.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from sre.models.tokens import PromptCounter
from sre.types.agents import AgentDefinition
from sre.types.context import Reason
from sre.types.items import (
    AnyItem,
    Compaction,
    FunctionCallOutput,
    InputText,
    Message,
    ModelItem,
    item_from_json,
)
from sre.types.records import AgentVersion, Caller, Window

# Where an item candidate sits in the prompt: history first (by position), then the new input, then
# the run's own items. Text candidates (instructions, memory, knowledge) go into the instructions.
HISTORY, INPUT, RUN = 0, 1, 2


NO_PROVENANCE: dict[str, Any] = {}  # shared: a history item's provenance is its position, `order`


@dataclass(slots=True)
class Candidate:
    source: str
    id: str  # stable: an item's id, or a name such as "instructions:agent"
    section: str
    tokens: int  # as the model counts it, framing included
    score: float  # higher goes in first within its section
    item: ModelItem | None = None  # the content as an item of the prompt...
    text: str | None = None  # ...or as text added to the instructions
    order: tuple[int, int] = (HISTORY, 0)  # an item's place in the prompt (history: its position)
    provenance: dict[str, Any] = field(default_factory=lambda: NO_PROVENANCE)
    required: bool = False  # goes in (perhaps cut, if `cuttable`) or the call cannot be made
    cuttable: bool = False  # text that may be cut to fit, with a marker saying how to get the rest
    excluded_reason: Reason | None = None  # the source's own verdict: superseded, not permitted


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What every source is given about the model call being assembled."""

    caller: Caller
    agent: AgentVersion | None
    definition: AgentDefinition | None
    conversation_id: str | None  # the conversation the caller named, if any
    window: Window  # the conversation's newest items, read by the engine
    input_items: Sequence[AnyItem]  # the turn's new input (ids assigned)
    run_items: Sequence[ModelItem]  # the run's own items so far (earlier steps' outputs)
    agent_instructions: str | None
    request_instructions: str | None
    now: float
    step: int
    counter: PromptCounter


@runtime_checkable
class ContextSource(Protocol):
    """Offers candidates for one model call. `contiguous` sources (history) are taken in score order
    and stop at the first that does not fit, so what goes in has no gaps."""

    name: str
    contiguous: bool

    async def candidates(self, turn: TurnContext) -> Sequence[Candidate]: ...


def summary_message(compaction: Compaction) -> Message:
    """How a compaction item reaches a model: its summary as a user-role message."""
    covers = compaction.covers
    span = (
        f" (items {covers.first_item_id} to {covers.last_item_id})"
        if covers is not None and covers.first_item_id
        else ""
    )
    text = f"[Summary of the earlier conversation{span}]\n{compaction.summary or ''}"
    return Message(id=compaction.id, role="user", content=[InputText(text=text)])


class InstructionsSource:
    """The agent's instructions, then the request's own: required, never cut."""

    name = "instructions"
    contiguous = False

    async def candidates(self, turn: TurnContext) -> Sequence[Candidate]:
        out: list[Candidate] = []
        for key, text in (("agent", turn.agent_instructions), ("request", turn.request_instructions)):
            if text:
                out.append(
                    Candidate(
                        source=self.name,
                        id=f"instructions:{key}",
                        section="instructions",
                        tokens=turn.counter.text(text) + 1,  # and the blank line that joins them
                        score=1.0,
                        text=text,
                        required=True,
                        provenance={"from": key},
                    )
                )
        return out


class HistorySource:
    """The conversation's stored items, newest first by score: a stored compaction summary stands
    first for the items it covers; a stored tool output may be cut to fit."""

    name = "history"
    contiguous = True
    cache_size = 4096  # candidates of recent windows' items (each model counts its own)

    def __init__(self) -> None:
        # An item's candidate never changes for one model's counter: consecutive turns of a
        # conversation share nearly all of their window, so most are reused.
        self._cache: OrderedDict[tuple[int, str], Candidate] = OrderedDict()

    async def candidates(self, turn: TurnContext) -> Sequence[Candidate]:
        window = turn.window
        out: list[Candidate] = []
        estimated = not turn.counter.exact  # the store's own estimate is the count: reuse it
        counter_key = id(turn.counter)
        cache = self._cache
        # A compaction item in the turn's own input stands for everything before it.
        replaced: Reason | None = (
            "superseded" if any(isinstance(i, Compaction) for i in turn.input_items) else None
        )
        for stored in window.items:
            key = (counter_key, stored.id)
            found = cache.get(key)
            if found is not None:
                out.append(found if replaced is None else replace(found, excluded_reason=replaced))
                continue
            item = item_from_json(stored.raw)
            if isinstance(item, Compaction):  # an older summary, superseded by the window's own
                out.append(
                    Candidate(
                        source=self.name,
                        id=stored.id,
                        section="history",
                        tokens=stored.tokens,
                        score=stored.seq / (stored.seq + 1),
                        item=summary_message(item),
                        order=(HISTORY, stored.seq),
                        provenance={"compaction": True},
                        excluded_reason="superseded",
                    )
                )
                continue
            made = Candidate(
                source=self.name,
                id=stored.id,
                section="history",
                tokens=stored.tokens if estimated else turn.counter.item(item),
                score=stored.seq / (stored.seq + 1),  # the newest scores highest, below a summary's 1
                item=item,
                order=(HISTORY, stored.seq),
                cuttable=isinstance(item, FunctionCallOutput),
            )
            cache[key] = made
            if len(cache) > self.cache_size:
                cache.popitem(last=False)
            out.append(made if replaced is None else replace(made, excluded_reason=replaced))
        if window.compaction is not None:
            compaction = item_from_json(window.compaction.raw)
            assert isinstance(compaction, Compaction)
            summary = summary_message(compaction)
            out.append(
                Candidate(
                    source=self.name,
                    id=window.compaction.id,
                    section="history",
                    tokens=turn.counter.item(summary),
                    score=1.0,  # it goes in first: it stands for everything older
                    item=summary,
                    order=(HISTORY, window.start_seq),
                    provenance={"compaction": True, "item_seq": window.compaction.seq},
                    excluded_reason=replaced,
                )
            )
        return out


def _turn_items(turn: TurnContext, tool_outputs: bool) -> list[Candidate]:
    out: list[Candidate] = []
    last_summary = max(
        (i for i, item in enumerate(turn.input_items) if isinstance(item, Compaction)), default=-1
    )
    for group, items in ((INPUT, turn.input_items), (RUN, turn.run_items)):
        for index, raw in enumerate(items):
            item: ModelItem = summary_message(raw) if isinstance(raw, Compaction) else raw
            if isinstance(item, FunctionCallOutput) != tool_outputs:
                continue
            section = "tool_outputs" if tool_outputs else "input"
            superseded = group == INPUT and index < last_summary  # the input's own summary stands for it
            out.append(
                Candidate(
                    source=section,
                    id=item.id or f"{'input' if group == INPUT else 'run'}:{index}",
                    section=section,
                    tokens=turn.counter.item(item),
                    score=0.0 if superseded else 1.0,
                    item=item,
                    order=(group, index),
                    provenance={"from": "input" if group == INPUT else "run"},
                    required=not superseded,
                    cuttable=tool_outputs and not superseded,
                    excluded_reason="superseded" if superseded else None,
                )
            )
    return out


class InputSource:
    """The turn's new input and the run's own items so far (its model outputs): they always go in."""

    name = "input"
    contiguous = False

    async def candidates(self, turn: TurnContext) -> Sequence[Candidate]:
        return _turn_items(turn, tool_outputs=False)


class ToolOutputsSource:
    """The turn's tool outputs (sent by the client, or from the run's own tool calls): never dropped,
    so no call loses its output, but cut to the `tool_outputs` section's share when too long."""

    name = "tool_outputs"
    contiguous = False

    async def candidates(self, turn: TurnContext) -> Sequence[Candidate]:
        return _turn_items(turn, tool_outputs=True)


def default_sources() -> list[ContextSource]:
    return [InstructionsSource(), HistorySource(), InputSource(), ToolOutputsSource()]
