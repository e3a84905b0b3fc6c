"""The runtime's quotas: counting a request, checking what a turn may start (tokens of the day, a place
under the concurrency limits), and the quota resources (a caller's limits and use; admins' overrides).

Every check asks `sre.governance.quotas` which limits bind the caller first, from memory: when none
does, nothing else happens (no thread, no database). The HTTP API counts each authenticated request
with `admit`; the responses, compaction and embeddings methods check their own limits, so the Python
API enforces them too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sre.governance.quotas import PLACE_SECONDS, RENEW_SECONDS, check_quota_admin, subjects_of
from sre.runtime.base import RuntimeParts, _coerce
from sre.store import LimitReached
from sre.types.errors import InvalidRequest, NotFound
from sre.types.lists import list_object
from sre.types.quotas import (
    CONCURRENT_RUNS,
    LIMITS,
    REQUESTS_PER_MINUTE,
    SUBJECTS,
    TOKENS_PER_DAY,
    Bound,
    SetQuota,
    Subject,
)
from sre.types.records import Caller

log = logging.getLogger("sre.quotas")

OnEnd = Callable[[], Awaitable[None]]


class QuotasAPI(RuntimeParts):
    async def admit(self, caller: Caller) -> None:
        """Count one request of the caller against its request rates; `QuotaExceeded` (429) over one.
        The HTTP API calls it once per authenticated request; the Python API's users, per request of
        their own."""
        bounds = await self._bounds(caller, REQUESTS_PER_MINUTE)
        if bounds:
            await asyncio.to_thread(self.quotas.count_request, caller, bounds)

    async def _bounds(self, caller: Caller, limit: str) -> list[Bound]:
        found = self.quotas.cached(caller, limit)
        return found if found is not None else await asyncio.to_thread(self.quotas.bounds, caller, limit)

    async def _check_tokens(self, caller: Caller) -> None:
        """Before model work: refuse a caller that has used a day's tokens."""
        bounds = await self._bounds(caller, TOKENS_PER_DAY)
        if bounds:
            await asyncio.to_thread(self.quotas.check_tokens, caller, bounds)

    @asynccontextmanager
    async def _places(self, caller: Caller) -> AsyncIterator[list[Bound]]:
        """The concurrency limits binding a run or plain turn about to start; the store's
        `LimitReached` inside becomes the refusal (429)."""
        bounds = await self._bounds(caller, CONCURRENT_RUNS)
        try:
            yield bounds
        except LimitReached as reached:
            raise await asyncio.to_thread(self.quotas.run_refusal, caller, reached) from None

    async def _take_place(self, caller: Caller, bounds: list[Bound]) -> OnEnd | None:
        """A plain turn's place under `bounds`, renewed while it runs; the callback that frees it."""
        if not bounds:
            return None
        tenant_id = caller.tenant_id
        place = await asyncio.to_thread(
            self.store.places.take_place, tenant_id, caller.principal_id, caller.key_id, bounds, PLACE_SECONDS
        )

        async def renew() -> None:
            while True:
                await asyncio.sleep(RENEW_SECONDS)
                try:
                    await asyncio.to_thread(self.store.places.renew_place, tenant_id, place, PLACE_SECONDS)
                except Exception as exc:  # the place lapses unless a later beat succeeds
                    log.warning("could not renew a plain turn's place: %s", exc)

        renewing = asyncio.create_task(renew())

        async def free() -> None:
            renewing.cancel()
            await asyncio.to_thread(self.store.places.free_place, tenant_id, place)

        return free

    # -- the quota resources ---------------------------------------------------------------------

    async def _subject(self, caller: Caller, kind: object, ref: object) -> Subject:
        if kind not in SUBJECTS:
            raise InvalidRequest(
                f"Invalid value for 'subject': must be one of {', '.join(SUBJECTS)}.", param="subject"
            )
        if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= 200):
            raise InvalidRequest("Invalid value for 'id': expected 1 to 200 characters.", param="id")
        if ref is None and kind != "tenant":
            raise InvalidRequest(
                f"Missing required parameter: 'id' (the {kind}'s id).",
                param="id",
                code="missing_required_parameter",
            )
        found = await asyncio.to_thread(self.store.quotas.find_subject, caller.tenant_id, str(kind), ref)
        if found is None:
            raise NotFound(f"No {kind} with id '{ref}'.", param="id")
        return found

    async def _status(self, caller: Caller, subject: Subject) -> dict[str, Any]:
        return {"object": "quota", **await asyncio.to_thread(self.quotas.status, caller, subject)}

    async def get_quotas(
        self, caller: Caller, *, subject: str | None = None, id: str | None = None
    ) -> dict[str, Any]:
        """The caller's limits and use for its key, principal and tenant (each limit with where it
        comes from: an override, the server's default, or none); an admin may name any subject of its
        tenant instead."""
        if subject is None and id is None:
            return list_object([await self._status(caller, s) for s in reversed(subjects_of(caller))], False)
        named = await self._subject(caller, subject, id)
        if named not in subjects_of(caller):
            check_quota_admin(await asyncio.to_thread(self.auth.principal, caller))
        return list_object([await self._status(caller, named)], False)

    async def set_quota(self, caller: Caller, request: SetQuota | Mapping[str, Any]) -> dict[str, Any]:
        """Set a subject's own limits (admins): those the body names; null returns one to the default,
        "unlimited" lifts it, 0 blocks. Audited as `quota.update`."""
        body = _coerce(SetQuota, request)
        changes = body.changes()
        if not changes:
            raise InvalidRequest(
                f"Send at least one limit to set: {', '.join(LIMITS)}.", code="missing_required_parameter"
            )
        principal = await asyncio.to_thread(self.auth.principal, caller)
        check_quota_admin(principal)
        subject = await self._subject(caller, body.subject, body.id)
        await asyncio.to_thread(self.quotas.set, caller, principal, subject, changes)
        return await self._status(caller, subject)

    async def delete_quota(
        self, caller: Caller, *, subject: str | None, id: str | None = None
    ) -> dict[str, Any]:
        """Clear a subject's own limits (admins): it has the server's defaults again. Audited."""
        principal = await asyncio.to_thread(self.auth.principal, caller)
        check_quota_admin(principal)
        named = await self._subject(caller, subject, id)
        await asyncio.to_thread(self.quotas.set, caller, principal, named, dict.fromkeys(LIMITS))
        return {"object": "quota.deleted", "subject": named.kind, "id": named.id, "deleted": True}

    async def list_quota_overrides(self, caller: Caller) -> dict[str, Any]:
        """Every subject of the caller's tenant with limits of its own (admins), with its status."""
        check_quota_admin(await asyncio.to_thread(self.auth.principal, caller))
        overrides = await asyncio.to_thread(self.store.quotas.overrides, caller.tenant_id)
        return list_object([await self._status(caller, o.subject) for o in overrides], False)
