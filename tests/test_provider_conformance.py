"""One provider conformance suite, run against every HTTP wire format through its wire-level fake.

Each provider (`openai` Chat Completions, `openai-responses`, `anthropic`) is built from
configuration by the registry, pointed at a real loopback server speaking its format, and must
behave the same: text in several deltas, tool calls reassembled from pieces, usage, exactly one
`Finish` last, and the same errors (with `retryable` and `Retry-After`) for the same failures. What
each format sends upstream is checked against what its fake recorded. Structured outputs too: the
format each wire asks for, the JSON answer a client gets (Anthropic's format tool unwrapped), and a
strict answer against its schema ending the response `incomplete` through the API. The configurations shown in
docs/configuration.md are loaded and streamed here too, so the documentation cannot rot.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from openai.types.responses import ResponseStreamEvent
from openai.types.responses.response_create_params import ResponseCreateParamsStreaming
from pydantic import TypeAdapter

from sre.models.base import (
    ChatModel,
    Finish,
    FunctionTool,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from sre.models.config import ModelRegistry
from sre.types.errors import ConfigError, InvalidRequest, ModelError, RateLimited, SREError
from sre.types.formats import TextFormat
from sre.types.items import FunctionCall, FunctionCallOutput, parse_input_items
from tests.support.anthropic_upstream import AnthropicUpstream
from tests.support.responses_upstream import ResponsesUpstream
from tests.support.server import free_port
from tests.support.upstream import ChatUpstream, Reply, WireUpstream

ROOT = Path(__file__).resolve().parent.parent
FAKES: dict[str, type[WireUpstream]] = {
    "openai": ChatUpstream,
    "openai-responses": ResponsesUpstream,
    "anthropic": AnthropicUpstream,
}
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "openai-responses": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


@dataclass
class Wire:
    provider: str
    fake: WireUpstream

    def config(self, **options: Any) -> dict[str, Any]:
        section = {
            "provider": self.provider,
            "model": "up-model",
            "base_url": self.fake.base_url,
            "api_key": "sk-test",
            "retries": 0,  # the provider's own errors are under test, not the retry wrapper
            **options,
        }
        return {"models": {"m": section}}

    def model(self, **options: Any) -> ChatModel:
        return ModelRegistry.from_config(self.config(**options), {}).resolve("m")

    @property
    def sent(self) -> dict[str, Any]:
        return self.fake.requests[-1]


@pytest.fixture(params=list(FAKES))
def wire(request: pytest.FixtureRequest) -> Iterator[Wire]:
    fake = FAKES[request.param]().start()
    yield Wire(request.param, fake)
    fake.stop()


async def collect(model: ChatModel, request: ModelRequest | None = None) -> list[ModelEvent]:
    try:
        return [event async for event in model.stream(request or ModelRequest(items=parse_input_items("hi")))]
    finally:
        await model.aclose()


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls_of(events: list[ModelEvent]) -> list[dict[str, str]]:
    """Tool calls reassembled from their deltas, in the order they began."""
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            entry = calls.setdefault(e.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = e.call_id or entry["id"]
            entry["name"] = e.name or entry["name"]
            entry["arguments"] += e.arguments
    return list(calls.values())


def assert_well_ordered(events: list[ModelEvent]) -> None:
    """Deltas, then usage (at most one), then exactly one `Finish`, last."""
    kinds = [type(e) for e in events]
    assert kinds.count(Finish) == 1 and kinds[-1] is Finish
    assert kinds.count(Usage) <= 1
    if Usage in kinds:
        assert kinds.index(Usage) == len(kinds) - 2


# Streaming answers


async def test_text_streams_in_several_deltas(wire: Wire) -> None:
    wire.fake.queue(Reply(text="hello there brave new world"))
    events = await collect(wire.model())
    assert text_of(events) == "hello there brave new world"
    assert len([e for e in events if isinstance(e, TextDelta)]) >= 3
    assert_well_ordered(events)
    assert events[-1] == Finish("stop")


async def test_deltas_arrive_while_the_upstream_is_still_streaming(wire: Wire) -> None:
    hold = threading.Event()  # the fake sends the first piece of text, then waits for this
    wire.fake.queue(Reply(text="first then the rest", hold=hold))
    model = wire.model()
    stream = model.stream(ModelRequest(items=parse_input_items("hi")))

    async def first_text() -> ModelEvent:
        async for event in stream:
            if isinstance(event, TextDelta):
                return event
        raise AssertionError("no text")

    try:
        assert await asyncio.wait_for(first_text(), timeout=5) == TextDelta("first")
        hold.set()
        rest = [event async for event in stream]
    finally:
        hold.set()
        await model.aclose()
    assert text_of(rest) == " then the rest"
    assert rest[-1] == Finish("stop")


async def test_tool_call_arguments_split_across_chunks(wire: Wire) -> None:
    arguments = '{"city": "Paris", "unit": "celsius", "days": 3}'
    wire.fake.queue(Reply(tool_calls=[{"name": "weather", "arguments": arguments, "id": "call_a"}]))
    events = await collect(wire.model())
    assert calls_of(events) == [{"id": "call_a", "name": "weather", "arguments": arguments}]
    assert len([e for e in events if isinstance(e, ToolCallDelta) and e.arguments]) >= 3
    assert_well_ordered(events)
    assert events[-1] == Finish("tool_calls")


async def test_parallel_tool_calls(wire: Wire) -> None:
    wire.fake.queue(
        Reply(
            tool_calls=[
                {"name": "weather", "arguments": '{"city": "Paris", "unit": "c"}', "id": "call_a"},
                {"name": "time", "arguments": '{"tz": "Europe/Paris"}', "id": "call_b"},
                {"name": "ping", "arguments": "", "id": "call_c"},
            ]
        )
    )
    events = await collect(wire.model())
    calls = calls_of(events)
    assert [(c["id"], c["name"]) for c in calls] == [
        ("call_a", "weather"),
        ("call_b", "time"),
        ("call_c", "ping"),
    ]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert json.loads(calls[1]["arguments"]) == {"tz": "Europe/Paris"}
    assert calls[2]["arguments"] in ("", "{}")
    assert len({e.index for e in events if isinstance(e, ToolCallDelta)}) == 3
    assert events[-1] == Finish("tool_calls")


async def test_text_then_a_tool_call(wire: Wire) -> None:
    wire.fake.queue(Reply(text="Let me look.", tool_calls=[{"name": "search", "arguments": '{"q": "x"}'}]))
    events = await collect(wire.model())
    first_call = next(i for i, e in enumerate(events) if isinstance(e, ToolCallDelta))
    assert text_of(events[:first_call]) == "Let me look." and text_of(events[first_call:]) == ""
    assert [(c["name"], c["arguments"]) for c in calls_of(events)] == [("search", '{"q": "x"}')]
    assert calls_of(events)[0]["id"]  # the upstream's call id, whatever it chose
    assert events[-1] == Finish("tool_calls")


async def test_usage_is_reported_with_cached_tokens(wire: Wire) -> None:
    wire.fake.queue(Reply(text="counted", input_tokens=100, cached_tokens=40))
    events = await collect(wire.model())
    usage = [e for e in events if isinstance(e, Usage)]
    assert [(u.input_tokens, u.output_tokens, u.cached_tokens) for u in usage] == [(100, 7, 40)]


@pytest.mark.parametrize("reason", ["length", "content_filter"])
async def test_why_an_answer_stopped(wire: Wire, reason: str) -> None:
    wire.fake.queue(Reply(text="cut short by the upstream", finish_reason=reason))
    events = await collect(wire.model())
    assert text_of(events) == "cut short by the upstream"
    assert_well_ordered(events)
    assert events[-1] == Finish(reason)  # type: ignore[arg-type]


# Failures: the same failure gives the same error, whatever the wire format


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


FAILURES: list[tuple[str, Reply, type[SREError], str, bool]] = [
    (
        "429",
        Reply(status=429, retry_after="2", error_message="slow down"),
        RateLimited,
        "upstream_rate_limited",
        True,
    ),
    ("500", Reply(status=500, error_message="boom"), ModelError, "upstream_error", True),
    ("503", Reply(status=503, retry_after="1"), ModelError, "upstream_error", True),
    ("529", Reply(status=529, error_message="overloaded"), ModelError, "upstream_error", True),
    (
        "400",
        Reply(status=400, error_message="context too long"),
        InvalidRequest,
        "upstream_bad_request",
        False,
    ),
    ("401", Reply(status=401, error_message="bad key"), ModelError, "upstream_error", False),
    (
        "cut",
        Reply(text="one two three four five six seven", cut_after_chunks=5),
        ModelError,
        "upstream_incomplete",
        True,
    ),
    ("malformed", Reply(text="x", malformed=True), ModelError, "upstream_malformed", False),
    (
        "stream-error",
        Reply(text="partial", stream_error="server", error_message="overloaded"),
        ModelError,
        "upstream_error",
        True,
    ),
    (
        "stream-rate-limit",
        Reply(text="a", stream_error="rate_limit", error_message="slow down"),
        RateLimited,
        "upstream_rate_limited",
        True,
    ),
]


@pytest.mark.parametrize(
    ("reply", "error", "code", "retryable"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
async def test_failures_are_the_same_errors(
    wire: Wire, reply: Reply, error: type[SREError], code: str, retryable: bool
) -> None:
    wire.fake.queue(reply)
    with pytest.raises(error) as info:
        await collect(wire.model())
    assert type(info.value) is error
    assert (info.value.code, info.value.retryable) == (code, retryable)
    if reply.status != 200 or reply.stream_error:
        assert reply.error_message in info.value.message  # the upstream's own words, from its error body
    expected_retry_after = float(reply.retry_after) if reply.retry_after else None
    assert info.value.retry_after == expected_retry_after


async def test_server_error_then_success_through_the_gateway(wire: Wire) -> None:
    """As configured for users (retries on): a 500, a 429 with Retry-After, then the answer."""
    wire.fake.queue(Reply(status=500), Reply(status=429, retry_after="0"), Reply(text="third time lucky"))
    model = wire.model(retries=2, retry_max_delay=1)
    assert text_of(await collect(model)) == "third time lucky"
    assert len(wire.fake.requests) == 3


async def test_a_stream_cut_after_output_is_not_retried(wire: Wire) -> None:
    wire.fake.queue(
        Reply(text="one two three four five six seven eight nine ten", cut_after_chunks=7), Reply(text="no")
    )
    with pytest.raises(ModelError) as info:
        await collect(wire.model(retries=2))
    assert info.value.code == "upstream_incomplete" and len(wire.fake.requests) == 1


async def test_retry_after_as_an_http_date(wire: Wire) -> None:
    wire.fake.queue(Reply(status=429, retry_after=http_date(30)))
    with pytest.raises(RateLimited) as info:
        await collect(wire.model())
    assert info.value.retryable and info.value.retry_after is not None
    assert 20 <= info.value.retry_after <= 31


async def test_unreachable_upstream(wire: Wire) -> None:
    with pytest.raises(ModelError) as info:
        await collect(wire.model(base_url=f"http://127.0.0.1:{free_port()}/v1"))
    assert (info.value.code, info.value.retryable) == ("model_unreachable", True)


@pytest.mark.parametrize("provider", list(FAKES))
@pytest.mark.parametrize("base_url", [None, "https://models.example.com/v1"])
async def test_blocked_requests_guard_refuses_a_real_upstream(provider: str, base_url: str | None) -> None:
    section: dict[str, Any] = {"provider": provider, "api_key": "sk-real", "retries": 0}
    if base_url is not None:
        section["base_url"] = base_url  # None: the provider's own default, a real endpoint
    model = ModelRegistry.from_config({"models": {"m": section}}, {}).resolve("m")
    with pytest.raises(ModelError) as info:
        await collect(model)
    assert info.value.code == "model_requests_blocked"
    assert (base_url or DEFAULT_BASE_URLS[provider]).split("/")[2] in info.value.message


# What each wire format is sent

TOOLS = [
    FunctionTool(
        name="weather",
        description="Weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
    FunctionTool(name="time"),
]
HISTORY = ModelRequest(
    items=[
        *parse_input_items(
            [
                {"role": "developer", "content": "dev note"},
                {"role": "user", "content": "weather and time in Paris?"},
                {"role": "assistant", "content": "Let me check."},
            ]
        ),
        FunctionCall(id="fc_1", call_id="c1", name="weather", arguments='{"city": "Paris"}'),
        FunctionCall(id="fc_2", call_id="c2", name="time", arguments="{}"),
        FunctionCallOutput(id="fco_1", call_id="c1", output="sunny"),
        FunctionCallOutput(id="fco_2", call_id="c2", output="noon"),
        *parse_input_items([{"role": "user", "content": "and tomorrow?"}]),
    ],
    instructions="be brief",
    tools=TOOLS,
    tool_choice={"type": "function", "name": "weather"},
    parallel_tool_calls=False,
    temperature=0.2,
    top_p=0.9,
    max_output_tokens=50,
)
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
EMPTY = {"type": "object", "properties": {}}


def sent_openai(body: dict[str, Any], headers: dict[str, str], path: str) -> None:
    assert path == "/v1/chat/completions" and headers["authorization"] == "Bearer sk-test"
    TypeAdapter(CompletionCreateParamsStreaming).validate_python(body)
    c1 = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    c2 = {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}}
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "dev note"},
        {"role": "user", "content": "weather and time in Paris?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "assistant", "content": None, "tool_calls": [c1, c2]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "description": "Weather for a city", "parameters": PARAMETERS},
        },
        {"type": "function", "function": {"name": "time", "parameters": EMPTY}},
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["parallel_tool_calls"] is False
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 50)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def sent_responses(body: dict[str, Any], headers: dict[str, str], path: str) -> None:
    assert path == "/v1/responses" and headers["authorization"] == "Bearer sk-test"
    TypeAdapter(ResponseCreateParamsStreaming).validate_python(body)
    assert body["store"] is False and body["stream"] is True and "previous_response_id" not in body
    assert body["instructions"] == "be brief"
    assert body["input"] == [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev note"}]},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "weather and time in Paris?"}],
        },
        {"type": "message", "role": "assistant", "content": "Let me check."},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "noon"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "and tomorrow?"}]},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "name": "weather",
            "description": "Weather for a city",
            "parameters": PARAMETERS,
            "strict": False,
        },
        {"type": "function", "name": "time", "parameters": EMPTY, "strict": False},
    ]
    assert body["tool_choice"] == {"type": "function", "name": "weather"}
    assert body["parallel_tool_calls"] is False
    assert (body["temperature"], body["top_p"], body["max_output_tokens"]) == (0.2, 0.9, 50)


def sent_anthropic(body: dict[str, Any], headers: dict[str, str], path: str) -> None:
    assert path == "/v1/messages" and "authorization" not in headers
    assert headers["x-api-key"] == "sk-test" and headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "be brief\n\ndev note"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather and time in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "c2", "name": "time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "noon"},
                {"type": "text", "text": "and tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "weather", "description": "Weather for a city", "input_schema": PARAMETERS},
        {"name": "time", "input_schema": EMPTY},
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 50)
    assert body["stream"] is True


SENT: dict[str, Callable[[dict[str, Any], dict[str, str], str], None]] = {
    "openai": sent_openai,
    "openai-responses": sent_responses,
    "anthropic": sent_anthropic,
}


async def test_request_translation(wire: Wire) -> None:
    await collect(wire.model(), HISTORY)
    assert wire.sent["model"] == "up-model"
    SENT[wire.provider](wire.sent, wire.fake.headers[-1], wire.fake.paths[-1])


TOOL_CHOICES: dict[str, tuple[object, object, object]] = {
    # choice: what Chat Completions, Responses and Messages are sent
    "auto": ("auto", "auto", {"type": "auto"}),
    "required": ("required", "required", {"type": "any"}),
    "none": ("none", "none", {"type": "none"}),
    "named": (
        {"type": "function", "function": {"name": "time"}},
        {"type": "function", "name": "time"},
        {"type": "tool", "name": "time"},
    ),
    "unset": (None, None, None),
}


@pytest.mark.parametrize("choice", list(TOOL_CHOICES))
async def test_tool_choice(wire: Wire, choice: str) -> None:
    given = {"named": {"type": "function", "name": "time"}, "unset": None}.get(choice, choice)
    request = ModelRequest(items=parse_input_items("hi"), tools=TOOLS, tool_choice=given)
    await collect(wire.model(), request)
    expected = dict(zip(FAKES, TOOL_CHOICES[choice], strict=True))[wire.provider]
    assert wire.sent.get("tool_choice") == expected


async def test_no_tools_means_no_tool_fields(wire: Wire) -> None:
    await collect(wire.model(), ModelRequest(items=parse_input_items("hi"), tool_choice="auto"))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(wire.sent)


MAX_TOKENS_KEY = {"openai": "max_tokens", "openai-responses": "max_output_tokens", "anthropic": "max_tokens"}


async def test_max_tokens(wire: Wire) -> None:
    key = MAX_TOKENS_KEY[wire.provider]
    await collect(wire.model(), ModelRequest(items=parse_input_items("hi"), max_output_tokens=77))
    assert wire.sent[key] == 77
    await collect(wire.model())
    if wire.provider == "anthropic":  # Messages requires a limit: the configured default
        assert wire.sent[key] == 4096
        await collect(wire.model(max_tokens_default=1000))
        assert wire.sent[key] == 1000
    else:
        assert key not in wire.sent


async def test_headers_and_query_from_configuration(wire: Wire) -> None:
    model = wire.model(headers={"x-team": "blue"}, query={"api-version": "2024-10-21"})
    await collect(model)
    assert wire.fake.headers[-1]["x-team"] == "blue"
    assert dict(parse_qsl(urlsplit(wire.fake.paths[-1]).query)) == {"api-version": "2024-10-21"}


# Structured outputs: what each format sends for `text.format`, and what a client gets back

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
STRICT = TextFormat("json_schema", "person", PERSON, strict=True, description="Who it is")
STRICT_PARAM = {
    "type": "json_schema",
    "name": "person",
    "schema": PERSON,
    "description": "Who it is",
    "strict": True,
}
VALID = '{"name": "Ada", "age": 36}'
AGAINST_SCHEMA = '{"name": "Ada", "age": "thirty-six"}'


def answer(wire: Wire, text: str, tool: str = "person") -> Reply:
    """A JSON answer as each upstream gives it: text, or (Anthropic) the format tool's input."""
    if wire.provider == "anthropic":
        return Reply(tool_calls=[{"name": tool, "arguments": text}])
    return Reply(text=text)


def sent_format(wire: Wire, fmt: TextFormat) -> None:
    """What the upstream was asked for: Chat Completions' `response_format`, Responses' `text`, or
    Anthropic's forced tool."""
    body = wire.sent
    if wire.provider == "openai":
        TypeAdapter(CompletionCreateParamsStreaming).validate_python(body)
        expected: dict[str, Any] = {"type": "json_object"}
        if fmt.type == "json_schema":
            expected = {
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "schema": PERSON,
                    "strict": True,
                    "description": "Who it is",
                },
            }
        assert body["response_format"] == expected
    elif wire.provider == "openai-responses":
        TypeAdapter(ResponseCreateParamsStreaming).validate_python(body)
        assert body["text"] == {
            "format": STRICT_PARAM if fmt.type == "json_schema" else {"type": "json_object"}
        }
    else:
        name = "person" if fmt.type == "json_schema" else "json_output"
        schema = PERSON if fmt.type == "json_schema" else {"type": "object"}
        (tool,) = body["tools"]
        assert tool["name"] == name and tool["input_schema"] == schema
        assert body["tool_choice"] == {"type": "tool", "name": name}


@pytest.mark.parametrize("kind", ["json_schema", "json_object"])
async def test_structured_output_request_and_answer(wire: Wire, kind: str) -> None:
    fmt = STRICT if kind == "json_schema" else TextFormat("json_object")
    wire.fake.queue(answer(wire, VALID, "person" if kind == "json_schema" else "json_output"))
    events = await collect(wire.model(), ModelRequest(items=parse_input_items("Who?"), text_format=fmt))
    sent_format(wire, fmt)
    assert json.loads(text_of(events)) == {"name": "Ada", "age": 36}
    assert not calls_of(events) and events[-1] == Finish("stop")
    assert_well_ordered(events)


async def test_no_format_sends_no_format_fields(wire: Wire) -> None:
    await collect(wire.model())
    assert not {"response_format", "text", "tools", "tool_choice"} & set(wire.sent)


async def test_anthropic_format_tool_beside_function_tools() -> None:
    """With function tools too, the format tool joins them and some tool call is required: the
    model calls a function (a real tool call) or answers through the format tool (text)."""
    fake = AnthropicUpstream().start()
    wire = Wire("anthropic", fake)
    try:
        request = ModelRequest(items=parse_input_items("Who?"), tools=TOOLS, text_format=STRICT)
        fake.queue(
            Reply(tool_calls=[{"name": "weather", "arguments": '{"city": "Paris"}'}]), answer(wire, VALID)
        )
        events = await collect(wire.model(), request)
        assert [t["name"] for t in wire.sent["tools"]] == ["weather", "time", "person"]
        assert wire.sent["tool_choice"] == {"type": "any"}
        assert calls_of(events)[0]["name"] == "weather" and events[-1] == Finish("tool_calls")
        events = await collect(wire.model(), request)
        assert text_of(events) == VALID and not calls_of(events) and events[-1] == Finish("stop")
        named = ModelRequest(
            items=parse_input_items("Who?"),
            tools=TOOLS,
            tool_choice={"type": "function", "name": "time"},
            text_format=STRICT,
        )
        await collect(wire.model(), named)
        assert wire.sent["tool_choice"] == {"type": "tool", "name": "time"}
        clash = ModelRequest(
            items=parse_input_items("Who?"), tools=[FunctionTool(name="person")], text_format=STRICT
        )
        await collect(wire.model(), clash)
        assert [t["name"] for t in wire.sent["tools"]] == ["person", "person_output"]
    finally:
        fake.stop()


async def test_anthropic_native_structured_output() -> None:
    """`structured_output = "native"`: a `json_schema` format goes as `output_config.format` and the
    answer is text; `json_object` (which the API has no words for) still goes through the tool."""
    fake = AnthropicUpstream().start()
    wire = Wire("anthropic", fake)
    try:
        fake.queue(Reply(text=VALID))
        events = await collect(
            wire.model(structured_output="native"),
            ModelRequest(items=parse_input_items("Who?"), text_format=STRICT),
        )
        assert wire.sent["output_config"] == {"format": {"type": "json_schema", "schema": PERSON}}
        assert "tools" not in wire.sent and "tool_choice" not in wire.sent
        assert text_of(events) == VALID and events[-1] == Finish("stop")
        fake.queue(answer(wire, "{}", "json_output"))
        request = ModelRequest(items=parse_input_items("Who?"), text_format=TextFormat("json_object"))
        events = await collect(wire.model(structured_output="native"), request)
        assert "output_config" not in wire.sent and wire.sent["tool_choice"]["name"] == "json_output"
        assert text_of(events) == "{}"
        with pytest.raises(ConfigError, match="structured_output"):
            wire.model(structured_output="grammar")
    finally:
        fake.stop()


async def respond(wire: Wire, tmp_path: Path, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/responses` through a runtime whose model is this provider, against its fake."""
    import httpx

    from sre.api import create_app
    from sre.runtime import Runtime
    from sre.store import sqlite_url

    runtime = Runtime.open(database_url=sqlite_url(tmp_path / "data"), models=[wire.model()], env={})
    try:
        _, secret = runtime.create_key("conformance", "alice")
        transport = httpx.ASGITransport(app=create_app(runtime))
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://sre", headers=headers) as client:
            response = await client.post("/v1/responses", json={"model": "m", "input": "Who?", **body})
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]
    finally:
        await runtime.aclose()


def message_text(response: dict[str, Any]) -> str:
    return "".join(p["text"] for i in response["output"] if i["type"] == "message" for p in i["content"])


@pytest.mark.parametrize(
    ("kind", "reply", "status"),
    [
        ("strict", VALID, "completed"),
        ("strict", AGAINST_SCHEMA, "incomplete"),
        ("json_object", '{"any": "object"}', "completed"),
        ("json_object", "[1, 2, 3]", "incomplete"),
    ],
)
async def test_structured_output_through_the_api(
    wire: Wire, tmp_path: Path, kind: str, reply: str, status: str
) -> None:
    fmt = STRICT_PARAM if kind == "strict" else {"type": "json_object"}
    wire.fake.queue(answer(wire, reply, "person" if kind == "strict" else "json_output"))
    done = await respond(wire, tmp_path, {"text": {"format": fmt}})
    sent_format(wire, STRICT if kind == "strict" else TextFormat("json_object"))
    assert done["status"] == status and done["text"] == {"format": fmt}
    assert done["incomplete_details"] == (None if status == "completed" else {"reason": "invalid_output"})
    assert json.loads(message_text(done)) == json.loads(reply)
    assert [i["type"] for i in done["output"]] == ["message"]  # Anthropic's format tool is unwrapped


# The fakes speak the real formats: what they send parses as the `openai` package's own types


async def test_fakes_send_what_the_openai_types_describe() -> None:
    import httpx

    chat, responses = ChatUpstream().start(), ResponsesUpstream().start()
    try:
        reply = Reply(text="a b c", tool_calls=[{"name": "f", "arguments": '{"x": 1}'}], cached_tokens=2)
        chat.queue(reply)
        responses.queue(reply, Reply(text="a b", finish_reason="length"))
        async with httpx.AsyncClient() as client:
            lines = (await client.post(chat.base_url + "/chat/completions", json={"stream": True})).text
            for payload in re.findall(r"^data: (.*)$", lines, re.M):
                if payload != "[DONE]":
                    ChatCompletionChunk.model_validate_json(payload)
            adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
            for _ in range(2):
                text = (await client.post(responses.base_url + "/responses", json={"stream": True})).text
                kinds = [adapter.validate_json(p).type for p in re.findall(r"^data: (.*)$", text, re.M)]
                assert kinds[-1] in ("response.completed", "response.incomplete")
    finally:
        chat.stop()
        responses.stop()


# The documented configurations work


def documented_models() -> dict[str, dict[str, Any]]:
    """Every `[models.NAME]` of the TOML examples in docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    models: dict[str, dict[str, Any]] = {}
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):
        for name, section in tomllib.loads(block).get("models", {}).items():
            assert name not in models, f"docs/configuration.md shows [models.{name}] twice"
            models[name] = section
    return models


def test_the_documentation_shows_each_endpoint() -> None:
    urls = {
        str(s.get("base_url"))
        for s in documented_models().values()
        if s.get("provider", "openai") == "openai"
    }
    for expected in (
        "https://api.openai.com/v1",
        "http://localhost:8000/v1",  # vLLM
        "http://localhost:11434/v1",  # Ollama
        "http://localhost:1234/v1",  # LM Studio
        "http://localhost:8080/v1",  # llama.cpp's server
    ):
        assert expected in urls
    assert any(re.match(r"https://[A-Z-]+\.openai\.azure\.com/openai/deployments/", u) for u in urls)
    providers = {s.get("provider", "openai") for s in documented_models().values()}
    assert {"openai", "openai-responses", "anthropic", "scripted"} <= providers


@pytest.mark.parametrize(
    "name",
    [n for n, s in documented_models().items() if s.get("provider", "openai") in FAKES],
)
async def test_documented_config_streams_a_reply(name: str) -> None:
    section = dict(documented_models()[name])
    section.pop("fallbacks", None)  # the chain is another test's business; this one streams one model
    provider = str(section.get("provider", "openai"))
    documented = urlsplit(str(section.get("base_url") or DEFAULT_BASE_URLS[provider]))
    fake = FAKES[provider]().start()
    try:
        # Same path (an Azure deployment, say) on the fake's host: only where it listens changes.
        section["base_url"] = fake.origin + documented.path
        env = {str(section["api_key_env"]): "sk-from-env"} if "api_key_env" in section else {}
        model = ModelRegistry.from_config({"models": {name: section}}, env).resolve(name)
        fake.queue(Reply(text="the documented config works"))
        events = await collect(model)
        assert text_of(events) == "the documented config works" and events[-1] == Finish("stop")
        path = urlsplit(fake.paths[-1])
        assert path.path == documented.path.rstrip("/") + fake.endpoint
        assert dict(parse_qsl(path.query)) == {k: str(v) for k, v in section.get("query", {}).items()}
        headers = fake.headers[-1]
        for key, value in section.get("headers", {}).items():
            assert headers[key.lower()] == value
        if env:
            key_header = "x-api-key" if provider == "anthropic" else "authorization"
            assert headers[key_header].endswith("sk-from-env")
        assert fake.requests[-1]["model"] == section.get("model", name)
    finally:
        fake.stop()


def test_documented_configs_are_not_all_stubs() -> None:
    # A guard for the test above: it must really have found the examples.
    assert len([s for s in documented_models().values() if s.get("provider", "openai") in FAKES]) >= 8
