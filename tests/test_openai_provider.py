"""The `openai` provider over a real socket, against the fake Chat Completions upstream."""

from __future__ import annotations

import json

import pytest

from sre.models.base import Finish, ModelInfo, ModelRequest, TextDelta, ToolCallDelta, Usage
from sre.models.config import ModelRegistry
from sre.models.guard import check_allowed
from sre.models.openai_chat import OpenAIChatModel
from sre.types.errors import ConfigError, InvalidRequest, ModelError, RateLimited
from sre.types.items import FunctionCall, FunctionCallOutput, parse_input_items
from tests.support.upstream import ChatUpstream, Reply


def model_for(upstream: ChatUpstream, **options: object) -> OpenAIChatModel:
    info = ModelInfo(
        name="fake",
        provider="openai",
        upstream_model="up-model",
        context_window=8000,
        options={"base_url": upstream.base_url, "api_key": "sk-test", **options},
    )
    return OpenAIChatModel(info)


async def collect(model: OpenAIChatModel, request: ModelRequest) -> list[object]:
    try:
        return [event async for event in model.stream(request)]
    finally:
        await model.aclose()


async def test_text_streams_with_usage(upstream: ChatUpstream) -> None:
    upstream.queue(Reply(text="hello there world"))
    events = await collect(
        model_for(upstream), ModelRequest(items=parse_input_items("hi"), instructions="be brief")
    )
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "hello there world"
    assert len([e for e in events if isinstance(e, TextDelta)]) == 3
    assert any(isinstance(e, Usage) and e.output_tokens == 7 for e in events)
    assert events[-1] == Finish("stop")
    sent = upstream.requests[-1]
    assert sent["model"] == "up-model" and sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert upstream.headers[-1]["authorization"] == "Bearer sk-test"


async def test_parallel_tool_calls_split_across_chunks(upstream: ChatUpstream) -> None:
    upstream.queue(
        Reply(
            tool_calls=[
                {"name": "weather", "arguments": '{"city": "Paris", "unit": "c"}', "id": "call_a"},
                {"name": "time", "arguments": '{"tz": "Europe/Paris"}', "id": "call_b"},
            ]
        )
    )
    events = await collect(model_for(upstream), ModelRequest(items=parse_input_items("x")))
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        if isinstance(e, ToolCallDelta):
            entry = calls.setdefault(e.index, {"id": "", "name": "", "args": ""})
            entry["id"] = e.call_id or entry["id"]
            entry["name"] = e.name or entry["name"]
            entry["args"] += e.arguments
    assert calls[0] == {"id": "call_a", "name": "weather", "args": '{"city": "Paris", "unit": "c"}'}
    assert json.loads(calls[1]["args"]) == {"tz": "Europe/Paris"}
    assert events[-1] == Finish("tool_calls")


async def test_request_translation(upstream: ChatUpstream) -> None:
    items = [
        *parse_input_items([{"role": "developer", "content": "dev note"}, {"role": "user", "content": "go"}]),
        FunctionCall(call_id="c1", name="f", arguments="{}"),
        FunctionCall(call_id="c2", name="g", arguments='{"a":1}'),
        FunctionCallOutput(call_id="c1", output="r1"),
        FunctionCallOutput(call_id="c2", output="r2"),
    ]
    from sre.models.base import FunctionTool

    request = ModelRequest(
        items=items,
        tools=[FunctionTool(name="f", parameters={"type": "object", "properties": {}})],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        temperature=0.2,
        max_output_tokens=50,
    )
    await collect(model_for(upstream), request)
    sent = upstream.requests[-1]
    assert sent["messages"][0] == {"role": "system", "content": "dev note"}
    assert sent["messages"][2]["tool_calls"][1]["function"] == {"name": "g", "arguments": '{"a":1}'}
    assert len(sent["messages"][2]["tool_calls"]) == 2  # consecutive calls share one assistant message
    assert sent["messages"][3:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "tool", "tool_call_id": "c2", "content": "r2"},
    ]
    assert sent["tools"][0]["function"]["name"] == "f"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert sent["parallel_tool_calls"] is False and sent["temperature"] == 0.2 and sent["max_tokens"] == 50


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        (Reply(status=429, retry_after="2", error_message="slow down"), RateLimited, "upstream_rate_limited"),
        (Reply(status=500), ModelError, "upstream_error"),
        (Reply(status=503), ModelError, "upstream_error"),
        (Reply(status=400, error_message="context too long"), InvalidRequest, "upstream_bad_request"),
        (Reply(text="one two three four", cut_after_chunks=3), ModelError, "upstream_incomplete"),
        (Reply(text="x", malformed=True), ModelError, "upstream_malformed"),
    ],
)
async def test_upstream_failures_are_clear_errors(
    upstream: ChatUpstream, reply: Reply, error: type[Exception], code: str
) -> None:
    upstream.queue(reply)
    with pytest.raises(error) as info:
        await collect(model_for(upstream), ModelRequest(items=parse_input_items("x")))
    assert getattr(info.value, "code", None) == code


async def test_unreachable_upstream() -> None:
    from tests.support.server import free_port

    info = ModelInfo("m", "openai", "m", 8000, {"base_url": f"http://127.0.0.1:{free_port()}/v1"})
    with pytest.raises(ModelError) as err:
        await collect(OpenAIChatModel(info), ModelRequest(items=parse_input_items("x")))
    assert err.value.code == "model_unreachable"


def test_real_requests_are_blocked_in_tests() -> None:
    with pytest.raises(ModelError) as err:
        check_allowed("https://api.openai.com/v1/chat/completions")
    assert err.value.code == "model_requests_blocked"
    check_allowed("http://127.0.0.1:9/v1/chat/completions")  # loopback fakes stay allowed


def test_config_from_toml_and_environment() -> None:
    config = {
        "default_model": "a",
        "models": {
            "a": {"provider": "openai", "base_url": "http://127.0.0.1:1/v1"},
            "b": {"provider": "scripted", "replies": ["hi"]},
        },
    }
    env = {"SRE_MODELS__A__CONTEXT_WINDOW": "4096", "SRE_MODELS__A__API_KEY": "k"}
    registry = ModelRegistry.from_config(config, env)
    assert registry.default == "a"
    assert registry.resolve(None).info.context_window == 4096
    assert registry.resolve("a").info.options["api_key"] == "k"
    assert registry.resolve("b").info.provider == "scripted"
    quick = ModelRegistry.from_config(
        {}, {"SRE_OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "SRE_OPENAI_MODEL": "llama"}
    )
    assert quick.default == "llama"
    with pytest.raises(InvalidRequest):
        registry.resolve("nope")
    for bad in (
        {"models": {"a": {"provider": "telepathy"}}},
        {"models": {"a": {"colour": "red"}}},
        {"models": {"a": {"context_window": 10}}},
        {"default_model": "z", "models": {}},
    ):
        with pytest.raises(ConfigError):
            ModelRegistry.from_config(bad, {})
