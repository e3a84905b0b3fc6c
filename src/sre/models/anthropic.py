"""The `anthropic` provider: Anthropic's Messages wire format over plain HTTP (no SDK).

It translates SRE's Responses-shaped items to Messages: system text goes to `system`, turns
alternate user/assistant (consecutive same-role turns merged), function calls become `tool_use`
blocks and their outputs `tool_result` blocks. It always streams and turns the answer's events into
`ModelEvent`s, with Anthropic's usage normalised to OpenAI's meaning (input tokens include cached
ones). A JSON `text.format` becomes a tool whose input schema is the format's schema, which the
model is made to call (see `AnthropicModel.build_body`); that call's input streams back as the
answer's text. With `structured_output = "native"`, a `json_schema` format goes as the API's own
`output_config.format` instead, and the answer is plain text. Base URL, key and API version come
from configuration; it keeps no state between calls.
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
from sre.models.upstream import (
    HTTPModel,
    cut_short,
    json_object,
    malformed,
    sse_events,
    stream_error,
)
from sre.types.errors import ConfigError
from sre.types.formats import TextFormat
from sre.types.items import ContentPart, FunctionCall, FunctionCallOutput, InputImage, Message, Refusal

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _image(part: InputImage) -> dict[str, Any] | None:
    url = part.image_url
    if not url:
        return None  # a file id means nothing to Anthropic
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(parts: Sequence[ContentPart]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, InputImage):
            image = _image(part)
            if image is not None:
                out.append(image)
            continue
        text = part.refusal if isinstance(part, Refusal) else part.text
        if text:  # Anthropic rejects empty text blocks
            out.append({"type": "text", "text": text})
    return out


def _arguments(raw: str) -> dict[str, Any]:
    """A call's arguments as the JSON object `tool_use.input` must be.

    A model may have produced arguments that are not an object; they still go back to it, wrapped,
    rather than failing every later turn of the conversation.
    """
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"arguments": value}


def _tool_result(item: FunctionCallOutput) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": item.call_id}
    content: str | list[dict[str, Any]] = (
        item.output if isinstance(item.output, str) else _blocks(item.output)
    )
    if content:
        block["content"] = content
    return block


def to_messages(instructions: str | None, items: Sequence[AnyItem]) -> tuple[str, list[dict[str, Any]]]:
    """SRE items to Messages' `system` text and alternating user/assistant `messages`."""
    system = [instructions] if instructions else []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for item in items:
        if isinstance(item, Message):
            if item.role in ("system", "developer"):
                if item.text():
                    system.append(item.text())
            else:
                add(item.role, _blocks(item.content))
        elif isinstance(item, FunctionCall):
            add(
                "assistant",
                [
                    {
                        "type": "tool_use",
                        "id": item.call_id,
                        "name": item.name,
                        "input": _arguments(item.arguments),
                    }
                ],
            )
        elif isinstance(item, FunctionCallOutput):
            add("user", [_tool_result(item)])
    return "\n\n".join(system), messages


def _tool(tool: FunctionTool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = tool.parameters or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: str | dict[str, Any] | None, parallel: bool | None) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        out = {"type": "tool", "name": name}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "auto" or parallel is False:
        out = {"type": "auto"}
    else:
        return None
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def format_tool_name(fmt: TextFormat, tools: Sequence[FunctionTool]) -> str | None:
    """The name of the tool that carries a JSON answer (`None` for plain text): the format's own,
    made distinct from the request's function tools."""
    if not fmt.is_json:
        return None
    taken = {t.name for t in tools}
    name = fmt.name or "json_output"
    while name in taken:
        name = name[:56] + "_output"
    return name


def _format_tool(fmt: TextFormat, name: str) -> dict[str, Any]:
    schema = fmt.schema if fmt.type == "json_schema" else {"type": "object"}
    description = fmt.description or "Give your final answer by calling this tool: its input is the answer."
    return {"name": name, "description": description, "input_schema": schema}


class AnthropicModel(HTTPModel):
    default_base_url = DEFAULT_BASE_URL
    endpoint = "/v1/messages"

    def __init__(self, info: ModelInfo) -> None:
        super().__init__(info)
        opts = info.options
        # Anthropic's SDKs take the base URL without `/v1`; accept it with one too.
        self.base_url = self.base_url.removesuffix("/v1")
        self.version = str(opts.get("anthropic_version") or DEFAULT_VERSION)
        self.max_tokens_default = int(opts.get("max_tokens_default") or DEFAULT_MAX_TOKENS)
        # How a `json_schema` format is asked for: a forced tool (every model), or the Messages API's
        # own `output_config.format` (models that have it: Claude Sonnet/Opus/Haiku 4.5 and later).
        self.structured_output = str(opts.get("structured_output") or "tool")
        if self.structured_output not in ("tool", "native"):
            raise ConfigError(
                f"model '{info.name}': structured_output must be 'tool' or 'native', "
                f"not '{self.structured_output}'"
            )

    def _answer_tool(self, request: ModelRequest) -> str | None:
        """The format tool's name when this request's JSON answer comes through one."""
        if self.structured_output == "native" and request.text_format.type == "json_schema":
            return None
        return format_tool_name(request.text_format, request.tools)

    def build_body(self, request: ModelRequest) -> dict[str, Any]:
        system, messages = to_messages(request.instructions, request.items)
        body: dict[str, Any] = {
            "model": self.info.upstream_model,
            "max_tokens": request.max_output_tokens or self.max_tokens_default,
            "messages": messages,
            "stream": True,
        }
        if system:
            body["system"] = system
        tools = [_tool(t) for t in request.tools] if request.tools else []
        choice = _tool_choice(request.tool_choice, request.parallel_tool_calls) if tools else None
        format_tool = self._answer_tool(request)
        if self.structured_output == "native" and request.text_format.type == "json_schema":
            body["output_config"] = {"format": {"type": "json_schema", "schema": request.text_format.schema}}
        if format_tool is not None:
            # A JSON answer is the input of a tool the model must call: forced when it is the only
            # tool; beside function tools, some tool call is required (`any`), so the model either
            # calls a function or answers through the format tool. A named choice still holds.
            if choice is not None and choice["type"] == "none":
                tools, choice = [], None
            tools.append(_format_tool(request.text_format, format_tool))
            if len(tools) == 1:
                choice = {"type": "tool", "name": format_tool}
            elif choice is None or choice["type"] in ("auto", "any"):
                choice = {**(choice or {}), "type": "any"}
        if tools:
            body["tools"] = tools
            if choice is not None:
                body["tool_choice"] = choice
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        return body

    def wire_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.version}
        if self.api_key:
            headers["x-api-key"] = str(self.api_key)
        return headers

    def events(self, response: httpx.Response, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        return _MessageStream(self.name, self._answer_tool(request)).events(response)


class _MessageStream:
    """The state of one streamed answer: which content block is which tool call, usage so far. A
    call of the format tool is the answer itself: its input streams as text."""

    def __init__(self, model: str, format_tool: str | None = None) -> None:
        self.model = model
        self.format_tool = format_tool
        self.answer_blocks: set[int] = set()  # content blocks that call the format tool
        self.answer_started = False
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.with_arguments: set[int] = set()  # tool call indices that received arguments
        self.usage: dict[str, Any] = {}
        self.stop: FinishReason | None = None

    async def events(self, response: httpx.Response) -> AsyncIterator[ModelEvent]:
        async for name, payload in sse_events(response):
            event = json_object(self.model, payload)
            kind = event.get("type", name)
            if kind == "message_stop":
                break
            for out in self._handle(kind, event):
                yield out
        if self.stop is None:
            raise cut_short(self.model)
        if self.usage:
            yield self._usage()
        yield Finish(self.stop)

    def _handle(self, kind: object, event: dict[str, Any]) -> list[ModelEvent]:
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self.usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "content_block_start":
            block = event.get("content_block")
            if not isinstance(block, dict):
                raise malformed(self.model)
            if block.get("type") == "tool_use" and self.format_tool and block.get("name") == self.format_tool:
                self.answer_blocks.add(int(event.get("index", 0)))
                return self._answer(json.dumps(block["input"]) if block.get("input") else "")
            if block.get("type") == "tool_use":
                index = self.tools.setdefault(int(event.get("index", 0)), len(self.tools))
                arguments = json.dumps(block["input"]) if block.get("input") else ""
                if arguments:
                    self.with_arguments.add(index)
                return [
                    ToolCallDelta(index, call_id=block.get("id"), name=block.get("name"), arguments=arguments)
                ]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(str(block["text"]))]
        elif kind == "content_block_delta":
            return self._delta(event)
        elif kind == "content_block_stop":
            if int(event.get("index", 0)) in self.answer_blocks and not self.answer_started:
                return self._answer("{}")
            call = self.tools.get(int(event.get("index", 0)))
            if call is not None and call not in self.with_arguments:
                # A call without parameters streams no JSON at all; its arguments are still `{}`.
                return [ToolCallDelta(call, arguments="{}")]
        elif kind == "message_delta":
            delta = event.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            if reason:
                self.stop = _STOP.get(str(reason), "stop")
                if self.stop == "tool_calls" and not self.tools:  # only the answer was "called"
                    self.stop = "stop"
            usage = event.get("usage")
            if isinstance(usage, dict):
                self.usage.update({k: v for k, v in usage.items() if v is not None})
        elif kind == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            raise stream_error(self.model, str(error.get("message") or "stream error"), error.get("type"))
        return []

    def _delta(self, event: dict[str, Any]) -> list[ModelEvent]:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            raise malformed(self.model)
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [TextDelta(str(delta["text"]))]
        if delta.get("type") == "input_json_delta" and int(event.get("index", 0)) in self.answer_blocks:
            return self._answer(str(delta.get("partial_json") or ""))
        if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
            index = self.tools.get(int(event.get("index", 0)))
            if index is None:
                raise malformed(self.model)
            self.with_arguments.add(index)
            return [ToolCallDelta(index, arguments=str(delta["partial_json"]))]
        return []  # thinking and signature deltas have no place in SRE's items yet

    def _answer(self, text: str) -> list[ModelEvent]:
        if not text:
            return []
        self.answer_started = True
        return [TextDelta(text)]

    def _usage(self) -> Usage:
        cached = int(self.usage.get("cache_read_input_tokens") or 0)
        written = int(self.usage.get("cache_creation_input_tokens") or 0)
        # Anthropic counts cache reads and writes apart from `input_tokens`; OpenAI's input count
        # (which SRE's usage follows) includes them.
        return Usage(
            input_tokens=int(self.usage.get("input_tokens") or 0) + cached + written,
            output_tokens=int(self.usage.get("output_tokens") or 0),
            cached_tokens=cached,
        )
