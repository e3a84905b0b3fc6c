"""The `openai-responses` provider: OpenAI's Responses wire format over HTTP, used statelessly.

SRE keeps the conversation, so every call sends the whole input with `store: false` and never a
`previous_response_id`; the upstream remembers nothing. Our items already are Responses shapes, so
translation mostly drops what belongs to SRE (item ids, statuses) and what a stateless upstream
would reject. A request's `text.format` goes upstream as is. The answer's server-sent events become
`ModelEvent`s; no state is kept between calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from sre.models.base import (
    AnyItem,
    Finish,
    FinishReason,
    FunctionTool,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sre.models.tokens import TextTokenizer, encoding_for, tiktoken_tokenizer
from sre.models.upstream import (
    HTTPModel,
    cut_short,
    json_object,
    malformed,
    sse_events,
    stream_error,
)
from sre.types.items import ContentPart, FunctionCall, FunctionCallOutput, InputImage, Message, Refusal

_INCOMPLETE: dict[str, FinishReason] = {"max_output_tokens": "length", "content_filter": "content_filter"}


def _input_parts(parts: Sequence[ContentPart]) -> list[dict[str, Any]]:
    """Content for a user, system or developer message, or a tool output: input parts only."""
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, InputImage):
            image: dict[str, Any] = {"type": "input_image", "detail": part.detail}
            if part.image_url is not None:
                image["image_url"] = part.image_url
            if part.file_id is not None:
                image["file_id"] = part.file_id
            out.append(image)
        elif isinstance(part, Refusal):
            out.append({"type": "input_text", "text": part.refusal})
        else:
            out.append({"type": "input_text", "text": part.text})
    return out


def to_responses_input(items: Sequence[AnyItem]) -> list[dict[str, Any]]:
    """SRE items to a stateless Responses `input`: no ids, no statuses, nothing stored upstream.

    An item id would make the upstream look for a stored item of that id (and fail with
    `store: false`); assistant messages go as plain text, which needs no id either.
    """
    out: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Message):
            if item.role == "assistant":
                out.append({"type": "message", "role": "assistant", "content": item.text()})
            else:
                out.append({"type": "message", "role": item.role, "content": _input_parts(item.content)})
        elif isinstance(item, FunctionCall):
            out.append(
                {
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                }
            )
        elif isinstance(item, FunctionCallOutput):
            output: str | list[dict[str, Any]] = (
                item.output if isinstance(item.output, str) else _input_parts(item.output)
            )
            out.append({"type": "function_call_output", "call_id": item.call_id, "output": output})
    return out


def _tool(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    # The Responses API makes tools strict unless told otherwise, and a strict tool's schema must
    # list every property as required; Chat Completions' default (not strict) is what callers expect.
    out["strict"] = bool(tool.strict)
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        return {"type": "function", "name": name}
    return choice


class OpenAIResponsesModel(HTTPModel):
    endpoint = "/responses"

    def tokenizer(self) -> TextTokenizer | None:
        encoding = encoding_for(self.info.upstream_model)
        return None if encoding is None else tiktoken_tokenizer(encoding)

    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.info.upstream_model,
            "input": to_responses_input(request.items),
            "store": False,
            "stream": True,
        }
        if request.instructions:
            body["instructions"] = request.instructions
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            if request.tool_choice is not None:
                body["tool_choice"] = _tool_choice(request.tool_choice)
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_output_tokens is not None:
            body["max_output_tokens"] = request.max_output_tokens
        if request.text_format.is_json:
            body["text"] = {"format": request.text_format.to_dict()}
        return body

    async def events(self, response: httpx.Response, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        called = False
        async for name, payload in sse_events(response):
            if payload == "[DONE]":
                break
            event = json_object(self.name, payload)
            kind = event.get("type", name)
            if kind in ("response.output_text.delta", "response.refusal.delta"):
                if event.get("delta"):
                    yield TextDelta(str(event["delta"]))
            elif kind == "response.output_item.added":
                item = event.get("item")
                if not isinstance(item, dict):
                    raise malformed(self.name)
                if item.get("type") == "function_call":
                    called = True
                    yield ToolCallDelta(
                        index=int(event.get("output_index", 0)),
                        call_id=item.get("call_id"),
                        name=item.get("name"),
                        arguments=str(item.get("arguments") or ""),
                    )
            elif kind == "response.function_call_arguments.delta":
                if event.get("delta"):
                    yield ToolCallDelta(
                        index=int(event.get("output_index", 0)), arguments=str(event["delta"])
                    )
            elif kind in ("response.completed", "response.incomplete"):
                result = event.get("response")
                if not isinstance(result, dict):
                    raise malformed(self.name)
                usage = _usage(result.get("usage"))
                if usage is not None:
                    yield usage
                yield Finish(_finish(result, called, incomplete=kind == "response.incomplete"))
                return
            elif kind == "response.failed":
                result = event.get("response")
                error = (result.get("error") if isinstance(result, dict) else None) or {}
                raise stream_error(
                    self.name, str(error.get("message") or "response failed"), error.get("code")
                )
            elif kind == "error":
                raise stream_error(self.name, str(event.get("message") or "stream error"), event.get("code"))
        raise cut_short(self.name)


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = raw.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0),
        output_tokens=int(raw.get("output_tokens") or 0),
        cached_tokens=int(cached or 0),
    )


def _finish(result: dict[str, Any], called: bool, *, incomplete: bool) -> FinishReason:
    if incomplete or result.get("status") == "incomplete":
        details = result.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return _INCOMPLETE.get(str(reason), "length")
    output = result.get("output")
    if isinstance(output, list) and any(
        isinstance(o, dict) and o.get("type") == "function_call" for o in output
    ):
        called = True
    return "tool_calls" if called else "stop"
