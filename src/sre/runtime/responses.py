"""The runtime's responses: turns now or in the background, their streams, cancel, token counts,
usage, and reading and deleting stored responses."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from sre.engine.shapes import item_list, stored_response_object
from sre.runtime.base import RuntimeParts, _coerce, _page_args
from sre.types.errors import InvalidRequest, NotFound
from sre.types.records import Caller
from sre.types.requests import (
    CountInputTokens,
    CreateResponse,
)


class ResponsesAPI(RuntimeParts):
    async def create_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run one turn to the end and return the response object; with `background`, queue it and
        return the queued response at once."""
        turn = await self.turns.prepare(caller, _coerce(CreateResponse, request))
        if turn.request.background:
            return await self.background.enqueue(turn)
        return await self.turns.respond(turn)

    async def stream_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Validate and read now (errors raise here), then return the turn's event stream."""
        turn = await self.turns.prepare(caller, _coerce(CreateResponse, request))
        if turn.request.background:  # queued, then followed through the run's event log
            await self.background.enqueue(turn)
            return await self.background.follow(caller, turn.response_id, None)
        return self.turns.stream(turn)

    async def stream_background_response(
        self, caller: Caller, response_id: str, *, starting_after: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A background response's events after `starting_after`, following it until it ends."""
        return await self.background.follow(caller, response_id, starting_after)

    async def cancel_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        """Cancel a queued or in-progress background response; `Conflict` once it has finished."""
        return await self.background.cancel(caller, response_id)

    async def count_input_tokens(
        self, caller: Caller, request: CountInputTokens | Mapping[str, Any]
    ) -> dict[str, Any]:
        """The input tokens `create_response` would send for this request, without calling the model."""
        turn = await self.turns.prepare(caller, _coerce(CountInputTokens, request).as_response_request())
        counted = await asyncio.to_thread(turn.model.count_tokens, turn.model_request)
        return {"object": "response.input_tokens", "input_tokens": counted.tokens, "exact": counted.exact}

    async def usage(
        self, caller: Caller, *, start: int | None = None, end: int | None = None
    ) -> dict[str, Any]:
        """The caller's tenant's model usage by principal, model and day (UTC)."""
        if start is not None and end is not None and end <= start:
            raise InvalidRequest("'end_time' must be after 'start_time'.", param="end_time")
        rows = await asyncio.to_thread(self.store.responses.usage, caller.tenant_id, start=start, end=end)
        return {"object": "list", "data": [{"object": "usage.bucket", **dataclasses.asdict(r)} for r in rows]}

    async def get_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            try:
                record = self.store.responses.get(caller.tenant_id, response_id)
            except NotFound:  # a background run not committed (yet, or ever: cancelled, failed)
                unfinished = self.background.response_object(caller.tenant_id, response_id)
                if unfinished is None:
                    raise
                return unfinished
            return stored_response_object(record, self.store.responses.output_items(record))

        return await asyncio.to_thread(read)

    async def delete_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self.store.responses.delete, caller.tenant_id, response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def list_input_items(
        self,
        caller: Caller,
        response_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> dict[str, Any]:
        _page_args(limit, order)
        page = await asyncio.to_thread(
            self.store.responses.list_input_items,
            caller.tenant_id,
            response_id,
            after=after,
            limit=limit,
            order=order,
        )
        return item_list(page.data, page.has_more)
