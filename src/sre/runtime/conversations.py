"""The runtime's conversations: create, read, update metadata, delete, fork, and their items."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sre.engine.shapes import conversation_object, item_list
from sre.runtime.base import RuntimeParts, _coerce, _page_args
from sre.types.items import parse_input_items
from sre.types.records import Caller
from sre.types.requests import (
    CreateConversation,
    CreateItems,
    UpdateConversation,
)


class ConversationsAPI(RuntimeParts):
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
