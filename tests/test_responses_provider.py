"""What only the `openai-responses` provider does: the Responses API's own events and input shapes.

The shared behaviour is in tests/test_provider_conformance.py. Here the wire is replayed through
httpx's mock transport (the network edge, not an SRE layer), to send what the fake does not:
failed responses, refusals, reasoning items ahead of a call.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sre.models.base import (
    Finish,
    FunctionTool,
    ModelEvent,
    ModelInfo,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
)
from sre.models.openai_responses import OpenAIResponsesModel
from sre.types.errors import ModelError
from sre.types.items import FunctionCallOutput, InputImage, InputText, parse_input_items


def replaying(events: list[dict[str, Any]], seen: list[httpx.Request] | None = None) -> OpenAIResponsesModel:
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    model = OpenAIResponsesModel(
        ModelInfo("m", "openai-responses", "up", 8000, {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"})
    )
    model._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return model


async def collect(model: OpenAIResponsesModel, request: ModelRequest | None = None) -> list[ModelEvent]:
    try:
        return [e async for e in model.stream(request or ModelRequest(items=parse_input_items("hi")))]
    finally:
        await model.aclose()


def completed(**response: Any) -> dict[str, Any]:
    return {"type": "response.completed", "response": {"status": "completed", "output": [], **response}}


@pytest.mark.parametrize(("code", "retryable"), [("server_error", True), ("invalid_prompt", False)])
async def test_a_failed_response_is_a_model_error(code: str, retryable: bool) -> None:
    failed = {
        "type": "response.failed",
        "response": {"status": "failed", "error": {"code": code, "message": "nope"}},
    }
    with pytest.raises(ModelError) as info:
        await collect(replaying([{"type": "response.output_text.delta", "delta": "a"}, failed]))
    assert info.value.retryable is retryable and "nope" in info.value.message


async def test_a_refusal_streams_as_text() -> None:
    events = await collect(replaying([{"type": "response.refusal.delta", "delta": "I can't."}, completed()]))
    assert events == [TextDelta("I can't."), Finish("stop")]


async def test_a_call_after_a_reasoning_item_keeps_its_output_index() -> None:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}
    events = await collect(
        replaying(
            [
                {"type": "response.output_item.added", "output_index": 0, "item": {"type": "reasoning"}},
                {"type": "response.output_item.added", "output_index": 1, "item": call},
                {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"},
                completed(output=[{"type": "reasoning"}, {**call, "arguments": "{}"}]),
            ]
        )
    )
    assert events == [ToolCallDelta(1, "c1", "f"), ToolCallDelta(1, arguments="{}"), Finish("tool_calls")]


async def test_input_shapes() -> None:
    seen: list[httpx.Request] = []
    items = [
        *parse_input_items(
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {"type": "input_image", "image_url": "https://example.com/cat.png"},
                    ],
                }
            ]
        ),
        FunctionCallOutput(call_id="c1", output=[InputText(text="a chart:"), InputImage(file_id="file_1")]),
    ]
    tools = [FunctionTool(name="f", parameters={"type": "object"}, strict=True)]
    request = ModelRequest(
        items=items, tools=tools, tool_choice={"type": "function", "function": {"name": "f"}}
    )
    await collect(replaying([completed()], seen), request)
    body = json.loads(seen[0].content)
    assert body["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "detail": "auto", "image_url": "https://example.com/cat.png"},
            ],
        },
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [
                {"type": "input_text", "text": "a chart:"},
                {"type": "input_image", "detail": "auto", "file_id": "file_1"},
            ],
        },
    ]
    assert body["tools"][0]["strict"] is True  # a tool that asks for strict keeps it
    assert body["tool_choice"] == {"type": "function", "name": "f"}  # Chat's shape of it, translated
    assert seen[0].url.path == "/v1/responses" and seen[0].headers["authorization"] == "Bearer k"
