"""The `scripted` and `function` models: deterministic stand-ins for a real model.

They exist for tests and benchmarks (see `sre.testing`), answer instantly, and speak through the
same `ChatModel` protocol as every provider, so the runtime cannot tell the difference. A reply is
a string, one or more `ScriptedToolCall`s, or an exception to raise. Made in a test, they keep
every request they were sent (`requests`; configured ones keep none), so a test sees what a turn
asked for, its `text_format` included; a reply scripted as valid or invalid JSON pins down what a
structured-output turn ends in.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sre.models.base import (
    ChatModel,
    Finish,
    ModelEvent,
    ModelInfo,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sre.types.ids import new_id
from sre.types.items import FunctionCallOutput, Message, estimate_tokens


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    name: str
    arguments: str | dict[str, Any] = "{}"
    call_id: str | None = None


Reply = str | ScriptedToolCall | Sequence[ScriptedToolCall] | BaseException
ReplyFunction = Callable[[ModelRequest], Reply | Awaitable[Reply]]


async def reply_events(
    reply: Reply, request: ModelRequest, chunk_words: int = 1, model: ChatModel | None = None
) -> AsyncIterator[ModelEvent]:
    if isinstance(reply, BaseException):
        raise reply
    if model is not None:
        input_tokens = model.count_tokens(request).tokens
    else:
        input_tokens = sum(estimate_tokens(i) for i in request.items) + len(request.instructions or "") // 4
    if isinstance(reply, str):
        words = reply.split(" ")
        for start in range(0, len(words), chunk_words):
            piece = " ".join(words[start : start + chunk_words])
            yield TextDelta(piece if start == 0 else " " + piece)
        yield Usage(input_tokens=input_tokens, output_tokens=max(1, len(reply) // 4), exact=False)
        yield Finish("stop")
        return
    calls = [reply] if isinstance(reply, ScriptedToolCall) else list(reply)
    for index, call in enumerate(calls):
        arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
        half = len(arguments) // 2  # split like real streams do, to exercise reassembly
        yield ToolCallDelta(
            index=index, call_id=call.call_id or new_id("call"), name=call.name, arguments=arguments[:half]
        )
        yield ToolCallDelta(index=index, arguments=arguments[half:])
    yield Usage(input_tokens=input_tokens, output_tokens=8 * len(calls), exact=False)
    yield Finish("tool_calls")


class ScriptedModel(ChatModel):
    """Answers with the given replies in order; with `cycle`, starts over when they run out."""

    def __init__(
        self,
        replies: Sequence[Reply] = ("ok",),
        *,
        name: str = "scripted",
        context_window: int = 8192,
        cycle: bool = True,
        record: bool = True,
    ) -> None:
        super().__init__(
            ModelInfo(name=name, provider="scripted", upstream_model=name, context_window=context_window)
        )
        self.replies = list(replies)
        self.cycle = cycle
        self.record = record
        self.requests: list[ModelRequest] = []
        self._next = 0

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        if self.record:
            self.requests.append(request)
        if self._next >= len(self.replies):
            if not self.cycle or not self.replies:
                raise RuntimeError(f"scripted model '{self.name}' has no reply left")
            self._next = 0
        reply = self.replies[self._next]
        self._next += 1
        async for event in reply_events(reply, request, model=self):
            yield event


class FunctionModel(ChatModel):
    """Answers by calling `fn(request)`, which may be sync or async; a text answer streams
    `chunk_words` words at a time (a large number: in one piece, as a non-streaming model would)."""

    def __init__(
        self, fn: ReplyFunction, *, name: str = "function", context_window: int = 8192, chunk_words: int = 1
    ) -> None:
        super().__init__(
            ModelInfo(name=name, provider="function", upstream_model=name, context_window=context_window)
        )
        self.fn = fn
        self.chunk_words = chunk_words
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        self.requests.append(request)
        reply = self.fn(request)
        if inspect.isawaitable(reply):
            reply = await reply
        async for event in reply_events(reply, request, self.chunk_words, model=self):
            yield event


def tool_loop(tool: str, arguments: dict[str, Any], answer: str) -> ReplyFunction:
    """A model that calls `tool` once per user message (string arguments equal to "{input}" become
    the message's text) and answers `answer` once the tool's output is in."""

    def reply(request: ModelRequest) -> Reply:
        last = request.items[-1] if request.items else None
        if isinstance(last, FunctionCallOutput):
            return answer
        text = last.text() if isinstance(last, Message) else ""
        filled = {k: text if v == "{input}" else v for k, v in arguments.items()}
        return ScriptedToolCall(tool, filled)

    return reply


def scripted_from_info(info: ModelInfo) -> ChatModel:
    """The `scripted` provider of a configuration: `replies` in turn, or with `call_tool`, a tool loop
    (`call_tool = "NAME"`, `tool_arguments = {...}`, the first reply as the answer)."""
    replies = info.options.get("replies") or ["ok"]
    tool = info.options.get("call_tool")
    model: ChatModel
    if tool:
        arguments = info.options.get("tool_arguments") or {}
        model = FunctionModel(tool_loop(str(tool), dict(arguments), str(replies[0])), name=info.name)
        model.requests = _Discard()
    else:
        model = ScriptedModel(
            [str(r) for r in replies], name=info.name, context_window=info.context_window, record=False
        )
    model.info = info
    return model


class _Discard(list[ModelRequest]):
    """A request log that keeps nothing (a configured model serves for hours)."""

    def append(self, item: ModelRequest) -> None:
        return None
