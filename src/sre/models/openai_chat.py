"""The `openai` provider: OpenAI's Chat Completions wire format over HTTP.

One provider serves every endpoint that speaks this format (OpenAI, Azure OpenAI, vLLM, Ollama,
LM Studio, llama.cpp's server): base URL, key and upstream model name come from configuration.
It always streams upstream and turns chunks into `ModelEvent`s; it keeps no state between calls.
A request's `text.format` goes upstream as `response_format` (`json_schema` or `json_object`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from sre.models.base import (
    AnyItem,
    Finish,
    FinishReason,
    FunctionTool,
    ModelEvent,
    ModelInfo,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sre.models.tokens import TextTokenizer, encoding_for, tiktoken_tokenizer
from sre.models.upstream import HTTPModel, cut_short, malformed, stream_error
from sre.types.formats import TextFormat
from sre.types.items import FunctionCall, FunctionCallOutput, InputImage, Message

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def _message(item: Message) -> dict[str, Any]:
    role = "system" if item.role == "developer" else item.role
    if item.role != "user" or not any(isinstance(p, InputImage) for p in item.content):
        return {"role": role, "content": item.text()}
    parts: list[dict[str, Any]] = []
    for part in item.content:
        if isinstance(part, InputImage):
            if part.image_url:
                parts.append(
                    {"type": "image_url", "image_url": {"url": part.image_url, "detail": part.detail}}
                )
        elif part.type in ("input_text", "output_text"):
            parts.append({"type": "text", "text": getattr(part, "text", "")})
    return {"role": role, "content": parts}


def to_chat_messages(instructions: str | None, items: Sequence[AnyItem]) -> list[dict[str, Any]]:
    """Responses items to Chat Completions messages; consecutive function calls share one message."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if isinstance(item, Message):
            messages.append(_message(item))
        elif isinstance(item, FunctionCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output_text()})
    return messages


def _tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def _response_format(fmt: TextFormat) -> dict[str, Any]:
    """`text.format` as Chat Completions' `response_format`."""
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}
    if fmt.description is not None:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


class OpenAIChatModel(HTTPModel):
    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        opts = info.options
        self.max_tokens_param = str(opts.get("max_tokens_param", "max_tokens"))

    def tokenizer(self) -> TextTokenizer | None:
        encoding = encoding_for(self.info.upstream_model)
        return None if encoding is None else tiktoken_tokenizer(encoding)

    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.info.upstream_model,
            "messages": to_chat_messages(request.instructions, request.items),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            if request.parallel_tool_calls is not None:
                body["parallel_tool_calls"] = request.parallel_tool_calls
        if request.tool_choice is not None and request.tools:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.max_output_tokens is not None:
            body[self.max_tokens_param] = request.max_output_tokens
        if request.text_format.is_json:
            body["response_format"] = _response_format(request.text_format)
        return body

    async def events(self, response: httpx.Response, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        finish: FinishReason | None = None
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
                if not isinstance(chunk, dict):
                    raise ValueError("chunk is not an object")
            except ValueError:
                raise malformed(self.name) from None
            error = chunk.get("error")
            if isinstance(error, dict):  # OpenAI and vLLM report failures mid-stream this way
                kind = error.get("code") or error.get("type")
                raise stream_error(self.name, str(error.get("message") or "stream error"), kind)
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                details = usage.get("prompt_tokens_details") or {}
                yield Usage(
                    input_tokens=int(usage.get("prompt_tokens") or 0),
                    output_tokens=int(usage.get("completion_tokens") or 0),
                    cached_tokens=int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0,
                )
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield TextDelta(str(delta["content"]))
                for call in delta.get("tool_calls") or []:
                    function = call.get("function") or {}
                    yield ToolCallDelta(
                        index=int(call.get("index", 0)),
                        call_id=call.get("id"),
                        name=function.get("name"),
                        arguments=function.get("arguments") or "",
                    )
                if choice.get("finish_reason"):
                    finish = _FINISH.get(str(choice["finish_reason"]), "stop")
        if finish is None:
            raise cut_short(self.name)
        yield Finish(finish)
