"""Malformed and hostile requests against every route of the HTTP API, on both stores.

Each case is one request. It must be refused with the right status and exactly OpenAI's error
shape (`{"error": {"message", "type", "param", "code"}}`, `param` naming the offending field where
there is one), it must not reach the model, and it must leave every table of the store exactly as
it was. Real ids of tenant A are tried with tenant B's key: always 404, never 403.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sre.api import create_app
from sre.runtime import Runtime
from sre.store.schema import ALL_TABLES
from sre.testing import ScriptedModel

MAX_BODY = 64 * 1024
UNKNOWN = {
    "resp": "resp_" + "0" * 32,
    "conv": "conv_" + "0" * 32,
    "msg": "msg_" + "0" * 32,
}
_UNSET: Any = object()
LOOKUP = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}


# -- the world every case runs against ------------------------------------------------------------


@dataclass
class World:
    runtime: Runtime
    model: ScriptedModel
    client: httpx.AsyncClient
    secrets: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str) -> dict[str, str]:
        if who == "none":
            return {}
        if who == "empty":
            return {"Authorization": "Bearer "}
        if who == "basic":
            return {"Authorization": f"Basic {self.secrets['a']}"}
        if who == "invalid":
            return {"Authorization": "Bearer sre-" + "x" * 43}
        return {"Authorization": f"Bearer {self.secrets[who]}"}


async def _ok(client: httpx.AsyncClient, method: str, path: str, secret: str, body: Any = None) -> Any:
    response = await client.request(method, path, headers={"Authorization": f"Bearer {secret}"}, json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[World]:
    model = ScriptedModel(["ok"])
    runtime = Runtime.open(database_url=store_url, models=[model], env={})
    runtime.settings.max_body_bytes = MAX_BODY
    tag = uuid.uuid4().hex
    _, secret_a = runtime.create_key(f"tenant-a-{tag}", "alice", role="developer")
    _, secret_b = runtime.create_key(f"tenant-b-{tag}", "bob", role="developer")
    revoked, secret_revoked = runtime.create_key(f"tenant-a-{tag}", "alice", "old")
    runtime.store.keys.revoke_key(revoked.id)
    app = create_app(runtime)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sre.test")
    w = World(runtime, model, client, {"a": secret_a, "b": secret_b, "revoked": secret_revoked})
    a, b = secret_a, secret_b

    first = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    conv = await _ok(
        client, "POST", "/v1/conversations", a, {"metadata": {"topic": "weather"}, "items": first}
    )
    w.ids["conv_a"] = conv["id"]
    listed = await _ok(client, "GET", f"/v1/conversations/{conv['id']}/items?order=asc", a)
    w.ids["item_a"] = listed["data"][0]["id"]
    w.ids["item_a2"] = listed["data"][1]["id"]
    turn = await _ok(client, "POST", "/v1/responses", a, {"input": "And now?", "conversation": conv["id"]})
    w.ids["resp_conv_a"] = turn["id"]
    chained = await _ok(client, "POST", "/v1/responses", a, {"input": "Tell me a story"})
    w.ids["resp_a"] = chained["id"]
    inputs = await _ok(client, "GET", f"/v1/responses/{chained['id']}/input_items", a)
    w.ids["input_item_a"] = inputs["data"][0]["id"]
    w.ids["hidden_a"] = runtime.store.responses.get(runtime_tenant(runtime, a), chained["id"]).conversation_id
    other = await _ok(client, "POST", "/v1/conversations", a, {"items": [{"role": "user", "content": "x"}]})
    w.ids["conv_a2"] = other["id"]
    gone = await _ok(client, "POST", "/v1/conversations", a, {"items": [{"role": "user", "content": "bye"}]})
    await _ok(client, "DELETE", f"/v1/conversations/{gone['id']}", a)
    w.ids["conv_deleted"] = gone["id"]
    conv_b = await _ok(client, "POST", "/v1/conversations", b, {"items": [{"role": "user", "content": "B"}]})
    w.ids["conv_b"] = conv_b["id"]
    await _ok(
        client, "POST", "/v1/agents", a, {"name": "helper", "instructions": "Be brief.", "tools": [LOOKUP]}
    )
    await _ok(client, "POST", "/v1/agents/helper", a, {"instructions": "Be briefer."})
    await _ok(client, "POST", "/v1/agents", a, {"name": "gone"})
    await _ok(client, "DELETE", "/v1/agents/gone", a)
    w.ids.update(agent_a="helper", agent_deleted="gone")
    w.ids.update({f"unknown_{k}": v for k, v in UNKNOWN.items()})
    w.ids["unknown_apr"] = "apr_" + "0" * 32
    try:
        yield w
    finally:
        await client.aclose()
        await runtime.aclose()


def runtime_tenant(runtime: Runtime, secret: str) -> str:
    caller = runtime.store.keys.authenticate(secret)
    assert caller is not None
    return caller.tenant_id


def snapshot(runtime: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with runtime.store.db.engine.connect() as conn:
        for table in ALL_TABLES:
            rows = conn.execute(sa.select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(row) for row in rows]
    return out


# -- the table -----------------------------------------------------------------------------------


Check = Callable[[World], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str
    status: int
    param: str | None = None
    code: Any = _UNSET  # checked when given
    key: str = "a"
    json: Any = _UNSET
    content: bytes | None = None
    chunks: tuple[bytes, ...] | None = None
    content_type: str | None = None
    params: dict[str, str] | None = None
    check: Check | None = None


def _msg(text: str = "hi", role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "content": text}


def _cases() -> list[Case]:
    # fmt: off
    cases: list[Case] = []
    add = cases.append

    # Every route refuses a missing, malformed, unknown or revoked key, before looking at anything.
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/v1/models", _UNSET),
        ("POST", "/v1/responses", {"input": "hi"}),
        ("GET", "/v1/responses/{resp_a}", _UNSET),
        ("DELETE", "/v1/responses/{resp_a}", _UNSET),
        ("GET", "/v1/responses/{resp_a}/input_items", _UNSET),
        ("POST", "/v1/responses/{resp_a}/cancel", _UNSET),
        ("POST", "/v1/responses/compact", {"input": "hi"}),
        ("POST", "/v1/conversations", {"items": [_msg()]}),
        ("GET", "/v1/conversations/{conv_a}", _UNSET),
        ("POST", "/v1/conversations/{conv_a}", {"metadata": {"x": "y"}}),
        ("DELETE", "/v1/conversations/{conv_a}", _UNSET),
        ("POST", "/v1/conversations/{conv_a}/fork", {}),
        ("POST", "/v1/conversations/{conv_a}/items", {"items": [_msg()]}),
        ("GET", "/v1/conversations/{conv_a}/items", _UNSET),
        ("GET", "/v1/conversations/{conv_a}/items/{item_a}", _UNSET),
        ("DELETE", "/v1/conversations/{conv_a}/items/{item_a}", _UNSET),
        ("POST", "/v1/agents", {"name": "fresh"}),
        ("GET", "/v1/agents", _UNSET),
        ("GET", "/v1/agents/{agent_a}", _UNSET),
        ("POST", "/v1/agents/{agent_a}", {"instructions": "x"}),
        ("DELETE", "/v1/agents/{agent_a}", _UNSET),
        ("GET", "/v1/agents/{agent_a}/versions", _UNSET),
        ("GET", "/v1/approvals", _UNSET),
        ("GET", "/v1/approvals/{unknown_apr}", _UNSET),
        ("POST", "/v1/approvals/{unknown_apr}/approve", _UNSET),
        ("POST", "/v1/approvals/{unknown_apr}/deny", {"reason": "no"}),
    ]
    auth = {
        "none": "missing_api_key",
        "empty": "missing_api_key",
        "basic": "missing_api_key",
        "invalid": "invalid_api_key",
        "revoked": "invalid_api_key",
    }
    for method, path, body in routes:
        for who, code in auth.items():
            add(Case(f"auth-{who}-{method}-{path}", method, path, 401, None, code, key=who, json=body))
    # ... also when the body is bad too: authentication comes first.
    add(Case("auth-before-validation", "POST", "/v1/responses", 401, None, "missing_api_key", key="none",
             json={"input": 5, "temperature": 9}))
    add(Case("auth-before-json", "POST", "/v1/responses", 401, None, "invalid_api_key", key="invalid",
             content=b"{not json"))
    add(Case("auth-before-404", "GET", "/v1/responses/{unknown_resp}", 401, None, "invalid_api_key",
             key="invalid"))

    # -- POST /v1/responses: the body as a whole --
    r = "/v1/responses"
    add(Case("resp-json-malformed", "POST", r, 400, content=b'{"input": "hi",'))
    add(Case("resp-json-garbage", "POST", r, 400, content=b"\xff\xfe\x00garbage"))
    add(Case("resp-json-array", "POST", r, 400, json=[{"input": "hi"}]))
    add(Case("resp-json-string", "POST", r, 400, json="hi"))
    add(Case("resp-json-number", "POST", r, 400, json=5))
    add(Case("resp-json-null", "POST", r, 400, json=None))
    add(Case("resp-body-empty", "POST", r, 400, content=b""))
    add(Case("resp-not-json-content-type", "POST", r, 400, content=b"input=hi",
             content_type="application/x-www-form-urlencoded"))
    add(Case("resp-unknown-field", "POST", r, 400, "foo", "unknown_parameter", json={"input": "hi", "foo": 1}))
    add(Case("resp-missing-input", "POST", r, 400, "input", "missing_required_parameter", json={}))

    # -- POST /v1/responses: every field with a wrong type or value --
    wrong: list[tuple[str, str, Any]] = [
        ("model", "model", 5),
        ("model", "model", ""),
        ("model", "model", ["scripted"]),
        ("model", "model", "m" * 201),
        ("input", "input", 5),
        ("input", "input", None),
        ("input", "input", {"role": "user", "content": "hi"}),
        ("input", "input", True),
        ("instructions", "instructions", 5),
        ("instructions", "instructions", ["be nice"]),
        ("previous_response_id", "previous_response_id", 5),
        ("previous_response_id", "previous_response_id", ""),
        ("previous_response_id", "previous_response_id", "r" * 65),
        ("conversation", "conversation", 5),
        ("conversation", "conversation", ""),
        ("conversation", "conversation", ["conv_x"]),
        ("conversation", "conversation.id", {"id": 5}),
        ("conversation", "conversation.id", {}),
        ("conversation", "conversation.name", {"id": "conv_x", "name": "x"}),
        ("store", "store", "true"),
        ("store", "store", 1),
        ("stream", "stream", "yes"),
        ("stream", "stream", 0),
        ("background", "background", "yes"),
        ("temperature", "temperature", 2.5),
        ("temperature", "temperature", -0.1),
        ("temperature", "temperature", "hot"),
        ("top_p", "top_p", 1.5),
        ("top_p", "top_p", -1),
        ("top_p", "top_p", "x"),
        ("max_output_tokens", "max_output_tokens", 0),
        ("max_output_tokens", "max_output_tokens", -5),
        ("max_output_tokens", "max_output_tokens", "100"),
        ("max_output_tokens", "max_output_tokens", 1.5),
        ("max_output_tokens", "max_output_tokens", True),
        ("tools", "tools", "lookup"),
        ("tools", "tools", {"type": "function", "name": "x"}),
        ("tools", "tools[0]", [5]),
        ("tools", "tools[0].type", [{"type": "web_search"}]),
        ("tools", "tools[0].type", [{"name": "lookup"}]),
        ("tools", "tools[0].name", [{"type": "function", "name": "bad name!"}]),
        ("tools", "tools[1].name", [{"type": "function", "name": "ok"}, {"type": "function", "name": "a/b"}]),
        ("tools", "tools[0].name", [{"type": "function", "name": ""}]),
        ("tools", "tools[0].name", [{"type": "function", "name": "n" * 65}]),
        ("tools", "tools[0].name", [{"type": "function"}]),
        ("tools", "tools[0].parameters", [{"type": "function", "name": "x", "parameters": "{}"}]),
        ("tools", "tools[0].strict", [{"type": "function", "name": "x", "strict": "yes"}]),
        ("tools", "tools[0].color", [{"type": "function", "name": "x", "color": "red"}]),
        ("tool_choice", "tool_choice", "sometimes"),
        ("tool_choice", "tool_choice", 5),
        ("tool_choice", "tool_choice", True),
        ("tool_choice", "tool_choice.name", {"type": "function"}),
        ("tool_choice", "tool_choice.type", {"type": "mcp", "name": "x"}),
        ("parallel_tool_calls", "parallel_tool_calls", "true"),
        ("parallel_tool_calls", "parallel_tool_calls", 1),
        ("truncation", "truncation", "sometimes"),
        ("truncation", "truncation", 5),
        ("metadata", "metadata", {f"k{i}": "v" for i in range(17)}),
        ("metadata", "metadata.k", {"k": 5}),
        ("metadata", "metadata.k", {"k": None}),
        ("metadata", "metadata.k", {"k": "v" * 513}),
        ("metadata", "metadata", {"k" * 65: "v"}),
        ("metadata", "metadata", {"": "v"}),
        ("metadata", "metadata", "k=v"),
        ("metadata", "metadata", ["k", "v"]),
        ("user", "user", 5),
        ("include", "include[1]", ["context_manifest", 5]),
        ("include", "include[0]", ["everything"]),
        ("include", "include", "context_manifest"),
        ("include", "include", [f"context_manifest{i}" for i in range(17)]),
        ("context_management", "context_management", "compaction"),
        ("context_management", "context_management", {"type": "compaction"}),
        ("context_management", "context_management[0]", [5]),
        ("context_management", "context_management[0].type", [{"type": "summarize"}]),
        ("context_management", "context_management[0].type", [{"compact_threshold": 100}]),
        ("context_management", "context_management[0].compact_threshold", [{"compact_threshold": 0, "type": "compaction"}]),
        ("context_management", "context_management[0].compact_threshold", [{"compact_threshold": "1k", "type": "compaction"}]),
        ("context_management", "context_management[0].when", [{"type": "compaction", "when": "always"}]),
        ("context_management", "context_management", [{"type": "compaction"}] * 9),
        ("text", "text", "plain"),
        ("stream_options", "stream_options", True),
    ]
    for name, param, value in wrong:
        body = {"input": "hi", name: value} if name != "input" else {"input": value}
        add(Case(f"resp-{name}={json.dumps(value)[:40]}", "POST", r, 400, param, json=body))

    # -- POST /v1/responses: input items --
    items: list[tuple[str, str, list[Any]]] = [
        ("not-object", "input[0]", [5]),
        ("string-item", "input[1]", [_msg(), "hello"]),
        ("no-type", "input[0].type", [{"content": "hi"}]),
        ("unknown-type", "input[1].type", [_msg(), {"type": "telepathy", "text": "x"}]),
        ("type-not-string", "input[0].type", [{"type": 5}]),
        ("bad-role", "input[0].role", [{"type": "message", "role": "wizard", "content": "hi"}]),
        ("bad-role-implicit", "input[1].role", [_msg(), {"role": "root", "content": "hi"}]),
        ("no-content", "input[0].content", [{"type": "message", "role": "user"}]),
        ("content-number", "input[0].content", [{"type": "message", "role": "user", "content": 5}]),
        ("content-part-type", "input[0].content[0].type",
         [{"type": "message", "role": "user", "content": [{"type": "input_audio", "text": "x"}]}]),
        ("content-part-text", "input[0].content[1].text",
         [{"type": "message", "role": "user",
           "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": 5}]}]),
        ("bad-status", "input[0].status", [{"type": "message", "role": "user", "content": "x", "status": "done"}]),
        ("fco-no-call-id", "input[0].call_id", [{"type": "function_call_output", "output": "42"}]),
        ("fco-empty-call-id", "input[0].call_id", [{"type": "function_call_output", "call_id": "", "output": "42"}]),
        ("fco-no-output", "input[0].output", [{"type": "function_call_output", "call_id": "call_1"}]),
        ("fco-unmatched", "input[1].call_id",
         [_msg(), {"type": "function_call_output", "call_id": "call_nobody_made", "output": "42"}]),
        ("fco-before-its-call", "input[0].call_id",
         [{"type": "function_call_output", "call_id": "call_1", "output": "42"},
          {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}]),
        ("fc-no-name", "input[0].name", [{"type": "function_call", "call_id": "c", "arguments": "{}"}]),
        ("fc-arguments-object", "input[0].arguments",
         [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}]),
        ("compaction-no-content", "input[0].encrypted_content", [{"type": "compaction"}]),
        ("compaction-empty-content", "input[0].encrypted_content", [{"type": "compaction", "encrypted_content": ""}]),
        ("compaction-content-number", "input[0].encrypted_content", [{"type": "compaction", "encrypted_content": 5}]),
        ("compaction-forged", "input[1].encrypted_content",
         [_msg(), {"type": "compaction", "encrypted_content": "gAAAAABo-not-ours"}]),
        ("compaction-forged-sre-prefix", "input[0].encrypted_content",
         [{"type": "compaction", "encrypted_content": "sre1.!!!not base64 json"}]),
    ]
    for name, param, value in items:
        add(Case(f"resp-item-{name}", "POST", r, 400, param, json={"input": value}))
    add(Case("resp-fco-unmatched-in-conversation", "POST", r, 400, "input[0].call_id",
             json={"conversation": "{conv_a}",
                   "input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}))
    add(Case("resp-fco-unmatched-after-previous", "POST", r, 400, "input[0].call_id",
             json={"previous_response_id": "{resp_a}",
                   "input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}))

    # -- POST /v1/responses: semantic refusals and references --
    add(Case("resp-unknown-model", "POST", r, 400, "model", "model_not_found", json={"input": "hi", "model": "gpt-9"}))
    # A valid background request is queued (tests/test_background.py); these are refused, writing nothing.
    add(Case("resp-background-unstored", "POST", r, 400, "store",
             json={"input": "hi", "background": True, "store": False}))
    add(Case("resp-background-stream-unknown-model", "POST", r, 400, "model", "model_not_found",
             json={"input": "hi", "background": True, "stream": True, "model": "gpt-9"}))
    add(Case("resp-conversation-and-previous", "POST", r, 400, "conversation",
             json={"input": "hi", "conversation": "{conv_a}", "previous_response_id": "{resp_a}"}))
    add(Case("resp-context-exceeded", "POST", r, 400, "input", "context_length_exceeded",
             json={"input": "word " * 10_000}))
    add(Case("resp-max-output-exceeds-window", "POST", r, 400, "input", "context_length_exceeded",
             json={"input": "hi", "max_output_tokens": 100_000}))
    refs: list[tuple[str, str, Any, str]] = [
        ("unknown-previous", "previous_response_id", "{unknown_resp}", "a"),
        ("unknown-previous-stream", "previous_response_id", "{unknown_resp}", "a"),
        ("other-tenant-previous", "previous_response_id", "{resp_a}", "b"),
        ("other-tenant-previous-stream", "previous_response_id", "{resp_a}", "b"),
        ("nul-previous", "previous_response_id", "resp_\u0000", "a"),
        ("unknown-conversation", "conversation", "{unknown_conv}", "a"),
        ("unknown-conversation-ref", "conversation", {"id": "{unknown_conv}"}, "a"),
        ("other-tenant-conversation", "conversation", "{conv_a}", "b"),
        ("other-tenant-conversation-ref", "conversation", {"id": "{conv_a}"}, "b"),
        ("other-tenant-conversation-stream", "conversation", "{conv_a}", "b"),
        ("hidden-conversation", "conversation", "{hidden_a}", "a"),
        ("deleted-conversation", "conversation", "{conv_deleted}", "a"),
        ("nul-conversation", "conversation", "conv_\u0000", "a"),
    ]
    for name, param, value, who in refs:
        body = {"input": "hi", param: value}
        if name.endswith("-stream"):
            body["stream"] = True
        add(Case(f"resp-{name}", "POST", r, 404, param, "not_found", key=who, json=body))

    # -- GET / DELETE /v1/responses/{id}, GET .../input_items --
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        tag = f"{method}-response{suffix}"
        add(Case(f"{tag}-unknown", method, "/v1/responses/{unknown_resp}" + suffix, 404, "response_id", "not_found"))
        add(Case(f"{tag}-other-tenant", method, "/v1/responses/{resp_a}" + suffix, 404, "response_id",
                 "not_found", key="b"))
        add(Case(f"{tag}-not-a-response-id", method, "/v1/responses/{conv_a}" + suffix, 404, "response_id"))
        add(Case(f"{tag}-nul", method, "/v1/responses/resp_%00" + suffix, 404, "response_id"))
        add(Case(f"{tag}-long", method, "/v1/responses/" + "r" * 300 + suffix, 404, "response_id"))
    # -- POST /v1/responses/{id}/cancel, GET /v1/responses/{id}?stream=true --
    cancel = "/v1/responses/{resp_a}/cancel"
    add(Case("cancel-unknown", "POST", "/v1/responses/{unknown_resp}/cancel", 404, "response_id", "not_found"))
    add(Case("cancel-other-tenant", "POST", cancel, 404, "response_id", "not_found", key="b"))
    add(Case("cancel-finished", "POST", cancel, 409, code="response_not_cancellable"))
    add(Case("cancel-nul", "POST", "/v1/responses/resp_%00/cancel", 404, "response_id"))
    add(Case("cancel-long", "POST", "/v1/responses/" + "r" * 300 + "/cancel", 404, "response_id"))
    add(Case("cancel-get", "GET", cancel, 405))
    ra = "/v1/responses/{resp_a}"
    add(Case("stream-not-background", "GET", ra, 400, "stream", params={"stream": "true"}))
    add(Case("stream-other-tenant", "GET", ra, 404, "response_id", "not_found", key="b",
             params={"stream": "true"}))
    add(Case("stream-unknown", "GET", "/v1/responses/{unknown_resp}", 404, "response_id",
             params={"stream": "true", "starting_after": "3"}))
    add(Case("stream-starting-after-abc", "GET", ra, 400, "starting_after",
             params={"stream": "true", "starting_after": "abc"}))
    add(Case("stream-starting-after-negative", "GET", ra, 400, "starting_after",
             params={"stream": "true", "starting_after": "-5"}))
    add(Case("stream-not-a-bool", "GET", ra, 400, "stream", params={"stream": "sometimes"}))
    for name, params, param in (
        ("include-unknown", {"include": "everything"}, "include[0]"),
        ("include-brackets-unknown", {"include[]": ["context_manifest", "everything"]}, "include[1]"),
    ):
        add(Case(f"get-response-{name}", "GET", ra, 400, param, params=params))
    add(Case("get-response-include-other-tenant", "GET", ra, 404, "response_id", "not_found", key="b",
             params={"include[]": "context_manifest"}))

    # -- POST /v1/responses/compact --
    rc = "/v1/responses/compact"
    add(Case("compact-json-malformed", "POST", rc, 400, content=b'{"input": "hi",'))
    add(Case("compact-json-array", "POST", rc, 400, json=[{"input": "hi"}]))
    add(Case("compact-no-body", "POST", rc, 400, content=b""))
    add(Case("compact-nothing", "POST", rc, 400, "input", json={}))
    add(Case("compact-empty-input", "POST", rc, 400, "input", json={"input": []}))
    add(Case("compact-unknown-field", "POST", rc, 400, "conversation", "unknown_parameter",
             json={"input": "hi", "conversation": "{conv_a}"}))
    add(Case("compact-unknown-model", "POST", rc, 400, "model", "model_not_found",
             json={"input": "hi", "model": "gpt-9"}))
    add(Case("compact-unknown-agent", "POST", rc, 400, "model", "model_not_found",
             json={"input": "hi", "model": "agent:nobody"}))
    add(Case("compact-model-number", "POST", rc, 400, "model", json={"input": "hi", "model": 5}))
    add(Case("compact-input-number", "POST", rc, 400, "input", json={"input": 5}))
    add(Case("compact-input-item", "POST", rc, 400, "input[0].type", json={"input": [{"type": "telepathy"}]}))
    add(Case("compact-forged-compaction", "POST", rc, 400, "input[0].encrypted_content",
             json={"input": [{"type": "compaction", "encrypted_content": "not ours"}]}))
    add(Case("compact-unknown-previous", "POST", rc, 404, "previous_response_id", "not_found",
             json={"previous_response_id": "{unknown_resp}"}))
    add(Case("compact-other-tenant-previous", "POST", rc, 404, "previous_response_id", "not_found", key="b",
             json={"previous_response_id": "{resp_a}"}))
    add(Case("compact-get", "GET", rc, 404, "response_id"))
    ii = "/v1/responses/{resp_a}/input_items"
    for name, params, param, status in (
        ("limit-0", {"limit": "0"}, "limit", 400),
        ("limit-101", {"limit": "101"}, "limit", 400),
        ("limit-abc", {"limit": "abc"}, "limit", 400),
        ("limit-negative", {"limit": "-1"}, "limit", 400),
        ("limit-float", {"limit": "1.5"}, "limit", 400),
        ("order-sideways", {"order": "sideways"}, "order", 400),
        ("after-unknown", {"after": UNKNOWN["msg"]}, "after", 400),
        ("after-other-response", {"after": "{item_a}"}, "after", 400),
        ("after-long", {"after": "m" * 65}, "after", 400),
        ("after-nul", {"after": "msg_\u0000"}, "after", 400),
    ):
        add(Case(f"input-items-{name}", "GET", ii, status, param, params=params))

    # -- POST /v1/conversations --
    c = "/v1/conversations"
    add(Case("conv-create-json-malformed", "POST", c, 400, content=b"{"))
    add(Case("conv-create-json-array", "POST", c, 400, json=[]))
    add(Case("conv-create-json-string", "POST", c, 400, json="conversation"))
    add(Case("conv-create-unknown-field", "POST", c, 400, "title", "unknown_parameter", json={"title": "x"}))
    add(Case("conv-create-21-items", "POST", c, 400, "items", json={"items": [_msg()] * 21}))
    add(Case("conv-create-items-string", "POST", c, 400, "items", json={"items": "hi"}))
    add(Case("conv-create-items-object", "POST", c, 400, "items", json={"items": _msg()}))
    add(Case("conv-create-item-not-object", "POST", c, 400, "items[1]", json={"items": [_msg(), 5]}))
    add(Case("conv-create-item-unknown-type", "POST", c, 400, "items[1].type",
             json={"items": [_msg(), {"type": "telepathy"}]}))
    add(Case("conv-create-item-bad-role", "POST", c, 400, "items[0].role", json={"items": [_msg(role="god")]}))
    add(Case("conv-create-item-fco-no-call-id", "POST", c, 400, "items[0].call_id",
             json={"items": [{"type": "function_call_output", "output": "x"}]}))
    add(Case("conv-create-metadata-17", "POST", c, 400, "metadata",
             json={"metadata": {f"k{i}": "v" for i in range(17)}}))
    add(Case("conv-create-metadata-number", "POST", c, 400, "metadata.n", json={"metadata": {"n": 1}}))
    add(Case("conv-create-metadata-long-key", "POST", c, 400, "metadata", json={"metadata": {"k" * 65: "v"}}))
    add(Case("conv-create-metadata-long-value", "POST", c, 400, "metadata.k", json={"metadata": {"k": "v" * 513}}))
    add(Case("conv-create-metadata-string", "POST", c, 400, "metadata", json={"metadata": "x"}))

    # -- GET / POST (update) / DELETE /v1/conversations/{id} --
    missing_conv = [
        ("unknown", "{unknown_conv}", "a"),
        ("other-tenant", "{conv_a}", "b"),
        ("hidden", "{hidden_a}", "a"),
        ("deleted", "{conv_deleted}", "a"),
        ("response-id", "{resp_a}", "a"),
        ("nul", "conv_%00", "a"),
        ("long", "c" * 300, "a"),
    ]
    for name, cid, who in missing_conv:
        base = f"/v1/conversations/{cid}"
        add(Case(f"conv-get-{name}", "GET", base, 404, "conversation_id", "not_found", key=who))
        add(Case(f"conv-update-{name}", "POST", base, 404, "conversation_id", "not_found", key=who,
                 json={"metadata": {"x": "y"}}))
        add(Case(f"conv-delete-{name}", "DELETE", base, 404, "conversation_id", "not_found", key=who,
                 check=_conv_a_intact))
        add(Case(f"conv-fork-{name}", "POST", base + "/fork", 404, "conversation_id", "not_found", key=who))
        add(Case(f"items-create-{name}", "POST", base + "/items", 404, "conversation_id", "not_found", key=who,
                 json={"items": [_msg()]}))
        add(Case(f"items-list-{name}", "GET", base + "/items", 404, "conversation_id", "not_found", key=who))
        add(Case(f"item-get-conv-{name}", "GET", base + "/items/{item_a}", 404, "conversation_id", "not_found",
                 key=who))
        add(Case(f"item-delete-conv-{name}", "DELETE", base + "/items/{item_a}", 404, "conversation_id",
                 "not_found", key=who, check=_conv_a_intact))
    ca = "/v1/conversations/{conv_a}"
    add(Case("conv-update-no-metadata", "POST", ca, 400, "metadata", "missing_required_parameter", json={}))
    add(Case("conv-update-no-body", "POST", ca, 400, content=b""))
    add(Case("conv-update-json-malformed", "POST", ca, 400, content=b'{"metadata": {'))
    add(Case("conv-update-json-array", "POST", ca, 400, json=[{"metadata": {}}]))
    add(Case("conv-update-unknown-field", "POST", ca, 400, "items", "unknown_parameter",
             json={"metadata": {}, "items": []}))
    add(Case("conv-update-metadata-string", "POST", ca, 400, "metadata", json={"metadata": "x"}))
    add(Case("conv-update-metadata-17", "POST", ca, 400, "metadata",
             json={"metadata": {f"k{i}": "v" for i in range(17)}}))
    add(Case("conv-update-metadata-bool", "POST", ca, 400, "metadata.flag", json={"metadata": {"flag": True}}))
    add(Case("conv-update-metadata-long-key", "POST", ca, 400, "metadata", json={"metadata": {"k" * 65: "v"}}))

    # -- POST /v1/conversations/{id}/fork --
    fk = ca + "/fork"
    add(Case("fork-json-malformed", "POST", fk, 400, content=b"{{"))
    add(Case("fork-json-array", "POST", fk, 400, json=["{item_a}"]))
    add(Case("fork-unknown-field", "POST", fk, 400, "at", "unknown_parameter", json={"at": "{item_a}"}))
    add(Case("fork-item-id-number", "POST", fk, 400, "item_id", json={"item_id": 5}))
    add(Case("fork-item-id-empty", "POST", fk, 400, "item_id", json={"item_id": ""}))
    add(Case("fork-item-id-long", "POST", fk, 400, "item_id", json={"item_id": "i" * 65}))
    add(Case("fork-item-unknown", "POST", fk, 404, "item_id", "not_found", json={"item_id": UNKNOWN["msg"]}))
    add(Case("fork-item-of-other-conversation", "POST", "/v1/conversations/{conv_a2}/fork", 404, "item_id",
             "not_found", json={"item_id": "{item_a}"}))
    add(Case("fork-item-other-tenant", "POST", "/v1/conversations/{conv_b}/fork", 404, "item_id",
             "not_found", key="b", json={"item_id": "{item_a}"}))

    # -- POST /v1/conversations/{id}/items --
    ci = ca + "/items"
    add(Case("items-create-empty", "POST", ci, 400, "items", json={"items": []}))
    add(Case("items-create-missing", "POST", ci, 400, "items", "missing_required_parameter", json={}))
    add(Case("items-create-no-body", "POST", ci, 400, content=b""))
    add(Case("items-create-json-malformed", "POST", ci, 400, content=b'{"items": [}'))
    add(Case("items-create-json-array", "POST", ci, 400, json=[_msg()]))
    add(Case("items-create-string", "POST", ci, 400, "items", json={"items": "hi"}))
    add(Case("items-create-21", "POST", ci, 400, "items", json={"items": [_msg()] * 21}))
    add(Case("items-create-not-object", "POST", ci, 400, "items[0]", json={"items": [5]}))
    add(Case("items-create-unknown-type", "POST", ci, 400, "items[1].type",
             json={"items": [_msg(), {"type": "reasoning", "summary": []}]}))
    add(Case("items-create-bad-role", "POST", ci, 400, "items[0].role", json={"items": [_msg(role="tool")]}))
    add(Case("items-create-no-content", "POST", ci, 400, "items[0].content", json={"items": [{"role": "user"}]}))
    add(Case("items-create-fco-no-call-id", "POST", ci, 400, "items[2].call_id",
             json={"items": [_msg(), _msg(), {"type": "function_call_output", "output": "x"}]}))
    add(Case("items-create-unknown-field", "POST", ci, 400, "conversation", "unknown_parameter",
             json={"items": [_msg()], "conversation": "x"}))

    # -- GET /v1/conversations/{id}/items --
    for name, params, param in (
        ("limit-0", {"limit": "0"}, "limit"),
        ("limit-101", {"limit": "101"}, "limit"),
        ("limit-abc", {"limit": "abc"}, "limit"),
        ("limit-empty", {"limit": ""}, "limit"),
        ("order-sideways", {"order": "sideways"}, "order"),
        ("order-upper", {"order": "ASC"}, "order"),
        ("after-unknown", {"after": UNKNOWN["msg"]}, "after"),
        ("after-other-conversation", {"after": "{item_a}"}, "after"),
        ("after-long", {"after": "m" * 65}, "after"),
        ("after-nul", {"after": "msg_\u0000"}, "after"),
    ):
        path = "/v1/conversations/{conv_a2}/items" if name == "after-other-conversation" else ci
        add(Case(f"items-list-{name}", "GET", path, 400, param, params=params))

    # -- GET / DELETE /v1/conversations/{id}/items/{item_id} --
    for method in ("GET", "DELETE"):
        tag = f"item-{method.lower()}-in-conv-a"
        add(Case(f"{tag}-unknown", method, ci + "/{unknown_msg}", 404, "item_id", "not_found"))
        add(Case(f"{tag}-of-other-conversation", method, "/v1/conversations/{conv_a2}/items/{item_a}", 404,
                 "item_id", "not_found", check=_conv_a_intact))
        add(Case(f"{tag}-of-response-chain", method, ci + "/{input_item_a}", 404, "item_id", "not_found"))
        add(Case(f"{tag}-other-tenant", method, "/v1/conversations/{conv_b}/items/{item_a}", 404, "item_id",
                 "not_found", key="b", check=_conv_a_intact))
        add(Case(f"{tag}-nul", method, ci + "/msg_%00", 404, "item_id", "not_found"))
        add(Case(f"{tag}-long", method, ci + "/" + "m" * 300, 404, "item_id", "not_found"))

    # -- POST /v1/agents --
    ag = "/v1/agents"
    add(Case("agent-create-json-malformed", "POST", ag, 400, content=b'{"name": "x",'))
    add(Case("agent-create-json-array", "POST", ag, 400, json=[{"name": "x"}]))
    add(Case("agent-create-json-string", "POST", ag, 400, json="x"))
    add(Case("agent-create-no-body", "POST", ag, 400, content=b""))
    add(Case("agent-create-missing-name", "POST", ag, 400, "name", "missing_required_parameter", json={}))
    add(Case("agent-create-unknown-field", "POST", ag, 400, "color", "unknown_parameter",
             json={"name": "x", "color": "red"}))
    add(Case("agent-create-version-field", "POST", ag, 400, "version", "unknown_parameter",
             json={"name": "x", "version": 3}))
    agent_fields: list[tuple[str, Any]] = [
        ("name", 5),
        ("name", ""),
        ("name", "bad name!"),
        ("name", "a/b"),
        ("name", "agent:x"),
        ("name", "n" * 65),
        ("name", None),
        ("instructions", 5),
        ("instructions", ["be nice"]),
        ("model", 5),
        ("model", ""),
        ("model", "m" * 201),
        ("tools", "lookup"),
        ("tools", None),
        ("tools", LOOKUP),
        ("tools[0]", [5]),
        ("tools[0].type", [{"type": "web_search"}]),
        ("tools[0].name", [{"type": "function", "name": "bad name!"}]),
        ("tools[0].parameters", [{"type": "function", "name": "x", "parameters": "{}"}]),
        ("tools[0].color", [{"type": "function", "name": "x", "color": "red"}]),
        ("tools[1].name", [LOOKUP, {**LOOKUP, "description": "again"}]),
        ("tools", [{"type": "function", "name": f"t{i}"} for i in range(129)]),
        ("metadata", {f"k{i}": "v" for i in range(17)}),
        ("metadata.k", {"k": 5}),
        ("metadata", "k=v"),
        ("limits", 5),
        ("limits", None),
        ("limits.max_steps", {"max_steps": 0}),
        ("limits.max_steps", {"max_steps": -1}),
        ("limits.max_steps", {"max_steps": "3"}),
        ("limits.max_steps", {"max_steps": 1.5}),
        ("limits.max_steps", {"max_steps": True}),
        ("limits.max_tool_calls", {"max_tool_calls": 0}),
        ("limits.max_tool_calls", {"max_tool_calls": 10**12}),
        ("limits.deadline_seconds", {"deadline_seconds": 0}),
        ("limits.deadline_seconds", {"deadline_seconds": 10**9}),
        ("limits.steps", {"steps": 3}),
        ("approval", "always"),
        ("approval.tools_requiring_approval", {"tools_requiring_approval": "lookup"}),
        ("approval.tools_requiring_approval[1]", {"tools_requiring_approval": ["lookup", "bad name"]}),
        ("approval.tools_requiring_approval[0]", {"tools_requiring_approval": [5]}),
        ("approval.when", {"when": "always"}),
        ("approval.rules", {"rules": "amount>100"}),
        ("approval.rules[0].tool", {"rules": [{"op": "exists"}]}),
        ("approval.rules[0].op", {"rules": [{"tool": "lookup", "op": "like"}]}),
        ("approval.rules[0].value", {"rules": [{"tool": "lookup", "op": "eq", "value": {"a": 1}}]}),
        ("approval.rules[0].argument", {"rules": [{"tool": "lookup", "argument": ""}]}),
        ("approval.approvers", {"approvers": "alice"}),
        ("approval.approvers[0]", {"approvers": [""]}),
        ("tools[0].name", [{"type": "server"}]),
        ("tools[0].name", [{"type": "server", "name": "no_such_tool"}]),
        ("tools[0].server_label", [{"type": "mcp", "server_label": "no_such_server"}]),
        ("tools[0].server_label", [{"type": "mcp"}]),
        ("tools[0].allowed_tools", [{"type": "mcp", "server_label": "x", "allowed_tools": "add"}]),
        ("tools[0].url", [{"type": "mcp", "server_label": "x", "url": "http://evil"}]),
        ("concurrency", "sometimes"),
        ("concurrency", 5),
        ("concurrency", None),
        ("context", "lots"),
        ("context", None),
        ("context.compaction", {"compaction": "yes"}),
        ("context.keep_recent", {"keep_recent": 1}),
        ("context.keep_recent", {"keep_recent": -0.1}),
        ("context.compact_threshold", {"compact_threshold": 0}),
        ("context.window", {"window": 4096}),
        ("context.sections", {"sections": ["history"]}),
        ("context.sections.history.share", {"sections": {"history": {"share": 1.5}}}),
        ("context.sections.history.share", {"sections": {"history": {"share": "half"}}}),
        ("context.sections.history.min_tokens", {"sections": {"history": {"min_tokens": -1}}}),
        ("context.sections.history.max_tokens", {"sections": {"history": {"max_tokens": 0}}}),
        ("context.sections.history.weight", {"sections": {"history": {"weight": 2}}}),
        ("context.sections.input", {"sections": {"input": {"share": 0.5}}}),
        ("context.sections.instructions", {"sections": {"instructions": {"share": 0.5}}}),
        ("context.sections.Bad Name", {"sections": {"Bad Name": {"share": 0.5}}}),
        ("compaction_model", 5),
        ("compaction_model", ""),
    ]
    for param, value in agent_fields:
        field_name = param.split(".")[0].split("[")[0]
        add(Case(f"agent-create-{param}={json.dumps(value)[:40]}", "POST", ag, 400, param,
                 json={"name": "fresh", field_name: value}))
    add(Case("agent-create-unknown-model", "POST", ag, 400, "model", "model_not_found",
             json={"name": "fresh", "model": "gpt-9"}))
    add(Case("agent-create-agent-as-model", "POST", ag, 400, "model", "model_not_found",
             json={"name": "fresh", "model": "agent:helper"}))
    add(Case("agent-create-unknown-compaction-model", "POST", ag, 400, "compaction_model", "model_not_found",
             json={"name": "fresh", "compaction_model": "gpt-9"}))
    add(Case("agent-create-exists", "POST", ag, 409, "name", "agent_exists", json={"name": "{agent_a}"},
             check=_agent_a_intact))
    add(Case("agent-create-exists-other-tenant-ok-but-bad-model", "POST", ag, 400, "model", "model_not_found",
             key="b", json={"name": "{agent_a}", "model": "gpt-9"}))

    # -- GET /v1/agents --
    for name, params, param in (
        ("limit-0", {"limit": "0"}, "limit"),
        ("limit-101", {"limit": "101"}, "limit"),
        ("limit-abc", {"limit": "abc"}, "limit"),
        ("order-sideways", {"order": "sideways"}, "order"),
        ("after-bad-name", {"after": "bad name"}, "after"),
        ("after-long", {"after": "a" * 65}, "after"),
        ("after-nul", {"after": "a\u0000"}, "after"),
    ):
        add(Case(f"agents-list-{name}", "GET", ag, 400, param, params=params))

    # -- GET / POST (update) / DELETE /v1/agents/{name}, GET .../versions --
    missing_agent = [
        ("unknown", "nobody", "a"),
        ("other-tenant", "{agent_a}", "b"),
        ("deleted", "{agent_deleted}", "a"),
        ("bad-name", "bad%20name", "a"),
        ("agent-prefix", "agent:helper", "a"),
        ("nul", "a%00", "a"),
        ("long", "a" * 300, "a"),
    ]
    for name, agent, who in missing_agent:
        base = f"/v1/agents/{agent}"
        add(Case(f"agent-get-{name}", "GET", base, 404, "name", "not_found", key=who))
        add(Case(f"agent-get-version-{name}", "GET", base, 404, "name", "not_found", key=who,
                 params={"version": "1"}))
        add(Case(f"agent-update-{name}", "POST", base, 404, "name", "not_found", key=who,
                 json={"instructions": "mine now"}, check=_agent_a_intact))
        add(Case(f"agent-delete-{name}", "DELETE", base, 404, "name", "not_found", key=who,
                 check=_agent_a_intact))
        add(Case(f"agent-versions-{name}", "GET", base + "/versions", 404, "name", "not_found", key=who))
    aa = "/v1/agents/{agent_a}"
    for name, value in (("0", "0"), ("negative", "-1"), ("abc", "abc"), ("float", "1.5"), ("empty", ""),
                        ("huge", str(2**31)), ("huger", "9" * 30)):
        add(Case(f"agent-get-version-{name}", "GET", aa, 400, "version", params={"version": value}))
        add(Case(f"agent-versions-after-{name}", "GET", aa + "/versions", 400, "after", params={"after": value}))
    add(Case("agent-get-version-not-written", "GET", aa, 404, "version", "not_found", params={"version": "3"}))
    for name, params, param in (
        ("limit-0", {"limit": "0"}, "limit"),
        ("limit-101", {"limit": "101"}, "limit"),
        ("order-sideways", {"order": "sideways"}, "order"),
    ):
        add(Case(f"agent-versions-{name}", "GET", aa + "/versions", 400, param, params=params))
    add(Case("agent-update-json-malformed", "POST", aa, 400, content=b'{"instructions": '))
    add(Case("agent-update-json-array", "POST", aa, 400, json=[{"instructions": "x"}]))
    add(Case("agent-update-no-body", "POST", aa, 400, content=b""))
    add(Case("agent-update-rename", "POST", aa, 400, "name", "unknown_parameter", json={"name": "other"},
             check=_agent_a_intact))
    add(Case("agent-update-unknown-field", "POST", aa, 400, "color", "unknown_parameter", json={"color": "red"}))
    for param, value in agent_fields:
        field_name = param.split(".")[0].split("[")[0]
        if field_name == "name" or value is None:
            continue  # no name in an update; null puts a field back to its default
        add(Case(f"agent-update-{param}={json.dumps(value)[:40]}", "POST", aa, 400, param,
                 json={field_name: value}, check=_agent_a_intact))
    add(Case("agent-update-unknown-model", "POST", aa, 400, "model", "model_not_found", json={"model": "gpt-9"},
             check=_agent_a_intact))
    add(Case("agent-update-unknown-model-of-unknown-agent", "POST", "/v1/agents/nobody", 400, "model",
             "model_not_found", json={"model": "gpt-9"}))

    # -- POST /v1/responses naming an agent --
    for name, model, who, code in (
        ("unknown", "agent:nobody", "a", "model_not_found"),
        ("other-tenant", "agent:{agent_a}", "b", "model_not_found"),
        ("deleted", "agent:{agent_deleted}", "a", "model_not_found"),
        ("unknown-version", "agent:{agent_a}@3", "a", "model_not_found"),
        ("huge-version", "agent:{agent_a}@" + "9" * 40, "a", "model_not_found"),
        ("empty-name", "agent:", "a", "invalid_value"),
        ("bad-name", "agent:bad name", "a", "invalid_value"),
        ("bad-version", "agent:{agent_a}@one", "a", "invalid_value"),
        ("empty-version", "agent:{agent_a}@", "a", "invalid_value"),
        ("negative-version", "agent:{agent_a}@-1", "a", "invalid_value"),
        ("two-versions", "agent:{agent_a}@1@2", "a", "invalid_value"),
    ):
        add(Case(f"resp-agent-{name}", "POST", r, 400, "model", code, key=who, json={"input": "hi", "model": model}))
        add(Case(f"resp-agent-{name}-stream", "POST", r, 400, "model", code, key=who,
                 json={"input": "hi", "model": model, "stream": True}))
    add(Case("resp-agent-input-tokens-unknown", "POST", "/v1/responses/input_tokens", 400, "model",
             "model_not_found", json={"input": "hi", "model": "agent:nobody"}))

    # -- /v1/approvals --
    ap = "/v1/approvals"
    for name, params, param in (
        ("status-unknown", {"status": "maybe"}, "status"),
        ("limit-0", {"limit": "0"}, "limit"),
        ("limit-101", {"limit": "101"}, "limit"),
        ("response-id-long", {"response_id": "r" * 65}, "response_id"),
        ("after-long", {"after": "a" * 65}, "after"),
    ):
        add(Case(f"approvals-list-{name}", "GET", ap, 400, param, params=params))
    add(Case("approvals-list-after-unknown", "GET", ap, 404, "after", params={"after": "apr_nope"}))
    for name, approval in (("unknown", "{unknown_apr}"), ("nul", "apr%00"), ("long", "a" * 300)):
        add(Case(f"approval-get-{name}", "GET", f"{ap}/{approval}", 404, "approval_id", "not_found"))
        for verb in ("approve", "deny"):
            add(Case(f"approval-{verb}-{name}", "POST", f"{ap}/{approval}/{verb}", 404, "approval_id",
                     "not_found"))
    for verb in ("approve", "deny"):
        path = f"{ap}/{{unknown_apr}}/{verb}"
        add(Case(f"approval-{verb}-unknown-field", "POST", path, 400, "color", "unknown_parameter",
                 json={"color": "red"}))
        add(Case(f"approval-{verb}-reason-type", "POST", path, 400, "reason", json={"reason": 5}))
        add(Case(f"approval-{verb}-reason-long", "POST", path, 400, "reason", json={"reason": "r" * 4097}))
        add(Case(f"approval-{verb}-json-malformed", "POST", path, 400, content=b'{"reason": '))
        add(Case(f"approval-{verb}-json-array", "POST", path, 400, json=["yes"]))

    # -- bodies over the limit: 413, with a length or streamed without one --
    big = {"input": "x" * (MAX_BODY + 1)}
    add(Case("resp-too-large", "POST", r, 413, None, "request_too_large", json=big))
    add(Case("resp-too-large-chunked", "POST", r, 413, None, "request_too_large",
             chunks=tuple([b'{"input": "'] + [b"x" * 8192] * 9 + [b'"}'])))
    add(Case("resp-too-large-no-key", "POST", r, 413, None, "request_too_large", key="none", json=big))
    add(Case("conv-create-too-large", "POST", c, 413, None, "request_too_large",
             json={"items": [_msg("y" * (MAX_BODY + 1))]}))
    add(Case("conv-update-too-large", "POST", ca, 413, None, "request_too_large",
             chunks=tuple([b'{"metadata": {"k": "'] + [b"v" * 4096] * 17 + [b'"}}'])))
    add(Case("items-create-too-large", "POST", ci, 413, None, "request_too_large",
             json={"items": [_msg("z" * (MAX_BODY + 1))]}))
    add(Case("fork-too-large", "POST", fk, 413, None, "request_too_large", json={"item_id": "i" * (MAX_BODY + 1)}))
    add(Case("agent-create-too-large", "POST", ag, 413, None, "request_too_large",
             json={"name": "big", "instructions": "i" * (MAX_BODY + 1)}))
    add(Case("agent-update-too-large", "POST", aa, 413, None, "request_too_large",
             chunks=tuple([b'{"instructions": "'] + [b"i" * 8192] * 9 + [b'"}'])))

    # -- unknown routes and wrong methods, in the same shape --
    for method, path, status in (
        ("GET", "/v1/nope", 404),
        ("GET", "/v2/responses", 404),
        ("POST", "/v1/chat/completions", 404),
        ("GET", "/v1/responses/{resp_a}/output_items", 404),
        ("GET", "/v1/conversations/{conv_a}/items/{item_a}/content", 404),
        ("GET", "/", 404),
        ("POST", "/v1/models", 405),
        ("GET", "/v1/responses", 405),
        ("PUT", "/v1/responses", 405),
        ("PATCH", "/v1/conversations/{conv_a}", 405),
        ("GET", "/v1/conversations", 405),
        ("PUT", "/v1/conversations/{conv_a}/items", 405),
        ("POST", "/v1/responses/{resp_a}", 405),
        ("DELETE", "/v1/conversations/{conv_a}/fork", 405),
        ("PUT", "/v1/agents", 405),
        ("DELETE", "/v1/agents", 405),
        ("PUT", "/v1/agents/{agent_a}", 405),
        ("PATCH", "/v1/agents/{agent_a}", 405),
        ("POST", "/v1/agents/{agent_a}/versions", 405),
        ("GET", "/v1/agents/{agent_a}/versions/1", 404),
    ):
        add(Case(f"route-{status}-{method}-{path}", method, path, status, None, None))
        add(Case(f"route-{status}-{method}-{path}-no-key", method, path, status, None, None, key="none"))

    return cases
    # fmt: on


async def _agent_a_intact(w: World) -> None:
    """Tenant A's agent is still at version 2, unchanged, with its first version behind it."""
    a = w.secrets["a"]
    agent = await _ok(w.client, "GET", f"/v1/agents/{w.ids['agent_a']}", a)
    assert (agent["version"], agent["instructions"], agent["tools"]) == (2, "Be briefer.", [LOOKUP])
    versions = await _ok(w.client, "GET", f"/v1/agents/{w.ids['agent_a']}/versions", a)
    assert [v["version"] for v in versions["data"]] == [2, 1]


async def _conv_a_intact(w: World) -> None:
    """Tenant A's conversation and items are still there, for A."""
    a = w.secrets["a"]
    conv = await _ok(w.client, "GET", f"/v1/conversations/{w.ids['conv_a']}", a)
    assert conv["metadata"] == {"topic": "weather"}
    listed = await _ok(w.client, "GET", f"/v1/conversations/{w.ids['conv_a']}/items?order=asc", a)
    assert [i["id"] for i in listed["data"]][:2] == [w.ids["item_a"], w.ids["item_a2"]]
    assert len(listed["data"]) == 4
    item = await _ok(w.client, "GET", f"/v1/conversations/{w.ids['conv_a']}/items/{w.ids['item_a']}", a)
    assert item["content"][0]["text"] == "Hi"


CASES = _cases()
assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str) and "{" in value:
        for name, real in ids.items():
            value = value.replace("{" + name + "}", real)
        return value
    if isinstance(value, dict):
        return {_fill(k, ids): _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


async def _send(w: World, case: Case) -> httpx.Response:
    headers = w.headers(case.key)
    kwargs: dict[str, Any] = {}
    if case.chunks is not None:
        chunks = case.chunks

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        kwargs["content"] = stream()
        headers["Content-Type"] = "application/json"
    elif case.content is not None:
        kwargs["content"] = case.content
        headers["Content-Type"] = case.content_type or "application/json"
    elif case.json is not _UNSET:
        kwargs["content"] = json.dumps(_fill(case.json, w.ids)).encode()
        headers["Content-Type"] = case.content_type or "application/json"
    params = None if case.params is None else _fill(case.params, w.ids)
    return await w.client.request(
        case.method, _fill(case.path, w.ids), headers=headers, params=params, **kwargs
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_bad_input(world: World, case: Case) -> None:
    before = snapshot(world.runtime)
    calls = len(world.model.requests)

    response = await _send(world, case)

    assert response.status_code == case.status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert "'None'" not in error["message"], error
    assert "Traceback" not in error["message"] and "sqlalchemy" not in error["message"].lower(), error
    expected_type = "authentication_error" if case.status == 401 else "invalid_request_error"
    assert error["type"] == expected_type, error
    assert error["param"] == case.param, error
    assert error["code"] is None or isinstance(error["code"], str), error
    if case.code is not _UNSET:
        assert error["code"] == case.code, error
    if case.status == 401:
        assert response.headers.get("www-authenticate") == "Bearer"
    if case.status == 405:
        assert response.headers.get("allow"), "a 405 names the allowed methods"

    assert len(world.model.requests) == calls, "a refused request must not reach the model"
    assert snapshot(world.runtime) == before, "a refused request must not change the store"
    if case.check is not None:
        await case.check(world)
