"""Agents: `/v1/agents` CRUD and versions, and turns that name `model: "agent:NAME[@VERSION]"`.

In-process over HTTP (httpx over ASGI) on both stores, with a function model that records every
request it is sent, so the tests see exactly which instructions and tools reached the model; and
once end to end, with the official `openai` client against `sre serve` as a real process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sre import Runtime, SyncRuntime
from sre.api import create_app
from sre.models import ModelRequest
from sre.testing import FunctionModel, ScriptedModel
from sre.types.agents import AgentDefinition
from sre.types.records import Caller
from tests.support.upstream import ChatUpstream
from tests.test_e2e_openai_client import Harness

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Find a thing",
    "parameters": {"type": "object"},
}


class Api:
    def __init__(
        self, runtime: Runtime, client: httpx.AsyncClient, model: FunctionModel, secret: str
    ) -> None:
        self.runtime, self.client, self.model, self.secret = runtime, client, model, secret

    async def ok(self, method: str, path: str, body: object = None, **params: Any) -> dict[str, Any]:
        response = await self.client.request(method, path, json=body, params=params or None)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def fails(self, method: str, path: str, body: object = None, **params: Any) -> httpx.Response:
        response = await self.client.request(method, path, json=body, params=params or None)
        assert response.status_code >= 400, response.text
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        return response

    @property
    def last(self) -> ModelRequest:
        return self.model.requests[-1]

    async def caller(self) -> Caller:
        return await self.runtime.authenticate(self.secret)


def _reply(request: ModelRequest) -> str:
    return f"ok ({len(request.tools)} tools)"


@pytest.fixture
async def api(store_url: str) -> AsyncIterator[Api]:
    small = FunctionModel(_reply, name="small")
    big = FunctionModel(_reply, name="big")
    runtime = Runtime.open(database_url=store_url, models=[small, big], env={})
    _, secret = runtime.create_key(f"agents-{uuid.uuid4().hex}", "alice", role="developer")
    transport = httpx.ASGITransport(app=create_app(runtime))
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://sre", headers=headers) as client:
        api = Api(runtime, client, small, secret)
        api.big = big  # type: ignore[attr-defined]
        yield api
    await runtime.aclose()


async def test_create_get_update_versions_delete(api: Api) -> None:
    created = await api.ok(
        "POST",
        "/v1/agents",
        {
            "name": "helper",
            "instructions": "You are terse.",
            "tools": [LOOKUP],
            "metadata": {"team": "ops"},
            "limits": {"max_tool_calls": 5, "max_steps": 10, "deadline_seconds": 60},
            "approval": {"tools_requiring_approval": ["lookup"]},
            "concurrency": "enqueue",
        },
    )
    assert created == {
        "id": "helper",
        "object": "agent",
        "name": "helper",
        "version": 1,
        "created_at": created["created_at"],
        "instructions": "You are terse.",
        "model": "small",  # none named: the default model, written down
        "tools": [LOOKUP],
        "metadata": {"team": "ops"},
        "limits": {"max_tool_calls": 5, "max_steps": 10, "deadline_seconds": 60},
        "approval": {
            "tools_requiring_approval": ["lookup"],
            "tools_denied": [],
            "rules": [],
            "approvers": [],
        },
        "concurrency": "enqueue",
        "context": {"sections": {}, "compaction": False, "compact_threshold": None, "keep_recent": 0.5},
        "compaction_model": None,
    }
    assert await api.ok("GET", "/v1/agents/helper") == created
    conflict = await api.fails("POST", "/v1/agents", {"name": "helper"})
    assert conflict.status_code == 409 and conflict.json()["error"]["param"] == "name"

    # An update names only what changes; the rest is carried over into the new version.
    second = await api.ok("POST", "/v1/agents/helper", {"instructions": "You are verbose.", "model": "big"})
    assert (second["version"], second["instructions"], second["model"]) == (2, "You are verbose.", "big")
    assert second["tools"] == [LOOKUP] and second["limits"] == created["limits"]
    third = await api.ok("POST", "/v1/agents/helper", {"limits": None, "metadata": {"team": "dev"}})
    assert third["version"] == 3 and third["metadata"] == {"team": "dev"}
    assert third["limits"] == {"max_tool_calls": None, "max_steps": None, "deadline_seconds": None}
    assert (await api.ok("GET", "/v1/agents/helper"))["version"] == 3
    assert await api.ok("GET", "/v1/agents/helper", version=1) == created  # old versions never change
    missing = await api.fails("GET", "/v1/agents/helper", version=9)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "version"

    versions = await api.ok("GET", "/v1/agents/helper/versions", limit=2)
    assert [v["version"] for v in versions["data"]] == [3, 2] and versions["has_more"]
    assert versions["last_version"] == 2
    rest = await api.ok("GET", "/v1/agents/helper/versions", after=versions["last_version"])
    assert [v["version"] for v in rest["data"]] == [1] and not rest["has_more"]
    ascending = await api.ok("GET", "/v1/agents/helper/versions", order="asc")
    assert [v["version"] for v in ascending["data"]] == [1, 2, 3]

    assert await api.ok("DELETE", "/v1/agents/helper") == {
        "id": "helper",
        "object": "agent.deleted",
        "deleted": True,
    }
    for method, path in (
        ("GET", "/v1/agents/helper"),
        ("GET", "/v1/agents/helper/versions"),
        ("DELETE", "/v1/agents/helper"),
    ):
        assert (await api.fails(method, path)).status_code == 404
    assert (await api.fails("POST", "/v1/agents/helper", {"instructions": "x"})).status_code == 404
    again = await api.ok("POST", "/v1/agents", {"name": "helper", "model": "big"})
    assert again["version"] == 4 and again["instructions"] is None and again["tools"] == []
    assert [v["version"] for v in (await api.ok("GET", "/v1/agents/helper/versions"))["data"]] == [4]


async def test_list_is_by_name_with_cursors(api: Api) -> None:
    for name in ("b", "a", "c-2", "c_1", "d"):
        await api.ok("POST", "/v1/agents", {"name": name})
    await api.ok("POST", "/v1/agents/a", {"instructions": "newer"})
    await api.ok("DELETE", "/v1/agents/d")
    page = await api.ok("GET", "/v1/agents", limit=2)
    assert [a["name"] for a in page["data"]] == ["a", "b"] and page["has_more"]
    assert page["data"][0]["version"] == 2 and page["first_id"] == "a" and page["last_id"] == "b"
    rest = await api.ok("GET", "/v1/agents", after=page["last_id"])
    assert [a["name"] for a in rest["data"]] == ["c-2", "c_1"] and not rest["has_more"]
    backwards = await api.ok("GET", "/v1/agents", order="desc")
    assert [a["name"] for a in backwards["data"]] == ["c_1", "c-2", "b", "a"]


async def test_the_model_must_be_configured(api: Api) -> None:
    refused = await api.fails("POST", "/v1/agents", {"name": "x", "model": "gpt-9"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
    assert refused.json()["error"]["code"] == "model_not_found"
    await api.ok("POST", "/v1/agents", {"name": "x"})
    refused = await api.fails("POST", "/v1/agents/x", {"model": "gpt-9"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
    assert [v["version"] for v in (await api.ok("GET", "/v1/agents/x/versions"))["data"]] == [1]


async def test_a_turn_runs_with_the_agents_model_instructions_and_tools(api: Api) -> None:
    await api.ok(
        "POST",
        "/v1/agents",
        {"name": "helper", "model": "big", "instructions": "You are terse.", "tools": [LOOKUP]},
    )
    mine = [
        {"type": "function", "name": "lookup", "description": "The request's own lookup"},
        {"type": "function", "name": "weather"},
    ]
    before = len(api.model.requests)
    done = await api.ok(
        "POST",
        "/v1/responses",
        {"model": "agent:helper", "input": "hi", "instructions": "Answer in French.", "tools": mine},
    )
    big: FunctionModel = api.big  # type: ignore[attr-defined]
    assert len(api.model.requests) == before and len(big.requests) == 1  # the agent's model ran
    sent = big.requests[-1]
    assert sent.instructions == "You are terse.\n\nAnswer in French."
    assert [(t.name, t.description) for t in sent.tools] == [
        ("lookup", "The request's own lookup"),  # the request's tool wins the clash
        ("weather", None),
    ]
    assert done["model"] == "agent:helper" and done["agent"] == {"name": "helper", "version": 1}
    assert done["instructions"] == "You are terse.\n\nAnswer in French."
    assert [t["name"] for t in done["tools"]] == ["lookup", "weather"]
    stored = await api.ok("GET", f"/v1/responses/{done['id']}")
    assert stored["model"] == "agent:helper" and stored["agent"] == {"name": "helper", "version": 1}
    assert stored["output"] == done["output"]
    calls = api.runtime.store.responses.model_calls((await api.caller()).tenant_id, done["id"])
    assert [c.model for c in calls] == ["big"]  # usage is counted against the model that ran

    only_agent = await api.ok("POST", "/v1/responses", {"model": "agent:helper", "input": "again"})
    assert big.requests[-1].instructions == "You are terse." and [t.name for t in big.requests[-1].tools] == [
        "lookup"
    ]
    assert only_agent["tools"] == [LOOKUP]

    plain = await api.ok("POST", "/v1/responses", {"input": "no agent"})
    assert plain["model"] == "small" and "agent" not in plain and api.last.instructions is None


async def test_updates_reach_the_next_turn_and_versions_can_be_pinned(api: Api) -> None:
    await api.ok("POST", "/v1/agents", {"name": "helper", "instructions": "v1 rules", "tools": [LOOKUP]})
    await api.ok("POST", "/v1/agents/helper", {"instructions": "v2 rules", "tools": []})
    conv = await api.ok("POST", "/v1/conversations")
    latest = await api.ok(
        "POST", "/v1/responses", {"model": "agent:helper", "input": "one", "conversation": conv["id"]}
    )
    assert api.last.instructions == "v2 rules" and list(api.last.tools) == []
    assert latest["agent"] == {"name": "helper", "version": 2}
    pinned = await api.ok(
        "POST", "/v1/responses", {"model": "agent:helper@1", "input": "two", "conversation": conv["id"]}
    )
    assert api.last.instructions == "v1 rules" and [t.name for t in api.last.tools] == ["lookup"]
    assert pinned["model"] == "agent:helper" and pinned["agent"] == {"name": "helper", "version": 1}
    assert [i.text() for i in api.last.items] == ["one", "ok (0 tools)", "two"]  # type: ignore[union-attr]
    chained = await api.ok(
        "POST",
        "/v1/responses",
        {"model": "agent:helper", "input": "three", "previous_response_id": pinned["id"]},
    )
    assert chained["agent"]["version"] == 2 and api.last.instructions == "v2 rules"

    async with api.client.stream(
        "POST", "/v1/responses", json={"model": "agent:helper@1", "input": "four", "stream": True}
    ) as response:
        events = [json.loads(line[5:]) async for line in response.aiter_lines() if line.startswith("data:")]
    assert events[0]["response"]["model"] == "agent:helper"
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["agent"] == {"name": "helper", "version": 1}

    counted = await api.ok("POST", "/v1/responses/input_tokens", {"model": "agent:helper@1", "input": "x"})
    plain = await api.ok("POST", "/v1/responses/input_tokens", {"input": "x"})
    assert counted["input_tokens"] > plain["input_tokens"]  # the agent's instructions and tools count


async def test_an_unknown_agent_is_an_unknown_model(api: Api, store_url: str) -> None:
    await api.ok("POST", "/v1/agents", {"name": "helper"})
    await api.ok("POST", "/v1/agents", {"name": "gone"})
    await api.ok("DELETE", "/v1/agents/gone")
    for model, code in (
        ("agent:nobody", "model_not_found"),
        ("agent:gone", "model_not_found"),
        ("agent:helper@2", "model_not_found"),
        ("agent:helper@99999999999999999999", "model_not_found"),
        ("agent:", "invalid_value"),
        ("agent:bad name", "invalid_value"),
        ("agent:helper@", "invalid_value"),
        ("agent:helper@0x1", "invalid_value"),
        ("agent:helper@-1", "invalid_value"),
    ):
        refused = await api.fails("POST", "/v1/responses", {"model": model, "input": "hi"})
        error = refused.json()["error"]
        assert (refused.status_code, error["param"], error["code"]) == (400, "model", code), (model, error)
    assert api.model.requests == []

    # An agent whose model is no longer configured says so when it is used.
    other = Runtime.open(database_url=store_url, models=[ScriptedModel(name="other")], env={})
    try:
        caller = await other.authenticate(api.secret)
        with pytest.raises(Exception) as err:
            await other.create_response(caller, {"model": "agent:helper", "input": "hi"})
        assert getattr(err.value, "param", None) == "model" and "Agent 'helper'" in str(err.value)
    finally:
        await other.aclose()


async def test_agents_of_another_tenant_do_not_exist(api: Api) -> None:
    await api.ok("POST", "/v1/agents", {"name": "private", "instructions": "secret"})
    _, other = api.runtime.create_key(f"other-{uuid.uuid4().hex}", "bob", role="developer")
    headers = {"Authorization": f"Bearer {other}"}
    for method, path, body in (
        ("GET", "/v1/agents/private", None),
        ("GET", "/v1/agents/private/versions", None),
        ("POST", "/v1/agents/private", {"instructions": "mine now"}),
        ("DELETE", "/v1/agents/private", None),
    ):
        response = await api.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 404, (method, path, response.text)
    listed = await api.client.get("/v1/agents", headers=headers)
    assert listed.json()["data"] == []
    used = await api.client.post(
        "/v1/responses", json={"model": "agent:private", "input": "x"}, headers=headers
    )
    assert used.status_code == 400 and used.json()["error"]["code"] == "model_not_found"
    assert (await api.ok("GET", "/v1/agents/private"))["instructions"] == "secret"


def test_python_api_and_stored_definitions_of_version_1_and_2(tmp_path: Path) -> None:
    with SyncRuntime.open(data_dir=tmp_path, models=[ScriptedModel(["hi"], name="small")], env={}) as rt:
        caller = rt.local_caller()
        agent = rt.create_agent(caller, AgentDefinition(name="helper", instructions="Be kind."))
        assert agent["version"] == 1 and agent["model"] == "small"
        assert rt.create_response(caller, {"model": "agent:helper", "input": "x"})["agent"]["version"] == 1
        assert rt.update_agent(caller, "helper", {"concurrency": "interrupt"})["concurrency"] == "interrupt"
    # A definition as version 1 of the schema wrote it: it must keep loading.
    stored = {
        "schema_version": 1,
        "instructions": "Be kind.",
        "model": "small",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        "metadata": {"team": "ops"},
        "limits": {"max_steps": 3},
        "approval": {"tools_requiring_approval": ["lookup"]},
        "concurrency": "reject",
    }
    loaded = AgentDefinition.from_stored("helper", stored)
    assert loaded.limits.max_steps == 3 and loaded.tools[0].name == "lookup"
    # Read as the current version: version 2 added the context policy (defaults here).
    assert loaded.to_stored() == {
        **stored,
        "schema_version": 2,
        "approval": {**stored["approval"], "tools_denied": [], "rules": [], "approvers": []},
        "context": {"sections": {}, "compaction": False, "keep_recent": 0.5},
    }
    assert loaded.context.compaction is False and loaded.compaction_model is None
    with pytest.raises(ValueError):
        AgentDefinition.from_stored("helper", {**stored, "schema_version": 99})


# -- end to end: the official client against `sre serve` --------------------------------------------


@pytest.fixture
def harness(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, upstream: ChatUpstream
) -> Iterator[Harness]:
    pg = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    h = Harness(tmp_path, backend, pg, upstream)
    yield h
    if h.server is not None:
        h.server.stop()


def test_openai_client_talks_to_an_agent(harness: Harness) -> None:
    client = harness.start()
    headers = {"Authorization": f"Bearer {harness.key}"}
    base = str(client.base_url).rstrip("/")
    created = httpx.post(
        f"{base}/agents",
        headers=headers,
        json={"name": "concierge", "instructions": "You are a concierge.", "tools": [LOOKUP]},
        timeout=30,
    )
    assert created.status_code == 200, created.text
    conv = client.conversations.create()
    first = client.responses.create(model="agent:concierge", input="Hello", conversation=conv.id)
    assert first.model == "agent:concierge" and first.output_text == "echo: Hello"
    sent = harness.upstream.requests[-1]
    assert sent["model"] == "fake-upstream-model"
    assert sent["messages"][0] == {"role": "system", "content": "You are a concierge."}
    assert [t["function"]["name"] for t in sent["tools"]] == ["lookup"]
    updated = httpx.post(
        f"{base}/agents/concierge", headers=headers, json={"instructions": "You are a butler."}, timeout=30
    )
    assert updated.json()["version"] == 2
    client = harness.restart()
    client.responses.create(model="agent:concierge", input="Again", conversation=conv.id)
    assert harness.upstream.requests[-1]["messages"][0] == {"role": "system", "content": "You are a butler."}
    client.responses.create(model="agent:concierge@1", input="Once more", conversation=conv.id)
    messages = harness.upstream.requests[-1]["messages"]
    assert messages[0] == {"role": "system", "content": "You are a concierge."}
    assert [m["content"] for m in messages[1:]] == [
        "Hello",
        "echo: Hello",
        "Again",
        "echo: Again",
        "Once more",
    ]
    stored = client.responses.retrieve(first.id)
    assert stored.model == "agent:concierge"
    assert (stored.model_extra or {}).get("agent") == {"name": "concierge", "version": 1}
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="agent:nobody", input="x")
    assert err.value.body["param"] == "model"  # type: ignore[index]
