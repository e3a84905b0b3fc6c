"""The model gateway around any provider: retries, fallbacks, token counts, cost and usage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import tiktoken

from sre import Runtime
from sre.api import create_app
from sre.models import ModelRegistry, ModelRequest
from sre.models.resilience import FallbackModel, RetryingModel
from sre.models.tokens import encoding_for, tiktoken_tokenizer
from sre.testing import ScriptedModel
from sre.types.errors import ConfigError, InvalidRequest, ModelError, RateLimited
from sre.types.items import parse_input_items
from tests.support.upstream import ChatUpstream, Reply


def registry(upstream: ChatUpstream, **extra: object) -> ModelRegistry:
    section = {"provider": "openai", "base_url": upstream.base_url, "model": "gpt-4o-mini", **extra}
    return ModelRegistry.from_config({"models": {"m": section}}, {})


async def text_of(model: object, prompt: str = "hi") -> str:
    out = []
    async for event in model.stream(ModelRequest(items=parse_input_items(prompt))):  # type: ignore[attr-defined]
        if getattr(event, "type", "") == "text_delta":
            out.append(event.text)
    return "".join(out)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def retrying(upstream: ChatUpstream, **kwargs: object) -> tuple[RetryingModel, Sleeps]:
    sleeps = Sleeps()
    inner = registry(upstream, retries=0).resolve("m")
    return RetryingModel(inner, sleep=sleeps, **kwargs), sleeps  # type: ignore[arg-type]


async def test_retries_after_a_server_error(upstream: ChatUpstream) -> None:
    upstream.queue(Reply(status=500), Reply(status=503), Reply(text="finally"))
    model, sleeps = retrying(upstream, max_retries=3, base_delay=0.1)
    assert await text_of(model) == "finally"
    assert len(upstream.requests) == 3 and len(sleeps.calls) == 2
    assert 0.05 <= sleeps.calls[0] <= 0.1 and 0.1 <= sleeps.calls[1] <= 0.2  # exponential, jittered


async def test_retry_after_is_honoured_and_capped(upstream: ChatUpstream) -> None:
    upstream.queue(Reply(status=429, retry_after="3"), Reply(text="ok now"))
    model, sleeps = retrying(upstream, max_retries=2)
    assert await text_of(model) == "ok now" and sleeps.calls == [3.0]
    upstream.queue(Reply(status=429, retry_after="120"))
    with pytest.raises(RateLimited):  # longer than max_delay: give up at once, let the client decide
        await text_of(model)
    assert sleeps.calls == [3.0]


async def test_gives_up_after_max_retries(upstream: ChatUpstream) -> None:
    upstream.queue(*[Reply(status=502) for _ in range(3)])
    model, sleeps = retrying(upstream, max_retries=2)
    with pytest.raises(ModelError):
        await text_of(model)
    assert len(upstream.requests) == 3 and len(sleeps.calls) == 2


async def test_no_retry_for_bad_requests_or_after_output(upstream: ChatUpstream) -> None:
    upstream.queue(Reply(status=400, error_message="bad"))
    model, sleeps = retrying(upstream)
    with pytest.raises(InvalidRequest):
        await text_of(model)
    upstream.queue(Reply(text="partial answer here", cut_after_chunks=3))
    with pytest.raises(ModelError) as err:
        await text_of(model)
    assert err.value.code == "upstream_incomplete" and sleeps.calls == [] and len(upstream.requests) == 2


async def test_cut_before_any_output_is_retried(upstream: ChatUpstream) -> None:
    upstream.queue(Reply(text="x", cut_after_chunks=0), Reply(text="whole"))
    model, _ = retrying(upstream)
    assert await text_of(model) == "whole"


async def test_fallback_chain(upstream: ChatUpstream) -> None:
    second = ChatUpstream().start()
    try:
        config = {
            "models": {
                "primary": {
                    "provider": "openai",
                    "base_url": upstream.base_url,
                    "retries": 0,
                    "fallbacks": ["backup"],
                },
                "backup": {"provider": "openai", "base_url": second.base_url, "retries": 0},
            }
        }
        models = ModelRegistry.from_config(config, {})
        primary = models.resolve("primary")
        assert isinstance(primary, FallbackModel) and primary.name == "primary"
        upstream.queue(Reply(status=500))
        second.queue(Reply(text="from the backup"))
        assert await text_of(primary) == "from the backup"
        upstream.queue(Reply(status=500))
        second.queue(Reply(status=500))
        with pytest.raises(ModelError):
            await text_of(primary)
        await models.aclose()
    finally:
        second.stop()
    with pytest.raises(ConfigError):
        ModelRegistry.from_config({"models": {"a": {"fallbacks": ["ghost"]}}}, {})


def test_tiktoken_counts_offline() -> None:
    assert encoding_for("gpt-4o-mini") == "o200k_base" and encoding_for("gpt-4-turbo") == "cl100k_base"
    assert encoding_for("llama3.2") is None
    text = "Stateful runtimes remember what stateless models forget."
    ours = tiktoken_tokenizer("o200k_base").count(text)
    assert ours == len(tiktoken.get_encoding("o200k_base").encode(text))  # loaded from the bundled file


def test_request_counts_are_exact_or_flagged(upstream: ChatUpstream) -> None:
    request = ModelRequest(
        items=parse_input_items("Hello there, how are you today?"), instructions="Be brief."
    )
    exact = registry(upstream).resolve("m").count_tokens(request)
    enc = tiktoken.get_encoding("o200k_base")
    assert exact.exact and exact.tokens == 3 + 3 + len(enc.encode("Be brief.")) + 3 + len(
        enc.encode("Hello there, how are you today?")
    )
    estimated = ScriptedModel().count_tokens(request)
    assert not estimated.exact and estimated.tokens > 0


@pytest.fixture
async def priced(
    tmp_path: Path, upstream: ChatUpstream
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient, str, str]]:
    config = {
        "models": {
            "m": {
                "provider": "openai",
                "base_url": upstream.base_url,
                "model": "gpt-4o-mini",
                "input_price": 1.0,
                "output_price": 2.0,
                "cached_input_price": 0.5,
            }
        }
    }
    runtime = Runtime.open(data_dir=tmp_path, models=ModelRegistry.from_config(config, {}), env={})
    tenant = f"usage-{uuid.uuid4().hex}"
    _, alice = runtime.create_key(tenant, "alice", role="admin")  # an admin sees the tenant's usage
    _, bob = runtime.create_key(tenant, "bob")
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://sre") as client:
        yield runtime, client, alice, bob
    await runtime.aclose()


async def test_usage_and_cost(
    priced: tuple[Runtime, httpx.AsyncClient, str, str], upstream: ChatUpstream
) -> None:
    _, client, alice, bob = priced
    for key in (alice, alice, bob):
        r = await client.post(
            "/v1/responses", json={"input": "hello"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200, r.text
    upstream.queue(Reply(status=400))
    await client.post("/v1/responses", json={"input": "x"}, headers={"Authorization": f"Bearer {bob}"})
    usage = (await client.get("/v1/usage", headers={"Authorization": f"Bearer {alice}"})).json()["data"]
    by_principal = {row["principal_id"]: row for row in usage}
    assert len(by_principal) == 2 and all(row["model"] == "m" for row in usage)
    calls = sorted(row["calls"] for row in usage)
    assert calls == [2, 2]
    assert sorted(row["failed_calls"] for row in usage) == [0, 1]
    sent = upstream.requests[0]
    prompt_tokens = sum(len(str(m.get("content") or "")) // 4 + 1 for m in sent["messages"])
    alice_row = next(row for row in usage if row["failed_calls"] == 0)
    assert alice_row["input_tokens"] == 2 * prompt_tokens and alice_row["output_tokens"] == 14
    assert alice_row["cost_usd"] == pytest.approx((2 * prompt_tokens * 1.0 + 14 * 2.0) / 1e6)
    empty = (
        await client.get("/v1/usage?start_time=4102444800", headers={"Authorization": f"Bearer {alice}"})
    ).json()
    assert empty["data"] == []
    bad = await client.get("/v1/usage?start_time=10&end_time=5", headers={"Authorization": f"Bearer {alice}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "end_time"
    # A member sees its own usage only.
    own = (await client.get("/v1/usage", headers={"Authorization": f"Bearer {bob}"})).json()["data"]
    assert [row["principal_id"] for row in own] == [
        next(p for p in by_principal if p != alice_row["principal_id"])
    ]


async def test_input_tokens_endpoint(
    priced: tuple[Runtime, httpx.AsyncClient, str, str], upstream: ChatUpstream
) -> None:
    _, client, alice, _ = priced
    auth = {"Authorization": f"Bearer {alice}"}
    first = (await client.post("/v1/responses", json={"input": "My name is Ada."}, headers=auth)).json()
    before = len(upstream.requests)
    counted = await client.post(
        "/v1/responses/input_tokens",
        json={"input": "What is my name?", "previous_response_id": first["id"]},
        headers=auth,
    )
    assert counted.status_code == 200, counted.text
    body = counted.json()
    enc = tiktoken.get_encoding("o200k_base")
    expected = 3 + sum(
        3 + len(enc.encode(t)) for t in ("My name is Ada.", "echo: My name is Ada.", "What is my name?")
    )
    assert body == {"object": "response.input_tokens", "input_tokens": expected, "exact": True}
    assert len(upstream.requests) == before  # counted, not sent
    missing = await client.post(
        "/v1/responses/input_tokens", json={"previous_response_id": "resp_nope"}, headers=auth
    )
    assert missing.status_code == 404


def test_documented_fallback_chain_loads() -> None:
    import re
    import tomllib

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "fallbacks" in b)
    models = ModelRegistry.from_config(
        tomllib.loads(block), {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    )
    primary = models.resolve("primary")
    assert isinstance(primary, FallbackModel) and [m.name for m in primary.chain] == ["primary", "secondary"]
    assert isinstance(primary.chain[0], RetryingModel) and primary.chain[0].max_retries == 3
    secondary = models.resolve("secondary")
    assert secondary.info.pricing is not None and secondary.info.pricing.output == 4.0
