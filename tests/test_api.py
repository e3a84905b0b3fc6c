"""The HTTP API in-process (httpx over ASGI) on both stores: behaviours beyond the basic turn."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sre import Runtime, SyncRuntime
from sre.api import create_app
from sre.models import ModelRegistry
from sre.testing import FunctionModel, ScriptedModel, ScriptedToolCall
from sre.types.context import ContextManifest
from tests.support.upstream import ChatUpstream, Reply


class Api:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, model: ScriptedModel) -> None:
        self.runtime, self.client, self.model = runtime, client, model

    async def post(self, path: str, body: object = None) -> httpx.Response:
        return await self.client.post(path, json=body)

    async def ok(self, method: str, path: str, body: object = None) -> dict:  # type: ignore[type-arg]
        response = await self.client.request(method, path, json=body)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    model = ScriptedModel(["ok"], name="small", context_window=600)
    runtime = Runtime.open(database_url=store_url, models=[model], env={})
    _, secret = runtime.create_key(f"api-{uuid.uuid4().hex}", "alice")
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sre", headers={"Authorization": f"Bearer {secret}"}
    ) as client:
        yield Api(runtime, client, model)
    await runtime.aclose()


def text_of(item: dict) -> str:  # type: ignore[type-arg]
    return "".join(p.get("text", "") for p in item.get("content", []))


async def test_conversation_items_crud_and_fork(api: Api) -> None:
    conv = await api.ok(
        "POST", "/v1/conversations", {"items": [{"role": "user", "content": "a"}], "metadata": {"k": "v"}}
    )
    added = await api.ok(
        "POST",
        f"/v1/conversations/{conv['id']}/items",
        {
            "items": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
                {"role": "user", "content": "c"},
            ]
        },
    )
    assert [text_of(i) for i in added["data"]] == ["b", "c"]
    listed = await api.ok("GET", f"/v1/conversations/{conv['id']}/items?order=asc&limit=2")
    assert [text_of(i) for i in listed["data"]] == ["a", "b"] and listed["has_more"]
    rest = await api.ok("GET", f"/v1/conversations/{conv['id']}/items?order=asc&after={listed['last_id']}")
    assert [text_of(i) for i in rest["data"]] == ["c"] and not rest["has_more"]
    one = await api.ok("GET", f"/v1/conversations/{conv['id']}/items/{added['data'][0]['id']}")
    assert one["role"] == "assistant"
    fork = await api.ok("POST", f"/v1/conversations/{conv['id']}/fork", {"item_id": added["data"][0]["id"]})
    await api.ok("POST", "/v1/responses", {"input": "in the fork", "conversation": fork["id"]})
    assert [i.text() for i in api.model.requests[-1].items] == ["a", "b", "in the fork"]  # type: ignore[union-attr]
    deleted = await api.ok("DELETE", f"/v1/conversations/{conv['id']}/items/{added['data'][1]['id']}")
    assert deleted["object"] == "conversation"
    updated = await api.ok("POST", f"/v1/conversations/{conv['id']}", {"metadata": {"k": "w"}})
    assert updated["metadata"] == {"k": "w"}
    assert (await api.ok("DELETE", f"/v1/conversations/{conv['id']}"))["deleted"] is True
    assert (await api.client.get(f"/v1/conversations/{conv['id']}")).status_code == 404
    fork_items = await api.ok("GET", f"/v1/conversations/{fork['id']}/items?order=asc")
    assert [text_of(i) for i in fork_items["data"]] == ["a", "b", "in the fork", "ok"]


async def test_truncation(api: Api) -> None:
    conv = await api.ok("POST", "/v1/conversations")
    words = " ".join(["word"] * 100)  # about 130 tokens a message; the window is 600 minus the reserve
    for _ in range(6):
        await api.ok(
            "POST", f"/v1/conversations/{conv['id']}/items", {"items": [{"role": "user", "content": words}]}
        )
    refused = await api.post("/v1/responses", {"input": "hi", "conversation": conv["id"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
    before = len(api.model.requests)
    done = await api.ok(
        "POST", "/v1/responses", {"input": "hi", "conversation": conv["id"], "truncation": "auto"}
    )
    assert done["truncation"] == "auto" and len(api.model.requests) == before + 1
    sent = api.model.requests[-1].items
    assert 1 < len(sent) < 7 and sent[-1].text() == "hi"  # type: ignore[union-attr]
    caller = await api.runtime.authenticate(api.client.headers["authorization"].removeprefix("Bearer "))
    calls = api.runtime.store.responses.model_calls(caller.tenant_id, done["id"])
    manifest = ContextManifest.from_stored(calls[0].manifest)
    assert manifest is not None and manifest.older_items is True
    history = next(s for s in manifest.sections if s.section == "history")
    assert history.included == len(sent) - 1


async def test_store_false_and_input_items(api: Api) -> None:
    unstored = await api.ok("POST", "/v1/responses", {"input": "x", "store": False})
    assert unstored["store"] is False
    assert (await api.client.get(f"/v1/responses/{unstored['id']}")).status_code == 404
    many = [{"role": "user", "content": f"m{i}"} for i in range(5)]
    stored = await api.ok("POST", "/v1/responses", {"input": many, "metadata": {"run": "1"}})
    again = await api.ok("GET", f"/v1/responses/{stored['id']}")
    assert again["metadata"] == {"run": "1"} and again["output"] == stored["output"]
    page = await api.ok("GET", f"/v1/responses/{stored['id']}/input_items?limit=2")
    assert [text_of(i) for i in page["data"]] == ["m4", "m3"] and page["has_more"]
    page = await api.ok("GET", f"/v1/responses/{stored['id']}/input_items?limit=10&after={page['last_id']}")
    assert [text_of(i) for i in page["data"]] == ["m2", "m1", "m0"]


async def test_streamed_tool_calls(api: Api) -> None:
    api.model.replies[:] = [
        [
            ScriptedToolCall("lookup", {"q": "one"}, "call_1"),
            ScriptedToolCall("lookup", {"q": "two"}, "call_2"),
        ]
    ]
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    async with api.client.stream(
        "POST", "/v1/responses", json={"input": "go", "tools": tools, "stream": True}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) async for line in response.aiter_lines() if line.startswith("data:")]
    types = [e["type"] for e in events]
    assert types.count("response.function_call_arguments.delta") == 4
    assert types.count("response.function_call_arguments.done") == 2
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [(o["call_id"], json.loads(o["arguments"])) for o in final["output"]] == [
        ("call_1", {"q": "one"}),
        ("call_2", {"q": "two"}),
    ]
    api.model.replies[:] = ["done"]
    outputs = [{"type": "function_call_output", "call_id": c, "output": "r"} for c in ("call_1", "call_2")]
    done = await api.ok(
        "POST", "/v1/responses", {"previous_response_id": final["id"], "input": outputs, "tools": tools}
    )
    assert done["output"][0]["content"][0]["text"] == "done"


async def test_health_models_and_openapi(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
    models = await api.ok("GET", "/v1/models")
    assert models["data"][1]["id"] == "local-embeddings" and models["data"][1]["dimensions"] == 384
    assert models["data"][:1] == [
        {
            "id": "small",
            "object": "model",
            "created": 0,
            "owned_by": "scripted",
            "context_window": 600,
            "pricing": None,
        }
    ]
    spec = (await api.client.get("/openapi.json")).json()
    for path in (
        "/v1/responses",
        "/v1/responses/{response_id}/input_items",
        "/v1/conversations/{conversation_id}/items",
    ):
        assert path in spec["paths"]
    assert "CreateResponse" in json.dumps(spec)


async def test_incomplete_when_the_model_hits_its_limit(tmp_path: Path, upstream: ChatUpstream) -> None:
    registry = ModelRegistry.from_config(
        {"models": {"up": {"provider": "openai", "base_url": upstream.base_url}}}, {}
    )
    runtime = Runtime.open(data_dir=tmp_path, models=registry, env={})
    try:
        upstream.queue(Reply(text="cut short", finish_reason="length"))
        result = await runtime.create_response(runtime.local_caller(), {"input": "x", "max_output_tokens": 2})
        assert result["status"] == "incomplete" and result["incomplete_details"] == {
            "reason": "max_output_tokens"
        }
        assert upstream.requests[-1]["max_tokens"] == 2
    finally:
        await runtime.aclose()


async def test_model_failure_is_recorded_and_leaves_the_conversation_alone(tmp_path: Path) -> None:
    def flaky(request: object) -> object:
        raise RuntimeError("boom")

    runtime = Runtime.open(data_dir=tmp_path, models=[FunctionModel(flaky)], env={})
    caller = runtime.local_caller()
    try:
        conv = await runtime.create_conversation(caller)
        with pytest.raises(Exception) as err:
            await runtime.create_response(caller, {"input": "x", "conversation": conv["id"]})
        assert "boom" in str(err.value)
        assert (await runtime.list_items(caller, conv["id"]))["data"] == []
    finally:
        await runtime.aclose()


def test_sync_runtime(tmp_path: Path) -> None:
    with SyncRuntime.open(data_dir=tmp_path, models=[ScriptedModel(["hi", "again"])], env={}) as rt:
        caller = rt.local_caller()
        conv = rt.create_conversation(caller)
        assert (
            rt.create_response(caller, {"input": "one", "conversation": conv["id"]})["output"][0]["content"][
                0
            ]["text"]
            == "hi"
        )
        events = rt.stream_response(caller, {"input": "two", "conversation": conv["id"]})
        assert events[-1]["type"] == "response.completed"
        assert len(rt.list_items(caller, conv["id"])["data"]) == 4


async def test_a_turn_whose_conversation_vanishes_ends_its_stream_with_an_error(tmp_path: Path) -> None:
    runtime: Runtime | None = None

    def deleting(request: object) -> str:
        assert runtime is not None
        runtime.store.conversations.delete(caller.tenant_id, conv["id"])  # another client, meanwhile
        return "too late"

    runtime = Runtime.open(data_dir=tmp_path, models=[FunctionModel(deleting)], env={})
    caller = runtime.local_caller()
    try:
        conv = await runtime.create_conversation(caller)
        stream = await runtime.stream_response(caller, {"input": "x", "conversation": conv["id"]})
        events = [event async for event in stream]
        assert events[-1]["type"] == "error" and events[-1]["code"] == "not_found"
        assert events[-1]["sequence_number"] == events[-2]["sequence_number"] + 1
        assert "response.completed" not in [e["type"] for e in events]
    finally:
        await runtime.aclose()
