"""The `Runtime`: the whole system in-process, and the only door the API, CLI and users go through.

Each method takes the `Caller` (tenant and principal) and returns OpenAI-shaped dicts, so the
HTTP layer only parses and serialises. Store work runs in worker threads; model calls run on the
event loop. No business rule lives outside this facade and the layers beneath it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sre.engine.shapes import conversation_object, item_list, stored_response_object
from sre.engine.turn import TurnEngine
from sre.models.base import ChatModel
from sre.models.config import ModelRegistry
from sre.runtime.settings import LOCAL_PRINCIPAL, LOCAL_TENANT, Settings
from sre.store import Store, sqlite_url
from sre.types.errors import InvalidRequest, Unauthenticated
from sre.types.items import parse_input_items
from sre.types.records import ApiKey, Caller
from sre.types.requests import (
    CountInputTokens,
    CreateConversation,
    CreateItems,
    CreateResponse,
    UpdateConversation,
    invalid_from_pydantic,
)

M = TypeVar("M", bound=BaseModel)


def _coerce(kind: type[M], value: M | Mapping[str, Any]) -> M:
    if isinstance(value, kind):
        return value
    try:
        return kind.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc) from None


def _page_args(limit: int, order: str) -> None:
    if not 1 <= limit <= 100:
        raise InvalidRequest("Invalid value for 'limit': must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': must be 'asc' or 'desc'.", param="order")


class Runtime:
    """Open with `Runtime.open(...)`; close with `await runtime.aclose()`."""

    def __init__(self, store: Store, models: ModelRegistry, settings: Settings) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.turns = TurnEngine(store, models)

    @classmethod
    def open(
        cls,
        *,
        data_dir: str | Path | None = None,
        database_url: str | None = None,
        config: str | Path | None = None,
        models: ModelRegistry | list[ChatModel] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Runtime:
        """Connect to the store (migrating it) and load the models from configuration."""
        settings = Settings.load(data_dir=data_dir, database_url=database_url, config_path=config, env=env)
        if isinstance(models, list):
            registry = ModelRegistry()
            for model in models:
                registry.add(model)
        else:
            registry = models if models is not None else ModelRegistry.from_config(settings.config, env)
        store = Store(settings.database_url or sqlite_url(settings.data_dir))
        return cls(store, registry, settings)

    async def aclose(self) -> None:
        await self.turns.aclose()
        await self.models.aclose()
        self.store.close()

    # -- identity -----------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Caller:
        caller = await asyncio.to_thread(self.store.keys.authenticate, secret)
        if caller is None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        return caller

    def local_caller(self) -> Caller:
        """The caller of the embedded, single-user setup (`--no-auth`, first-start key)."""
        tenant_id = self.store.keys.ensure_tenant(LOCAL_TENANT)
        principal = self.store.keys.ensure_principal(tenant_id, LOCAL_PRINCIPAL)
        return Caller(tenant_id=tenant_id, principal_id=principal.id)

    def create_key(self, tenant: str, principal: str, name: str = "default") -> tuple[ApiKey, str]:
        tenant_id = self.store.keys.ensure_tenant(tenant)
        found = self.store.keys.ensure_principal(tenant_id, principal)
        return self.store.keys.create_key(tenant_id, found.id, name)

    def bootstrap_local_key(self) -> str | None:
        """On the first start of an embedded store, create and return a key for the local user."""
        if self.store.keys.list_keys():
            return None
        caller = self.local_caller()
        _, secret = self.store.keys.create_key(caller.tenant_id, caller.principal_id, "local")
        return secret

    # -- responses ----------------------------------------------------------------------------

    async def create_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run one turn to the end and return the response object."""
        turn = await self.turns.prepare(caller, _coerce(CreateResponse, request))
        return await self.turns.respond(turn)

    async def stream_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Validate and read now (errors raise here), then return the turn's event stream."""
        turn = await self.turns.prepare(caller, _coerce(CreateResponse, request))
        return self.turns.stream(turn)

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
            record = self.store.responses.get(caller.tenant_id, response_id)
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

    # -- conversations ------------------------------------------------------------------------

    async def create_conversation(
        self, caller: Caller, request: CreateConversation | Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        body = _coerce(CreateConversation, request or {})
        initial = parse_input_items(body.items or [], "items")
        conv, _ = await asyncio.to_thread(
            lambda: self.store.conversations.create(caller.tenant_id, metadata=body.metadata, initial=initial)
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def get_conversation(self, caller: Caller, conversation_id: str) -> dict[str, Any]:
        conv = await asyncio.to_thread(self.store.conversations.get, caller.tenant_id, conversation_id)
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def update_conversation(
        self, caller: Caller, conversation_id: str, request: UpdateConversation | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(UpdateConversation, request)
        conv = await asyncio.to_thread(
            self.store.conversations.update_metadata, caller.tenant_id, conversation_id, body.metadata
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def delete_conversation(self, caller: Caller, conversation_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self.store.conversations.delete, caller.tenant_id, conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def fork_conversation(
        self, caller: Caller, conversation_id: str, *, at_item_id: str | None = None
    ) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            lambda: self.store.conversations.fork(caller.tenant_id, conversation_id, at_item_id=at_item_id)
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def create_items(
        self, caller: Caller, conversation_id: str, request: CreateItems | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CreateItems, request)
        new = parse_input_items(body.items, "items")
        stored = await asyncio.to_thread(
            self.store.conversations.append, caller.tenant_id, conversation_id, new
        )
        return item_list(stored, False)

    async def list_items(
        self,
        caller: Caller,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> dict[str, Any]:
        _page_args(limit, order)
        page = await asyncio.to_thread(
            lambda: self.store.conversations.list_items(
                caller.tenant_id, conversation_id, after=after, limit=limit, order=order
            )
        )
        return item_list(page.data, page.has_more)

    async def get_item(self, caller: Caller, conversation_id: str, item_id: str) -> dict[str, Any]:
        item = await asyncio.to_thread(
            self.store.conversations.get_item, caller.tenant_id, conversation_id, item_id
        )
        return item.data

    async def delete_item(self, caller: Caller, conversation_id: str, item_id: str) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            self.store.conversations.delete_item, caller.tenant_id, conversation_id, item_id
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    # -- models -------------------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        data = [
            {
                "id": info.name,
                "object": "model",
                "created": 0,
                "owned_by": info.provider,
                "context_window": info.context_window,
                "pricing": None
                if info.pricing is None
                else {
                    "input": info.pricing.input,
                    "cached_input": info.pricing.cached_input,
                    "output": info.pricing.output,
                    "unit": "USD per 1M tokens",
                },
            }
            for info in self.models.infos()
        ]
        return {"object": "list", "data": data}
