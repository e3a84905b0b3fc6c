"""The runtime's conversations: create, read, update, delete, fork, and their items.

A conversation belongs to the principal that created it; others of the tenant see it only when it is
shared (`visibility: "tenant"`), except admins and auditors, who may read it (each read audited). The
store applies the rule in the same query that reads the conversation (`Viewer`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from typing import Any

from sre.engine.shapes import conversation_object, item_list
from sre.runtime.base import RuntimeParts, _coerce, _page_args
from sre.types.items import parse_input_items
from sre.types.records import Caller, Conversation
from sre.types.requests import (
    CreateConversation,
    CreateItems,
    UpdateConversation,
)


class ConversationsAPI(RuntimeParts):
    async def _read(self, caller: Caller, conv: Conversation) -> None:
        await self._oversee(
            caller, conv.owner, conv.visibility == "tenant", "conversation.read", "conversation", conv.id
        )

    async def create_conversation(
        self, caller: Caller, request: CreateConversation | Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        body = _coerce(CreateConversation, request or {})
        initial = parse_input_items(body.items or [], "items")
        conv, _ = await asyncio.to_thread(
            partial(
                self.store.conversations.create,
                caller.tenant_id,
                metadata=body.metadata,
                initial=initial,
                owner=caller.principal_id,
                visibility=body.visibility,
            )
        )
        return conversation_object(conv)

    async def get_conversation(self, caller: Caller, conversation_id: str) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            partial(self.store.conversations.get, caller.tenant_id, conversation_id, viewer=caller.viewer)
        )
        await self._read(caller, conv)
        return conversation_object(conv)

    async def update_conversation(
        self, caller: Caller, conversation_id: str, request: UpdateConversation | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(UpdateConversation, request)
        conv = await asyncio.to_thread(
            partial(
                self.store.conversations.update,
                caller.tenant_id,
                conversation_id,
                metadata=body.metadata,
                visibility=body.visibility,
                viewer=caller.viewer,
            )
        )
        return conversation_object(conv)

    async def delete_conversation(self, caller: Caller, conversation_id: str) -> dict[str, Any]:
        await asyncio.to_thread(
            partial(self.store.conversations.delete, caller.tenant_id, conversation_id, viewer=caller.viewer)
        )
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def fork_conversation(
        self, caller: Caller, conversation_id: str, *, at_item_id: str | None = None
    ) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            partial(
                self.store.conversations.fork,
                caller.tenant_id,
                conversation_id,
                at_item_id=at_item_id,
                viewer=caller.viewer,
            )
        )
        return conversation_object(conv)

    async def create_items(
        self, caller: Caller, conversation_id: str, request: CreateItems | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CreateItems, request)
        new = parse_input_items(body.items, "items")
        stored = await asyncio.to_thread(
            partial(
                self.store.conversations.append, caller.tenant_id, conversation_id, new, viewer=caller.viewer
            )
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
            partial(
                self.store.conversations.list_items,
                caller.tenant_id,
                conversation_id,
                after=after,
                limit=limit,
                order=order,
                viewer=caller.viewer,
            )
        )
        await self._read(caller, page.extra["conversation"])
        return item_list(page.data, page.has_more)

    async def get_item(self, caller: Caller, conversation_id: str, item_id: str) -> dict[str, Any]:
        item = await asyncio.to_thread(
            partial(
                self.store.conversations.get_item,
                caller.tenant_id,
                conversation_id,
                item_id,
                viewer=caller.viewer,
            )
        )
        if caller.viewer.oversight:  # whose it is matters only to an audited read
            conv = await asyncio.to_thread(
                partial(self.store.conversations.get, caller.tenant_id, conversation_id)
            )
            await self._read(caller, conv)
        return item.data

    async def delete_item(self, caller: Caller, conversation_id: str, item_id: str) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            partial(
                self.store.conversations.delete_item,
                caller.tenant_id,
                conversation_id,
                item_id,
                viewer=caller.viewer,
            )
        )
        return conversation_object(conv)
