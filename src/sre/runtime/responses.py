"""The runtime's responses: turns now or in the background, their streams, cancel, token counts,
usage, reading (with what went into each model call) and deleting stored responses."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

from sre.engine.shapes import item_list, stored_response_object
from sre.engine.turn import PreparedTurn
from sre.governance import approval_check
from sre.governance.rules import approver_labels, may_decide
from sre.runtime.base import _coerce, _page_args
from sre.runtime.quotas import QuotasAPI
from sre.types.context import ContextManifest
from sre.types.errors import Conflict, InvalidRequest, ModelError, NotFound
from sre.types.records import Caller, RunRecord
from sre.types.requests import (
    INCLUDABLE,
    CountInputTokens,
    CreateResponse,
)
from sre.types.status import FINAL_TYPES, REQUIRES_ACTION, TERMINAL


async def _final(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The response a run's events end with (or pause at); a failed run raises its error."""
    final: dict[str, Any] | None = None
    async for event in events:
        if event["type"] in FINAL_TYPES:
            final = event["response"]
    if final is None:
        raise ModelError("the run ended without a final event", code="server_error")
    if final.get("status") == "failed":
        error = final.get("error") or {}
        raise ModelError(error.get("message") or "the run failed", code=error.get("code") or "server_error")
    return final


async def _single(event: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield event


class ResponsesAPI(QuotasAPI):
    async def _paused_run(self, caller: Caller, request: CreateResponse) -> RunRecord | None:
        """The run a request continues when it answers a paused response; a run still going is a 409."""
        if request.previous_response_id is None:
            return None
        run = await asyncio.to_thread(self.store.runs.get, caller.tenant_id, request.previous_response_id)
        if run is None or run.status in TERMINAL:
            return None
        if not caller.viewer.may(run.principal_id, write=True) and not await self._approver_of(caller, run):
            raise NotFound(f"Response with id '{run.response_id}' not found.", param="previous_response_id")
        if run.status != REQUIRES_ACTION:
            raise Conflict(
                f"Previous response '{run.response_id}' is still {run.status}; continue from it once it "
                "has finished.",
                param="previous_response_id",
                code="previous_response_not_finished",
            )
        return run

    async def _approver_of(self, caller: Caller, run: RunRecord) -> bool:
        """Whether the caller is named as an approver of one of the paused run's open approvals (it
        may answer them through the response, as the run's own principal may)."""
        principal, groups = await asyncio.to_thread(self._identity, caller)
        page = await asyncio.to_thread(
            partial(
                self.store.approvals.list,
                caller.tenant_id,
                status="pending",
                response_id=run.response_id,
                seen_by=approver_labels(principal, groups),
                limit=100,
            )
        )
        return any(a.approvers and may_decide(a, principal, groups) for a in page.data)

    async def _resume(self, caller: Caller, run: RunRecord, request: CreateResponse) -> int | None:
        """Apply the answers; the sequence number to follow the resumed run after, or None if it is
        still waiting for other answers."""
        principal = await asyncio.to_thread(self.auth.principal, caller)
        await self.background.resume(caller, run, request.input, approval_check(principal), principal.name)
        current = await asyncio.to_thread(self.store.runs.get, caller.tenant_id, run.response_id)
        if current is None or current.status == REQUIRES_ACTION:
            return None
        return await asyncio.to_thread(self.store.runs.last_sequence, caller.tenant_id, run.response_id)

    @staticmethod
    def _check_free(turn: PreparedTurn) -> None:
        """A plain turn is no run and cannot wait in its conversation's queue: while a run is active
        there (as `prepare` read it), it is refused rather than let in between the run's items."""
        conversation_id = turn.request.conversation_id
        active = turn.window.active_run
        if conversation_id is not None and active is not None:
            raise Conflict(
                f"Conversation '{conversation_id}' has an active response ('{active.response_id}', "
                f"{active.status}); wait for it to finish or cancel it.",
                param="conversation",
                code="conversation_busy",
            )

    async def create_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run a turn to its end (or pause) and return the response object; with `background`, queue
        it and return the queued response at once. Answers to a paused response resume its run.
        Refused (429) when the caller has used its tokens of the day or, for a new turn, has no place
        left under its concurrency limits."""
        body = _coerce(CreateResponse, request)
        await self._check_tokens(caller)
        paused = await self._paused_run(caller, body)
        if paused is not None:
            after = await self._resume(caller, paused, body)
            if after is None or body.background:  # an approver who answered sees what it answered
                response = await self._read_response(caller, paused.response_id, gate=False)
            else:
                response = await _final(
                    self.background.watch(caller, paused.response_id, None, after=after, events=False)
                )
        else:
            turn = await self.turns.prepare(caller, body)
            if turn.request.background:
                async with self._places(caller) as limits:
                    response = await self.background.enqueue(turn, limits)
            elif turn.durable:
                async with self._places(caller) as limits:
                    lease = await self.background.start(turn, inline=True, limits=limits)
                response = await _final(
                    self.background.watch(caller, turn.response_id, lease, turn, events=False)
                )
            else:
                self._check_free(turn)
                async with self._places(caller) as limits:
                    free = await self._take_place(caller, limits)
                response = await self.plain.respond(turn, on_end=free)
        if "context_manifest" in (body.include or []):
            response["context_manifest"] = await self._manifests(caller, response["id"])
        return response

    async def stream_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Validate and read now (errors raise here), then return the turn's event stream."""
        body = _coerce(CreateResponse, request)
        await self._check_tokens(caller)
        paused = await self._paused_run(caller, body)
        if paused is not None:
            after = await self._resume(caller, paused, body)
            if after is None:
                return _single(
                    {
                        "type": "response.completed",
                        "response": await self.get_response(caller, paused.response_id),
                        "sequence_number": 0,
                    }
                )
            return self.background.watch(caller, paused.response_id, None, after=after)
        turn = await self.turns.prepare(caller, body)
        if turn.request.background:  # queued, then followed through the run's event log
            async with self._places(caller) as limits:
                await self.background.enqueue(turn, limits)
            return await self.background.follow(caller, turn.response_id, None)
        if turn.durable:
            async with self._places(caller) as limits:
                lease = await self.background.start(turn, inline=True, limits=limits)
            return self.background.watch(caller, turn.response_id, lease, turn)
        self._check_free(turn)
        async with self._places(caller) as limits:
            free = await self._take_place(caller, limits)
        return self.plain.stream(turn, on_end=free)

    async def stream_background_response(
        self, caller: Caller, response_id: str, *, starting_after: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A background response's events after `starting_after`, following it until it ends."""
        await self._gate(caller, response_id)
        return await self.background.follow(caller, response_id, starting_after)

    async def cancel_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        """Cancel a queued or in-progress background response; `Conflict` once it has finished."""
        await self._gate(caller, response_id, write=True)
        return await self.background.cancel(caller, response_id)

    async def count_input_tokens(
        self, caller: Caller, request: CountInputTokens | Mapping[str, Any]
    ) -> dict[str, Any]:
        """The input tokens `create_response` would send for this request, without calling the model."""
        turn = await self.turns.prepare(caller, _coerce(CountInputTokens, request).as_response_request())
        assert turn.prepared is not None
        sent = turn.model_request(turn.prepared.items, turn.prepared.instructions)
        counted = await asyncio.to_thread(turn.model.count_tokens, sent)
        return {"object": "response.input_tokens", "input_tokens": counted.tokens, "exact": counted.exact}

    async def usage(
        self, caller: Caller, *, start: int | None = None, end: int | None = None
    ) -> dict[str, Any]:
        """The caller's model usage by model and day (UTC); an admin's or auditor's, the whole
        tenant's by principal."""
        if start is not None and end is not None and end <= start:
            raise InvalidRequest("'end_time' must be after 'start_time'.", param="end_time")
        mine = None if caller.viewer.oversight else caller.principal_id
        rows = await asyncio.to_thread(
            partial(self.store.responses.usage, caller.tenant_id, start=start, end=end, principal_id=mine)
        )
        return {"object": "list", "data": [{"object": "usage.bucket", **dataclasses.asdict(r)} for r in rows]}

    async def get_response(
        self, caller: Caller, response_id: str, *, include: list[str] | None = None
    ) -> dict[str, Any]:
        """The response object; with `include=["context_manifest"]`, SRE's own, what went into each
        of its model calls."""
        for index, value in enumerate(include or []):
            if value not in INCLUDABLE:
                raise InvalidRequest(
                    f"Invalid value for 'include[{index}]': {value!r}. Supported values are: "
                    + ", ".join(repr(v) for v in INCLUDABLE)
                    + ".",
                    param=f"include[{index}]",
                    code="invalid_value",
                )
        response = await self._read_response(caller, response_id)
        if "context_manifest" in (include or []):
            response["context_manifest"] = await self._manifests(caller, response_id)
        return response

    async def response_context(self, caller: Caller, response_id: str) -> list[dict[str, Any]]:
        """What went into each model call of a response: one manifest per call, in order (`sre
        responses context`)."""
        await self._read_response(caller, response_id)  # a 404 for what the caller cannot see
        return await self._manifests(caller, response_id)

    async def _manifests(self, caller: Caller, response_id: str) -> list[dict[str, Any]]:
        calls = await asyncio.to_thread(self.store.responses.model_calls, caller.tenant_id, response_id)
        out: list[dict[str, Any]] = []
        for call in calls:
            manifest = ContextManifest.from_stored(call.manifest)
            if manifest is None:
                continue
            out.append({"model_call_id": call.id, "status": call.status, **manifest.model_dump(mode="json")})
        out.sort(key=lambda m: (m["step"], m["model_call_id"]))
        return out

    async def _gate(self, caller: Caller, response_id: str, *, write: bool = False) -> None:
        """A response another principal owns is not found by the caller (as another tenant's), but
        for reading by an admin or auditor, which is audited; an unknown id is the route's to refuse."""
        owner = await asyncio.to_thread(self.store.responses.owner, caller.tenant_id, response_id)
        if owner is None:
            return
        if not caller.viewer.may(owner, write=write):
            raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
        if not write:
            await self._oversee(caller, owner, False, "response.read", "response", response_id)

    async def _read_response(self, caller: Caller, response_id: str, *, gate: bool = True) -> dict[str, Any]:
        if gate:
            await self._gate(caller, response_id)

        def read() -> dict[str, Any]:
            try:
                record = self.store.responses.get(caller.tenant_id, response_id)
            except NotFound:  # a durable run not committed (yet, or ever: cancelled, failed)
                unfinished = self.background.response_object(caller.tenant_id, response_id)
                if unfinished is not None:
                    return unfinished
                # A foreground run's row goes in the commit that writes its response: it may have
                # ended between the two reads.
                record = self.store.responses.get(caller.tenant_id, response_id)
            return stored_response_object(record, self.store.responses.output_items(record))

        return await asyncio.to_thread(read)

    async def delete_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        await asyncio.to_thread(
            partial(self.store.responses.delete, caller.tenant_id, response_id, viewer=caller.viewer)
        )
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
        await self._gate(caller, response_id)
        page = await asyncio.to_thread(
            self.store.responses.list_input_items,
            caller.tenant_id,
            response_id,
            after=after,
            limit=limit,
            order=order,
        )
        return item_list(page.data, page.has_more)
