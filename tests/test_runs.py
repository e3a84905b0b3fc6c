"""Durable agent runs in-process over HTTP (httpx over ASGI), on both stores: the tool loop, parallel
tool calls, client-side function tools, approvals, limits, cancel and the concurrency policies.

The model is a `FunctionModel` that decides from the request (a test double for the model only);
the tools are real Python tools in a registry of the test's own. Crashes with real processes are
in `test_run_crash.py`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, Field

from sre import Runtime, ToolError, ToolRegistry
from sre.api import create_app
from sre.models import ModelRequest
from sre.testing import FunctionModel, ScriptedToolCall
from sre.types.context import ContextManifest
from sre.types.items import FunctionCallOutput, Message

Decide = Callable[[ModelRequest], Any]


class Pay(BaseModel):
    account: str = Field(min_length=1)
    amount: int = Field(ge=1)


class World:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, tenant: str) -> None:
        self.runtime, self.client, self.tenant = runtime, client, tenant
        self.decide: Decide = lambda request: "done"
        self.requests: list[ModelRequest] = []
        self.paid: list[tuple[str, int]] = []
        self.clients: dict[str, httpx.AsyncClient] = {}

    async def call(
        self, method: str, path: str, body: object = None, *, who: str = "alice", **params: Any
    ) -> httpx.Response:
        client = self.client if who == "alice" else self.clients[who]
        return await client.request(method, path, json=body, params=params or None)

    async def ok(self, method: str, path: str, body: object = None, **kw: Any) -> dict[str, Any]:
        response = await self.call(method, path, body, **kw)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def fails(
        self, status: int, method: str, path: str, body: object = None, **kw: Any
    ) -> dict[str, Any]:
        response = await self.call(method, path, body, **kw)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return error  # type: ignore[no-any-return]

    async def agent(self, name: str, **definition: Any) -> None:
        await self.ok("POST", "/v1/agents", {"name": name, **definition})

    async def respond(self, agent: str, input: Any = "go", **extra: Any) -> dict[str, Any]:
        return await self.ok("POST", "/v1/responses", {"model": f"agent:{agent}", "input": input, **extra})


def outputs(response: dict[str, Any]) -> list[tuple[str, Any]]:
    """(type, name or output or text) for each output item."""
    out: list[tuple[str, Any]] = []
    for item in response["output"]:
        if item["type"] == "function_call":
            out.append(("call", item["name"]))
        elif item["type"] == "function_call_output":
            out.append(("output", item["output"]))
        elif item["type"] == "message":
            out.append(("message", item["content"][0]["text"]))
        else:
            out.append((item["type"], item.get("name")))
    return out


def last_output(request: ModelRequest) -> str | None:
    last = request.items[-1]
    return last.output_text() if isinstance(last, FunctionCallOutput) else None


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[World]:
    registry = ToolRegistry()
    holder: dict[str, World] = {}

    @registry.tool(risk="high", idempotent=False)
    def pay(args: Pay) -> str:
        """Pay an account."""
        holder["w"].paid.append((args.account, args.amount))
        return f"paid {args.amount} to {args.account}"

    @registry.tool
    def weather(city: str) -> str:
        """The weather of a city."""
        return json.dumps({"city": city, "sky": "clear"})

    barrier: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}

    @registry.tool(timeout=5)
    async def meet(me: str, other: str) -> str:
        """Finishes only when the other call has started: proof that calls run concurrently."""
        barrier[me].set()
        await asyncio.wait_for(barrier[other].wait(), 3)
        return f"{me} met {other}"

    @registry.tool(timeout=0.3)
    async def slow(seconds: float) -> str:
        """Sleeps."""
        await asyncio.sleep(seconds)
        return "woke"

    @registry.tool
    def broken() -> str:
        """Fails."""
        raise ToolError("the printer is on fire")

    def model_reply(request: ModelRequest) -> Any:
        holder["w"].requests.append(request)
        return holder["w"].decide(request)

    model = FunctionModel(model_reply, name="small")
    runtime = Runtime.open(database_url=store_url, models=[model], env={}, tools=registry)
    runtime.start_workers(1)  # for background runs; foreground runs execute in the request
    tenant = f"runs-{uuid.uuid4().hex}"
    _, secret = runtime.create_key(tenant, "alice", role="developer")
    app = create_app(runtime)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sre", headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as client:
        w = World(runtime, client, tenant)
        holder["w"] = w
        for name in ("bob", "carol"):
            _, other = runtime.create_key(tenant, name)
            w.clients[name] = httpx.AsyncClient(
                transport=transport, base_url="http://sre", headers={"Authorization": f"Bearer {other}"}
            )
        yield w
        for other_client in w.clients.values():
            await other_client.aclose()
    await runtime.aclose()


def tools(*names: str) -> list[dict[str, str]]:
    return [{"type": "server", "name": n} for n in names]


# -- the loop ---------------------------------------------------------------------------------------


async def test_tool_loop_commits_every_step_and_joins_the_conversation(world: World) -> None:
    def decide(request: ModelRequest) -> Any:
        done = last_output(request)
        if done is None:
            return [
                ScriptedToolCall("weather", {"city": "Oslo"}),
                ScriptedToolCall("weather", {"city": "Rome"}),
            ]
        return f"both known: {done}"

    world.decide = decide
    await world.agent("forecaster", tools=tools("weather"))
    conv = await world.ok("POST", "/v1/conversations")
    response = await world.respond("forecaster", "weather?", conversation=conv["id"])
    assert response["status"] == "completed" and response["model"] == "agent:forecaster"
    assert outputs(response) == [
        ("call", "weather"),
        ("call", "weather"),
        ("output", '{"city": "Oslo", "sky": "clear"}'),
        ("output", '{"city": "Rome", "sky": "clear"}'),
        ("message", 'both known: {"city": "Rome", "sky": "clear"}'),
    ]
    # The second model call saw the calls and their outputs; usage adds up both calls.
    assert len(world.requests) == 2
    assert [type(i).__name__ for i in world.requests[1].items][-4:] == [
        "FunctionCall",
        "FunctionCall",
        "FunctionCallOutput",
        "FunctionCallOutput",
    ]
    assert response["usage"]["total_tokens"] > 0
    assert await world.ok("GET", f"/v1/responses/{response['id']}") == response
    items = await world.ok("GET", f"/v1/conversations/{conv['id']}/items", order="asc")
    assert [i["type"] for i in items["data"]] == [
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
        "message",
    ]
    # The journal is gone once the run ended: its items are in the conversation.
    caller = await world_caller(world)
    assert world.runtime.store.runs.steps(caller.tenant_id, response["id"]) == []
    records = world.runtime.store.responses.model_calls(caller.tenant_id, response["id"])
    manifests = [ContextManifest.from_stored(r.manifest) for r in records]
    assert sorted(m.step for m in manifests if m is not None) == [0, 2]


async def world_caller(world: World) -> Any:
    secret = world.client.headers["Authorization"].removeprefix("Bearer ")
    return await world.runtime.authenticate(secret)


async def test_parallel_tool_calls_run_concurrently(world: World) -> None:
    world.decide = lambda r: (
        [
            ScriptedToolCall("meet", {"me": "a", "other": "b"}),
            ScriptedToolCall("meet", {"me": "b", "other": "a"}),
        ]
        if last_output(r) is None
        else "met"
    )
    await world.agent("pair", tools=tools("meet"))
    response = await world.respond("pair")
    assert outputs(response)[2:] == [("output", "a met b"), ("output", "b met a"), ("message", "met")]


async def test_streamed_agent_run_numbers_its_events_and_indexes_its_items(world: World) -> None:
    world.decide = lambda r: (
        ScriptedToolCall("weather", {"city": "Oslo"}) if last_output(r) is None else "sunny"
    )
    await world.agent("streamer", tools=tools("weather"))
    async with world.client.stream(
        "POST", "/v1/responses", json={"model": "agent:streamer", "input": "hi", "stream": True}
    ) as response:
        lines = [json.loads(line[6:]) async for line in response.aiter_lines() if line.startswith("data: ")]
    numbers = [e["sequence_number"] for e in lines]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert lines[0]["type"] == "response.created" and lines[-1]["type"] == "response.completed"
    done = [e for e in lines if e["type"] == "response.output_item.done"]
    assert [(e["output_index"], e["item"]["type"]) for e in done] == [
        (0, "function_call"),
        (1, "function_call_output"),
        (2, "message"),
    ]
    final = lines[-1]["response"]
    assert await world.ok("GET", f"/v1/responses/{final['id']}") == final


# -- tools that go wrong ----------------------------------------------------------------------------


async def test_bad_tool_calls_become_recorded_outputs_and_the_run_goes_on(world: World) -> None:
    world.decide = lambda r: (
        [
            ScriptedToolCall("nonexistent", {}),
            ScriptedToolCall("pay", {"account": "x", "amount": -5}),
            ScriptedToolCall("pay", "not json"),
            ScriptedToolCall("slow", {"seconds": 2}),
            ScriptedToolCall("broken", {}),
        ]
        if last_output(r) is None
        else "recovered"
    )
    await world.agent("clumsy", tools=tools("pay", "slow", "broken"))
    response = await world.respond("clumsy")
    assert response["status"] == "completed"
    errors = [json.loads(o)["error"]["code"] for kind, o in outputs(response) if kind == "output"]
    assert errors == ["unknown_tool", "invalid_arguments", "invalid_arguments", "timeout", "tool_failed"]
    assert "amount" in json.loads(outputs(response)[6][1])["error"]["message"]
    assert world.paid == []
    assert outputs(response)[-1] == ("message", "recovered")


async def test_agents_naming_unknown_tools_are_refused(world: World) -> None:
    error = await world.fails(400, "POST", "/v1/agents", {"name": "x", "tools": tools("weather", "nope")})
    assert error["param"] == "tools[1].name" and error["code"] == "unknown_tool"
    error = await world.fails(
        400, "POST", "/v1/agents", {"name": "x", "tools": [{"type": "mcp", "server_label": "files"}]}
    )
    assert error["param"] == "tools[0].server_label"
    await world.agent("ok", tools=tools("weather"))
    error = await world.fails(400, "POST", "/v1/agents/ok", {"tools": tools("ghost")})
    assert error["code"] == "unknown_tool"
    assert (await world.ok("GET", "/v1/agents/ok"))["version"] == 1  # nothing written
    error = await world.fails(
        400,
        "POST",
        "/v1/agents",
        {"name": "y", "tools": [*tools("weather"), {"type": "server", "name": "weather"}]},
    )
    assert error["param"] == "tools[1].name"
    # A request's own function tool may not shadow the agent's server-side tool.
    error = await world.fails(
        400,
        "POST",
        "/v1/responses",
        {"model": "agent:ok", "input": "x", "tools": [{"type": "function", "name": "weather"}]},
    )
    assert error["param"] == "tools[0].name"
    error = await world.fails(
        400, "POST", "/v1/responses", {"model": "agent:ok", "input": "x", "store": False}
    )
    assert error["param"] == "store"


# -- limits -----------------------------------------------------------------------------------------


async def test_limits_end_the_run_incomplete(world: World) -> None:
    world.decide = lambda r: ScriptedToolCall("weather", {"city": "again"})  # never stops on its own
    await world.agent("looper", tools=tools("weather"), limits={"max_steps": 3})
    response = await world.respond("looper")
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_steps"}
    assert [k for k, _ in outputs(response)].count("call") == 3 and len(world.requests) == 3

    world.requests.clear()
    await world.agent("capped", tools=tools("weather"), limits={"max_tool_calls": 2})
    response = await world.respond("capped")
    assert response["incomplete_details"] == {"reason": "max_tool_calls"}
    results = [o for k, o in outputs(response) if k == "output"]
    assert len(results) == 3 and json.loads(results[2])["error"]["code"] == "not_run"  # the third never ran

    world.decide = lambda r: ScriptedToolCall("slow", {"seconds": 0.2})
    await world.agent("late", tools=tools("slow"), limits={"deadline_seconds": 1})
    response = await world.respond("late")
    assert response["incomplete_details"] == {"reason": "deadline"}


# -- client-side function tools -----------------------------------------------------------------------


async def test_client_function_tools_pause_the_run_until_their_outputs_arrive(world: World) -> None:
    def decide(request: ModelRequest) -> Any:
        out = last_output(request)
        if out is None:
            return [ScriptedToolCall("weather", {"city": "Oslo"}), ScriptedToolCall("ask_user", {"q": "why"})]
        return f"user said {out}"

    world.decide = decide
    ask = {"type": "function", "name": "ask_user", "parameters": {"type": "object"}}
    await world.agent("asker", tools=[*tools("weather"), ask])
    paused = await world.respond("asker")
    assert paused["status"] == "requires_action"
    call_id = next(i["call_id"] for i in paused["output"] if i.get("name") == "ask_user")
    assert paused["required_action"]["call_ids"] == [call_id]
    assert outputs(paused) == [
        ("call", "weather"),
        ("call", "ask_user"),
        ("output", '{"city": "Oslo", "sky": "clear"}'),
    ]
    assert (await world.ok("GET", f"/v1/responses/{paused['id']}"))["status"] == "requires_action"

    # Wrong answers are refused and change nothing.
    bad = {"model": "agent:asker", "previous_response_id": paused["id"]}
    error = await world.fails(
        400,
        "POST",
        "/v1/responses",
        {**bad, "input": [{"type": "function_call_output", "call_id": "call_x", "output": "?"}]},
    )
    assert error["param"] == "input[0].call_id"
    error = await world.fails(400, "POST", "/v1/responses", {**bad, "input": "hello"})
    assert error["param"] == "input"
    error = await world.fails(
        400,
        "POST",
        "/v1/responses",
        {**bad, "input": [{"type": "function_call_output", "call_id": call_id, "output": 5}]},
    )
    assert error["param"] == "input[0].output"
    assert (await world.ok("GET", f"/v1/responses/{paused['id']}"))["status"] == "requires_action"

    done = await world.ok(
        "POST",
        "/v1/responses",
        {**bad, "input": [{"type": "function_call_output", "call_id": call_id, "output": "because"}]},
    )
    assert done["id"] == paused["id"] and done["status"] == "completed"
    assert outputs(done)[-2:] == [("output", "because"), ("message", "user said because")]
    # Once finished, the same answer is no resume but a new turn continuing the chain (as OpenAI's).
    again = await world.ok(
        "POST",
        "/v1/responses",
        {**bad, "input": [{"type": "function_call_output", "call_id": call_id, "output": "x"}]},
    )
    assert again["id"] != paused["id"] and again["previous_response_id"] == paused["id"]


# -- approvals --------------------------------------------------------------------------------------


def pay_then_answer(request: ModelRequest) -> Any:
    out = last_output(request)
    if out is None:
        text = request.items[-1].text() if isinstance(request.items[-1], Message) else "0"
        return ScriptedToolCall("pay", {"account": "acme", "amount": int(text)})
    return f"result: {out}"


async def test_approval_by_rule_pauses_and_resumes_after_approval(world: World) -> None:
    world.decide = pay_then_answer
    rule = {"tool": "pay", "argument": "amount", "op": "gt", "value": 100}
    await world.agent("payer", tools=tools("pay"), approval={"rules": [rule]})

    small = await world.respond("payer", "5")  # under the rule's threshold: no approval
    assert small["status"] == "completed" and world.paid == [("acme", 5)]

    big = await world.respond("payer", "500")
    assert big["status"] == "requires_action" and world.paid == [("acme", 5)]
    request_item = big["output"][-1]
    assert request_item["type"] == "mcp_approval_request" and request_item["name"] == "pay"
    assert json.loads(request_item["arguments"]) == {"account": "acme", "amount": 500}
    pending = await world.ok("GET", "/v1/approvals", status="pending")
    assert (
        [a["id"] for a in pending["data"]] == [request_item["id"]] == big["required_action"]["approval_ids"]
    )
    approval = pending["data"][0]
    assert approval["kind"] == "approval" and approval["response_id"] == big["id"]

    # Only the principal the run acts for may decide (no approvers named); to bob, another member of
    # the tenant, alice's approval does not exist.
    error = await world.fails(404, "POST", f"/v1/approvals/{approval['id']}/approve", who="bob")
    assert error["code"] == "not_found"
    decided = await world.ok("POST", f"/v1/approvals/{approval['id']}/approve", {"reason": "known vendor"})
    assert decided["status"] == "approved" and decided["decided_by"] == "alice"
    error = await world.fails(409, "POST", f"/v1/approvals/{approval['id']}/deny")
    assert error["code"] == "approval_already_decided"
    final = await wait_status(world, big["id"], "completed")
    assert world.paid == [("acme", 5), ("acme", 500)]
    assert outputs(final)[-1] == ("message", "result: paid 500 to acme")
    assert (await world.ok("GET", f"/v1/approvals/{approval['id']}"))["status"] == "approved"
    await world.fails(404, "GET", "/v1/approvals/apr_missing")
    bad = await world.client.get("/v1/approvals", params={"status": "maybe"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


async def wait_status(world: World, response_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await world.ok("GET", f"/v1/responses/{response_id}")
        if found["status"] == status or asyncio.get_running_loop().time() > deadline:
            assert found["status"] == status, found
            return found
        await asyncio.sleep(0.05)


async def test_denial_reaches_the_model_and_named_approvers_decide(world: World) -> None:
    world.decide = pay_then_answer
    await world.agent(
        "guarded", tools=tools("pay"), approval={"tools_requiring_approval": ["pay"], "approvers": ["carol"]}
    )
    paused = await world.respond("guarded", "7")
    approval_id = paused["required_action"]["approval_ids"][0]
    error = await world.fails(403, "POST", f"/v1/approvals/{approval_id}/deny")  # alice is no approver here
    assert error["code"] == "not_an_approver"
    # Responses-style: an approval response item, from an approver, resumes the same response.
    body = {
        "model": "agent:guarded",
        "previous_response_id": paused["id"],
        "input": [
            {
                "type": "mcp_approval_response",
                "approval_request_id": approval_id,
                "approve": False,
                "reason": "no",
            }
        ],
    }
    await world.fails(403, "POST", "/v1/responses", body)
    done = await world.ok("POST", "/v1/responses", body, who="carol")
    assert done["id"] == paused["id"] and done["status"] == "completed"
    assert world.paid == []
    denial = json.loads(outputs(done)[1][1])
    assert denial["error"]["code"] == "denied" and "carol" in denial["error"]["message"]
    # The run is no longer paused: a second answer is a plain new turn, and its input is refused.
    error = await world.fails(
        400,
        "POST",
        "/v1/responses",
        {
            **body,
            "input": [{"type": "mcp_approval_response", "approval_request_id": "apr_x", "approve": True}],
        },
    )
    assert error["param"] == "input[0].type"


async def test_cancel_a_paused_run_and_what_cannot_be_cancelled(world: World) -> None:
    world.decide = pay_then_answer
    await world.agent("careful", tools=tools("pay"), approval={"tools_requiring_approval": ["pay"]})
    paused = await world.respond("careful", "3")
    approval_id = paused["required_action"]["approval_ids"][0]
    cancelled = await world.ok("POST", f"/v1/responses/{paused['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    error = await world.fails(409, "POST", f"/v1/approvals/{approval_id}/approve")
    assert error["code"] == "approval_already_decided"
    assert (await world.ok("GET", f"/v1/approvals/{approval_id}"))["status"] == "cancelled"
    error = await world.fails(409, "POST", f"/v1/responses/{paused['id']}/cancel")
    assert error["code"] == "response_not_cancellable"
    world.decide = lambda r: "plain"
    await world.agent("plain")
    done = await world.respond("plain")
    error = await world.fails(409, "POST", f"/v1/responses/{done['id']}/cancel")
    assert error["code"] == "response_not_cancellable"
    assert world.paid == []


# -- one run at a time per conversation ---------------------------------------------------------------


async def test_concurrency_policies_on_one_conversation(world: World) -> None:
    world.decide = pay_then_answer
    approval = {"tools_requiring_approval": ["pay"]}
    conv = await world.ok("POST", "/v1/conversations")
    await world.agent("strict", tools=tools("pay"), approval=approval, concurrency="reject")
    first = await world.respond("strict", "1", conversation=conv["id"])
    assert first["status"] == "requires_action"  # paused counts as active
    error = await world.fails(
        409, "POST", "/v1/responses", {"model": "agent:strict", "input": "2", "conversation": conv["id"]}
    )
    assert error["code"] == "conversation_busy" and error["param"] == "conversation"

    # interrupt: the paused run is cancelled and the new one runs.
    world.decide = lambda r: "fresh answer"
    await world.agent("eager", concurrency="interrupt")
    second = await world.respond("eager", "3", conversation=conv["id"])
    assert second["status"] == "completed"
    assert (await world.ok("GET", f"/v1/responses/{first['id']}"))["status"] == "cancelled"

    # enqueue: a background run waits behind the paused one, then runs after it, in order.
    world.decide = pay_then_answer
    await world.agent("patient", tools=tools("pay"), approval=approval, concurrency="enqueue")
    third = await world.respond("patient", "4", conversation=conv["id"])
    assert third["status"] == "requires_action"

    def decide(request: ModelRequest) -> Any:
        last = request.items[-1]
        if isinstance(last, Message) and last.text() == "queued":
            return "queued one"
        return pay_then_answer(request)

    world.decide = decide
    fourth = await world.ok(
        "POST",
        "/v1/responses",
        {"model": "agent:patient", "input": "queued", "conversation": conv["id"], "background": True},
    )
    await asyncio.sleep(0.3)
    assert (await world.ok("GET", f"/v1/responses/{fourth['id']}"))["status"] == "queued"
    await world.ok("POST", f"/v1/approvals/{third['required_action']['approval_ids'][0]}/approve")
    await wait_status(world, third["id"], "completed")
    await wait_status(world, fourth["id"], "completed")
    items = await world.ok("GET", f"/v1/conversations/{conv['id']}/items", order="asc", limit=100)
    texts = [i["content"][0]["text"] if i["type"] == "message" else i["type"] for i in items["data"]]
    assert texts == [
        "3",
        "fresh answer",
        "4",
        "function_call",
        "function_call_output",
        "result: paid 4 to acme",
        "queued",
        "queued one",
    ]


async def test_a_plain_turn_is_refused_while_a_run_holds_the_conversation(world: World) -> None:
    world.decide = pay_then_answer
    await world.agent("holder", tools=tools("pay"), approval={"tools_requiring_approval": ["pay"]})
    conv = await world.ok("POST", "/v1/conversations")
    paused = await world.respond("holder", "2", conversation=conv["id"])
    before = await world.ok("GET", f"/v1/conversations/{conv['id']}/items")
    for stream in (False, True):
        error = await world.fails(
            409, "POST", "/v1/responses", {"input": "meanwhile", "conversation": conv["id"], "stream": stream}
        )
        assert error["code"] == "conversation_busy" and paused["id"] in error["message"]
    assert await world.ok("GET", f"/v1/conversations/{conv['id']}/items") == before
    counted = await world.ok("POST", "/v1/responses/input_tokens", {"input": "x", "conversation": conv["id"]})
    assert counted["input_tokens"] > 0  # counting tokens is no turn
    await world.ok("POST", f"/v1/responses/{paused['id']}/cancel")
    world.decide = lambda r: "free again"
    done = await world.ok("POST", "/v1/responses", {"input": "now", "conversation": conv["id"]})
    assert done["status"] == "completed"


async def test_a_run_stays_within_the_context_window(tmp_path: Any) -> None:
    registry = ToolRegistry()

    @registry.tool
    def dump() -> str:
        """A big output (about 300 tokens)."""
        return "x" * 1200

    seen: list[int] = []

    def decide(request: ModelRequest) -> Any:
        seen.append(len(request.items))
        return ScriptedToolCall("dump", {})

    model = FunctionModel(decide, name="tiny", context_window=1200)  # 300 reserved for the output
    runtime = Runtime.open(data_dir=tmp_path, models=[model], env={}, tools=registry)
    try:
        caller = runtime.local_caller()
        await runtime.create_agent(caller, {"name": "hoarder", "tools": tools("dump")})
        old = [{"role": "user", "content": "y" * 800} for _ in range(3)]  # about 200 tokens each
        conv = await runtime.create_conversation(caller, {"items": old})
        body = {"model": "agent:hoarder", "input": "go", "conversation": conv["id"], "truncation": "auto"}
        response = await runtime.create_response(caller, body)
        # The old items gave way to the run's own as it grew, then the run's items alone were too many.
        assert response["status"] == "incomplete"
        assert response["incomplete_details"] == {"reason": "context_length_exceeded"}
        assert seen[0] == 4 and seen[-1] < seen[0] + 2 * (len(seen) - 1)
        assert [i["type"] for i in response["output"]].count("function_call_output") == len(seen)
    finally:
        await runtime.aclose()


async def test_a_run_ended_early_leaves_every_call_with_an_output(world: World) -> None:
    world.decide = lambda r: [
        ScriptedToolCall("weather", {"city": "Oslo"}),
        ScriptedToolCall("pay", {"account": "a", "amount": 9}),
    ]
    await world.agent("mixed", tools=tools("weather", "pay"), approval={"tools_requiring_approval": ["pay"]})
    conv = await world.ok("POST", "/v1/conversations")
    paused = await world.respond("mixed", conversation=conv["id"])
    assert paused["status"] == "requires_action"
    cancelled = await world.ok("POST", f"/v1/responses/{paused['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    # The weather call ran (a side effect may have happened), so the run's items are kept; the call
    # that never ran is closed with an output saying so.
    items = (await world.ok("GET", f"/v1/conversations/{conv['id']}/items", order="asc"))["data"]
    assert [i["type"] for i in items] == [
        "message", "function_call", "function_call", "function_call_output", "function_call_output",
    ]  # fmt: skip
    closing = json.loads(items[4]["output"])["error"]
    assert closing["code"] == "not_run" and "cancelled" in closing["message"]
    assert world.paid == []
    # The conversation goes on: the next turn's model sees no call without its output.
    world.decide = lambda r: "next"
    await world.agent("after")
    assert (await world.respond("after", conversation=conv["id"]))["status"] == "completed"

    # Nothing ran: a cancelled run leaves the conversation as it was.
    world.decide = lambda r: ScriptedToolCall("pay", {"account": "b", "amount": 1})
    conv2 = await world.ok("POST", "/v1/conversations")
    paused = await world.respond("mixed", conversation=conv2["id"])
    await world.ok("POST", f"/v1/responses/{paused['id']}/cancel")
    assert (await world.ok("GET", f"/v1/conversations/{conv2['id']}/items"))["data"] == []
