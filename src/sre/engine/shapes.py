"""The OpenAI shapes that leave the engine: response objects and streaming events.

Built from records and items only, so a live response and one read back from the store look the
same. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sre.types.lists import list_object
from sre.types.records import Conversation, ResponseRecord, StoredItem


def usage_object(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    *,
    response_id: str,
    status: str,
    model: str,
    created_at: int,
    body: dict[str, Any],
    output: Sequence[dict[str, Any]],
    previous_response_id: str | None,
    conversation_id: str | None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    shaped: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": body.get("background", False),
        "completed_at": completed_at,
        "error": body.get("error"),
        "incomplete_details": body.get("incomplete_details"),
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": list(output),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": previous_response_id,
        "conversation": None if conversation_id is None else {"id": conversation_id},
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation", "disabled"),
        "usage": body.get("usage"),
        "user": None,
        "metadata": body.get("metadata", {}),
    }
    if body.get("agent") is not None:  # SRE's own: the agent version that ran (model "agent:NAME")
        shaped["agent"] = body["agent"]
    return shaped


def stored_response_object(record: ResponseRecord, output: Sequence[StoredItem]) -> dict[str, Any]:
    return response_object(
        response_id=record.id,
        status=record.status,
        model=record.model,
        created_at=record.created_at,
        body=record.body,
        output=[item.data for item in output],
        previous_response_id=record.previous_response_id,
        conversation_id=record.public_conversation_id,
        completed_at=record.completed_at,
    )


def conversation_object(conv: Conversation) -> dict[str, Any]:
    """OpenAI's conversation object, with SRE's `visibility`."""
    return {
        "id": conv.id,
        "object": "conversation",
        "created_at": conv.created_at,
        "metadata": conv.metadata,
        "visibility": conv.visibility,
    }


def item_list(items: Sequence[StoredItem], has_more: bool) -> dict[str, Any]:
    return list_object([item.data for item in items], has_more)
