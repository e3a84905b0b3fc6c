"""What only the `openai` (Chat Completions) provider does, over a real socket against its fake.

Everything every provider must do alike (streaming, tool calls, usage, errors, request translation)
is in tests/test_provider_conformance.py; this file keeps the Chat Completions specifics and the
registry's configuration rules.
"""

from __future__ import annotations

import pytest

from sre.models.base import ModelInfo, ModelRequest
from sre.models.config import ModelRegistry
from sre.models.guard import check_allowed
from sre.models.openai_chat import OpenAIChatModel
from sre.models.upstream import stream_error
from sre.types.errors import ConfigError, InvalidRequest, ModelError, RateLimited
from sre.types.items import parse_input_items
from tests.support.upstream import ChatUpstream


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


async def test_output_limit_parameter_is_configurable(upstream: ChatUpstream) -> None:
    request = ModelRequest(items=parse_input_items("hi"), max_output_tokens=50)
    await collect(model_for(upstream, max_tokens_param="max_completion_tokens"), request)
    assert upstream.requests[-1]["max_completion_tokens"] == 50 and "max_tokens" not in upstream.requests[-1]


async def test_user_images_become_image_url_parts(upstream: ChatUpstream) -> None:
    items = parse_input_items(
        [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                ],
            }
        ]
    )
    await collect(model_for(upstream), ModelRequest(items=items))
    assert upstream.requests[-1]["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        }
    ]


def test_errors_reported_mid_stream_keep_their_meaning() -> None:
    # OpenAI names a mid-stream failure by type or code; vLLM gives the HTTP status it would have sent.
    assert stream_error("m", "overloaded", "server_error").retryable
    assert not stream_error("m", "bad request", 400).retryable
    assert stream_error("m", "unavailable", 503).retryable
    limited = stream_error("m", "slow down", "rate_limit_exceeded")
    assert isinstance(limited, RateLimited) and limited.retryable
    assert isinstance(stream_error("m", "slow down", 429), RateLimited)


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
