"""Compaction: the oldest history summarised by a model into a compaction item that stands for it.

`Compactor.compact` takes what the assembler leaves out of the history (and, when the window did not
reach that far, the older items it reads from the store) with the previous summary, and asks the
compaction model for a new summary: one call, or a few in a row when the items do not fit the
model's window at once. The result is a `Compaction` item naming the range it covers (first to last
item, and how many) and the position of its last item; the caller stores it with the turn, and
later turns read the summary instead of those items. A failure (the model errs, or answers nothing
usable) raises `CompactionFailed` with the reason; the caller falls back to truncation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from sre.context.budget import cut_text
from sre.models.base import ChatModel, ModelRequest, TextDelta, Usage
from sre.models.tokens import PromptCounter, item_text
from sre.store import Store
from sre.types.errors import SREError
from sre.types.ids import new_id
from sre.types.items import (
    Compaction,
    CompactionCovers,
    FunctionCall,
    FunctionCallOutput,
    InputText,
    Message,
    compaction_content,
    item_from_json,
)
from sre.types.records import ModelCallRecord, StoredItem, Window

MAX_CALLS = 4  # summarisation calls per compaction; what is left is compacted by the next turn
_INSTRUCTIONS = (
    "You condense conversations. Write a summary of the conversation below that lets an assistant "
    "continue it without the original: who the user is, the facts and preferences they stated, "
    "decisions made, open questions and tasks, and tool results that still matter. Plain sentences, "
    "no preamble, at most {words} words."
)


class CompactionFailed(Exception):
    """The summariser could not produce a usable summary; `str(exc)` says why, and `calls` are the
    model calls it made (they are recorded all the same: they were spent)."""

    def __init__(self, reason: str, calls: list[ModelCallRecord] | None = None) -> None:
        super().__init__(reason)
        self.calls = calls or []


@dataclass
class CompactionResult:
    item: Compaction
    through_seq: int
    calls: list[ModelCallRecord] = field(default_factory=list)


def _line(stored: StoredItem) -> str | None:
    item = item_from_json(stored.raw)
    if isinstance(item, Compaction):
        return None  # an older summary: the newest one is given separately
    if isinstance(item, Message):
        return f"{item.role}: {item.text()}"
    if isinstance(item, FunctionCall):
        return f"assistant called {item.name}({item.arguments})"
    if isinstance(item, FunctionCallOutput):
        return f"tool result: {item.output_text()}"
    return item_text(item)


class Compactor:
    def __init__(self, store: Store) -> None:
        self.store = store

    def older_items(self, tenant_id: str, window: Window, limit_tokens: int) -> tuple[list[StoredItem], bool]:
        """Items between the newest summary (or the start) and the window, oldest first, up to about
        `limit_tokens`: what the window did not reach; and whether they reach the window."""
        if not window.truncated or not window.items or window.conversation_id is None:
            return [], True
        return self.store.conversations.read_range(
            tenant_id,
            window.conversation_id,
            after_seq=window.start_seq,
            before_seq=window.items[0].seq,
            limit_tokens=limit_tokens,
        )

    async def compact(
        self,
        *,
        model: ChatModel,
        window: Window,
        items: Sequence[StoredItem],
        summary_tokens: int,
        tenant_id: str,
        principal_id: str,
        response_id: str | None,
        turn_counter: PromptCounter,
        positions: bool = True,
        key_id: str | None = None,
    ) -> CompactionResult:
        """Summarise the window's newest summary (if any) and `items` (oldest first, in one unbroken
        run from where that summary ends) into one compaction item of at most `summary_tokens`.
        Without `positions` (items from no conversation), the item names no position."""
        if not items:
            raise CompactionFailed("nothing to compact: the history's newest items alone overflow it")
        counter = model.prompt_counter()
        reserve = max(32, summary_tokens)
        instructions = _INSTRUCTIONS.format(words=max(20, summary_tokens * 3 // 4))
        room = model.info.context_window - reserve - counter.instructions(instructions) - counter.base
        room -= counter.per_message + 64
        if room < 64:
            raise CompactionFailed(
                f"the compaction model '{model.name}' has too small a window ({model.info.context_window} tokens)"
            )
        previous: Compaction | None = None
        if window.compaction is not None:
            parsed = item_from_json(window.compaction.raw)
            previous = parsed if isinstance(parsed, Compaction) else None
        summary = previous.summary if previous is not None and previous.summary else ""
        calls: list[ModelCallRecord] = []
        index = 0
        while index < len(items) and len(calls) < MAX_CALLS:
            text = f"Earlier summary:\n{summary}\n\nConversation since:\n" if summary else "Conversation:\n"
            used = counter.text(text)
            start = index
            while index < len(items):
                line = _line(items[index])
                if line is not None:
                    cost = counter.text(line) + 1
                    if used + cost > room:
                        if index > start:
                            break
                        line = cut_text(line, room - used - 8, counter) + " […]"
                        cost = room - used
                    text += line + "\n"
                    used += cost
                index += 1
            try:
                summary = await self._summarise(
                    model, instructions, text, reserve, calls, tenant_id, principal_id, response_id, key_id
                )
            except CompactionFailed as exc:
                raise CompactionFailed(str(exc), calls) from None
        last = items[index - 1]
        first_id, covered = items[0].id, index
        if previous is not None and window.compaction is not None:
            if window.compaction.origin == "input" or previous.covers is None:
                # A client's compaction stands for whatever came before it: the range starts there.
                first_id, covered = window.compaction.id, covered + 1
            else:
                first_id = previous.covers.first_item_id or first_id
                inside = window.compaction.seq <= last.seq  # the older summary item lies in the range
                covered += previous.covers.items + (1 if inside else 0)
        summary = cut_text(summary, summary_tokens, turn_counter)
        span = CompactionCovers(first_item_id=first_id, last_item_id=last.id, items=covered)
        item = Compaction(
            id=new_id("cmp"),
            encrypted_content=compaction_content(summary, span, last.seq if positions else None),
            created_by="sre",
            summary=summary,
            covers=span,
        )
        return CompactionResult(item=item, through_seq=last.seq, calls=calls)

    async def _summarise(
        self,
        model: ChatModel,
        instructions: str,
        text: str,
        reserve: int,
        calls: list[ModelCallRecord],
        tenant_id: str,
        principal_id: str,
        response_id: str | None,
        key_id: str | None,
    ) -> str:
        request = ModelRequest(
            items=[Message(role="user", content=[InputText(text=text)])],
            instructions=instructions,
            max_output_tokens=reserve,
            temperature=0.0,
        )
        started = time.perf_counter()
        parts: list[str] = []
        usage: Usage | None = None
        error: str | None = None
        try:
            stream = model.stream(request)
            try:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        parts.append(event.text)
                    elif isinstance(event, Usage):
                        usage = event
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
        except SREError as exc:
            error = f"the compaction model failed: {exc.message}"
        except Exception as exc:
            error = f"the compaction model failed: {type(exc).__name__}: {exc}"
        summary = "".join(parts).strip()
        if error is None and not summary:
            error = "the compaction model answered with no summary"
        counter = model.prompt_counter()
        input_tokens = usage.input_tokens if usage is not None else model.count_tokens(request).tokens
        output_tokens = usage.output_tokens if usage is not None else counter.text(summary)
        pricing = model.info.pricing
        calls.append(
            ModelCallRecord(
                tenant_id=tenant_id,
                id=new_id("mc"),
                response_id=response_id,
                principal_id=principal_id,
                key_id=key_id,
                model=model.name,
                provider=model.info.provider,
                status="failed" if error else "completed",
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                latency_ms=(time.perf_counter() - started) * 1000,
                manifest={"purpose": "compaction"},
                error=error,
                created_at=int(time.time()),
                tokens_exact=usage.exact if usage is not None else counter.exact,
                cost_usd=None if pricing is None else pricing.cost(input_tokens, output_tokens),
            )
        )
        if error is not None:
            raise CompactionFailed(error)
        return summary
