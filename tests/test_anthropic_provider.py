"""What only the `anthropic` provider does: Messages' own blocks, usage and stop reasons.

The shared behaviour is in tests/test_provider_conformance.py. Here the wire is replayed through
httpx's mock transport (the network edge, not an SRE layer), to send what the fake does not:
thinking blocks, cache writes, refusals, errors of other kinds.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sre.models.anthropic import AnthropicModel
from sre.models.base import (
    Finish,
    FunctionTool,
    ModelEvent,
    ModelInfo,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sre.types.errors import ModelError
from sre.types.items import FunctionCall, parse_input_items


def replaying(
    events: list[dict[str, Any]], seen: list[httpx.Request] | None = None, **options: Any
) -> AnthropicModel:
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    model = AnthropicModel(
        ModelInfo(
            "m", "anthropic", "claude", 8000, {"base_url": "http://127.0.0.1:9", "api_key": "k", **options}
        )
    )
    model._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return model


async def collect(model: AnthropicModel, request: ModelRequest | None = None) -> list[ModelEvent]:
    try:
        return [e async for e in model.stream(request or ModelRequest(items=parse_input_items("hi")))]
    finally:
        await model.aclose()


def start(**usage: int) -> dict[str, Any]:
    return {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1, **usage}}}


def stop(reason: str) -> list[dict[str, Any]]:
    return [
        {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    ]


def text_block(index: int, text: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": index},
    ]


async def test_thinking_is_skipped_and_cache_writes_count_as_input() -> None:
    thinking = [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_stop", "index": 0},
    ]
    events = await collect(
        replaying(
            [
                start(cache_creation_input_tokens=20, cache_read_input_tokens=30),
                *thinking,
                *text_block(1, "hi"),
                *stop("end_turn"),
            ]
        )
    )
    assert events == [TextDelta("hi"), Usage(60, 5, 30), Finish("stop")]


async def test_tool_indices_count_tool_blocks_only() -> None:
    tool = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    events = await collect(
        replaying(
            [
                start(),
                *text_block(0, "calling"),
                {"type": "content_block_start", "index": 1, "content_block": tool},
                {"type": "content_block_stop", "index": 1},
                *stop("tool_use"),
            ]
        )
    )
    assert events[1:] == [
        ToolCallDelta(0, "t1", "f"),
        ToolCallDelta(0, arguments="{}"),
        Usage(10, 5),
        Finish("tool_calls"),
    ]


@pytest.mark.parametrize(
    ("reason", "finish"), [("refusal", "content_filter"), ("pause_turn", "stop"), ("stop_sequence", "stop")]
)
async def test_stop_reasons(reason: str, finish: str) -> None:
    events = await collect(replaying([start(), *text_block(0, "x"), *stop(reason)]))
    assert events[-1] == Finish(finish)  # type: ignore[arg-type]


async def test_an_answer_whose_last_event_was_lost_still_finishes() -> None:
    # message_delta carries the stop reason after every block closed: nothing is missing.
    events = await collect(replaying([start(), *text_block(0, "x"), *stop("end_turn")[:1]]))
    assert events[-1] == Finish("stop")


@pytest.mark.parametrize(
    ("kind", "retryable"), [("overloaded_error", True), ("invalid_request_error", False)]
)
async def test_error_events(kind: str, retryable: bool) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "nope"}}
    with pytest.raises(ModelError) as info:
        await collect(replaying([start(), error]))
    assert info.value.retryable is retryable and kind in info.value.message


async def test_request_shapes() -> None:
    seen: list[httpx.Request] = []
    items = [
        *parse_input_items(
            [
                {"role": "user", "content": "one"},
                {"role": "user", "content": "two"},
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                        {"type": "input_image", "image_url": "https://example.com/cat.png"},
                    ],
                },
            ]
        ),
        FunctionCall(call_id="c1", name="f", arguments="not json"),
    ]
    request = ModelRequest(items=items, tools=[FunctionTool(name="f")], parallel_tool_calls=False)
    model = replaying(
        [start(), *text_block(0, "x"), *stop("end_turn")], seen, base_url="http://127.0.0.1:9/v1/"
    )
    await collect(model, request)
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/v1/messages"  # a base URL given with /v1 is not doubled
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c1", "name": "f", "input": {"arguments": "not json"}}],
        },
    ]
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "system" not in body
