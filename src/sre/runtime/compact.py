"""The runtime's `POST /v1/responses/compact`: the context a request would send, compacted.

As OpenAI's: the history of `previous_response_id` and the request's `input` become the user messages
among them, followed by one compaction item that summarises all of it; nothing is stored but the
model calls' usage. A client sends that output back as the input of later turns (with `store: false`,
or in a new conversation), and SRE reads the compaction item's summary in place of what it covers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from sre.context import CompactionFailed
from sre.engine.agents import parse_agent_ref
from sre.engine.shapes import usage_object
from sre.runtime.base import _coerce
from sre.runtime.quotas import QuotasAPI
from sre.types.errors import InvalidRequest, ModelError
from sre.types.ids import new_id
from sre.types.items import Message, parse_input_items
from sre.types.records import Caller, StoredItem, Window
from sre.types.requests import CompactResponse

MAX_HISTORY_TOKENS = 200_000  # of a chain's newest items read for one compaction


class CompactAPI(QuotasAPI):
    async def compact_response(
        self, caller: Caller, request: CompactResponse | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CompactResponse, request)
        await self._check_tokens(caller)
        name = body.model
        compaction_name: str | None = None
        ref = parse_agent_ref(name)
        if ref is not None:
            from sre.engine.agents import load_agent

            _, definition = await asyncio.to_thread(load_agent, self.store, caller.tenant_id, ref)
            name, compaction_name = definition.model, definition.compaction_model
        model = self.models.resolve(compaction_name or self.settings.context.compaction_model or name)
        items = parse_input_items(body.input if body.input is not None else [])
        window = Window(items=[], tokens=0, truncated=False)
        if body.previous_response_id is not None:
            previous = await asyncio.to_thread(
                partial(
                    self.store.responses.get,
                    caller.tenant_id,
                    body.previous_response_id,
                    param="previous_response_id",
                    viewer=caller.viewer,
                    write=True,
                )
            )
            window = await asyncio.to_thread(
                self.store.responses.context, caller.tenant_id, None, previous, MAX_HISTORY_TOKENS
            )
        stored = list(window.items) + [_as_stored(caller, item, index) for index, item in enumerate(items)]
        newest = next((s for s in reversed(stored) if s.type == "compaction"), None)
        if (
            newest is not None and newest not in window.items
        ):  # a compaction item of the input replaces what came before
            window = Window(items=[], tokens=0, truncated=False, compaction=newest, start_seq=newest.seq - 1)
            stored = [s for s in stored if s.seq > newest.seq]
        elif window.compaction is not None:
            stored = [s for s in stored if s.seq > window.start_seq]
        if body.instructions:
            stored.insert(
                0, _as_stored(caller, Message(role="developer", content=[]), -1, text=body.instructions)
            )
        if not stored:
            raise InvalidRequest(
                "There is nothing to compact: send 'input' or 'previous_response_id'.", param="input"
            )
        summary_tokens = max(256, min(2048, model.info.context_window // 8))
        assert self.context.compactor is not None
        try:
            made = await self.context.compactor.compact(
                model=model,
                window=window,
                items=stored,
                summary_tokens=summary_tokens,
                tenant_id=caller.tenant_id,
                principal_id=caller.principal_id,
                key_id=caller.key_id,
                response_id=None,
                turn_counter=model.prompt_counter(),
                positions=False,
            )
        except CompactionFailed as exc:
            for call in exc.calls:
                await asyncio.to_thread(self.store.responses.record_model_call, call)
            raise ModelError(f"Compaction failed: {exc}", code="compaction_failed") from None
        for call in made.calls:
            await asyncio.to_thread(self.store.responses.record_model_call, call)
        users = [
            s.data for s in stored if s.type == "message" and s.data.get("role") == "user" and s.seq >= 0
        ]
        input_tokens = sum(c.input_tokens for c in made.calls)
        output_tokens = sum(c.output_tokens for c in made.calls)
        return {
            "id": new_id("resp"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [*users, made.item.model_dump(mode="json", exclude_none=True)],
            "usage": usage_object(input_tokens, output_tokens),
        }


def _as_stored(caller: Caller, item: Any, index: int, *, text: str | None = None) -> StoredItem:
    """An input item in the shape the compactor reads (a position past any stored one)."""
    data = item.model_dump(mode="json", exclude_none=True)
    if text is not None:
        data["content"] = [{"type": "input_text", "text": text}]
    data["id"] = data.get("id") or new_id("msg" if item.type == "message" else "item")
    return StoredItem(
        tenant_id=caller.tenant_id,
        conversation_id="",
        seq=(2**40 + index) if index >= 0 else -1,
        id=data["id"],
        type=item.type,
        raw=json.dumps(data),
        response_id=None,
        created_at=int(time.time()),
        tokens=0,
        data=data,
        origin="input",
    )
