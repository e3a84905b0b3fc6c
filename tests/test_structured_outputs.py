"""Structured outputs: `text.format` of `POST /v1/responses`, through the HTTP API in-process.

A scripted model stands in for the model (it records the format it was given; a test scripts valid
or invalid JSON). The format is checked on the request (a bad one is a 400 naming the field, with
nothing written), reaches the model on plain, streamed, background and agent turns, is echoed on the
response and on its stored copy, and a final answer that breaks it ends the response `incomplete`
with the reason `invalid_output`, never `completed`. The wire formats each provider sends are in
tests/test_provider_conformance.py; the local model's grammar in tests/test_local_models.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sre.api import create_app
from sre.runtime import Runtime
from sre.store import sqlite_url
from sre.store.schema import ALL_TABLES
from sre.testing import ScriptedModel, ScriptedToolCall
from sre.types.formats import TextFormat, output_violation, parse_text_format

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
STRICT = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
VALID = '{"name": "Ada", "age": 36}'


class Api:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient, model: ScriptedModel) -> None:
        self.runtime, self.client, self.model = runtime, client, model

    def script(self, *replies: Any) -> None:
        self.model.replies = list(replies)
        self.model._next = 0

    async def create(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/responses", json={"input": "Who?", **body})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def get(self, path: str) -> dict[str, Any]:
        response = await self.client.get(path)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    model = ScriptedModel([VALID], name="small")
    runtime = Runtime.open(database_url=sqlite_url(tmp_path / "data"), models=[model], env={})
    _, secret = runtime.create_key(f"so-{uuid.uuid4().hex}", "alice", role="developer")
    runtime.start_workers(1)
    transport = httpx.ASGITransport(app=create_app(runtime))
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://sre", headers=headers) as client:
        yield Api(runtime, client, model)
    await runtime.aclose()


def output_text(response: dict[str, Any]) -> str:
    return "".join(
        part.get("text", "")
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )


async def test_strict_valid_output_completes_and_the_format_is_echoed(api: Api) -> None:
    done = await api.create(text={"format": STRICT})
    assert done["status"] == "completed" and done["incomplete_details"] is None
    assert json.loads(output_text(done)) == {"name": "Ada", "age": 36}
    assert done["text"] == {"format": STRICT}
    assert api.model.requests[-1].text_format == TextFormat("json_schema", "person", PERSON, strict=True)
    assert (await api.get(f"/v1/responses/{done['id']}"))["text"] == {"format": STRICT}


async def test_without_a_format_the_model_is_asked_for_text(api: Api) -> None:
    api.script("plain words")
    done = await api.create()
    assert done["status"] == "completed" and done["text"] == {"format": {"type": "text"}}
    assert api.model.requests[-1].text_format.type == "text"
    done = await api.create(text={"format": {"type": "text"}, "verbosity": "low"})
    assert done["text"] == {"format": {"type": "text"}, "verbosity": "low"}


@pytest.mark.parametrize(
    "reply",
    [
        '{"name": "Ada", "age": "thirty-six"}',  # against the schema
        '{"name": "Ada"}',  # a required property missing
        "Ada, 36",  # not JSON at all
        '{"name": "Ada", "age": 36',  # cut short
    ],
)
async def test_strict_invalid_output_ends_incomplete(api: Api, reply: str) -> None:
    api.script(reply)
    done = await api.create(text={"format": STRICT})
    assert done["status"] == "incomplete"
    assert done["incomplete_details"] == {"reason": "invalid_output"}
    assert output_text(done) == reply  # what the model said is kept, for the client to see
    stored = await api.get(f"/v1/responses/{done['id']}")
    assert stored["status"] == "incomplete" and stored["incomplete_details"] == {"reason": "invalid_output"}


async def test_json_object_must_be_an_object(api: Api) -> None:
    fmt = {"type": "json_object"}
    api.script('{"anything": [1, 2]}', "[1, 2]", "not json")
    assert (await api.create(text={"format": fmt}))["status"] == "completed"
    assert api.model.requests[-1].text_format == TextFormat("json_object")
    for _ in range(2):
        done = await api.create(text={"format": fmt})
        assert (done["status"], done["incomplete_details"]) == ("incomplete", {"reason": "invalid_output"})


async def test_a_schema_that_is_not_strict_only_needs_json(api: Api) -> None:
    api.script('{"name": 7}')
    done = await api.create(text={"format": {**STRICT, "strict": False}})
    assert done["status"] == "completed"


async def test_streaming_deltas_then_response_incomplete(api: Api) -> None:
    api.script('{"name": "Ada", "age": "old"}')
    response = await api.client.post(
        "/v1/responses", json={"input": "Who?", "stream": True, "text": {"format": STRICT}}
    )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert "response.output_text.delta" in kinds
    assert kinds[-1] == "response.incomplete" and "response.completed" not in kinds
    final = events[-1]["response"]
    assert final["incomplete_details"] == {"reason": "invalid_output"} and final["text"] == {"format": STRICT}

    api.script(VALID)
    response = await api.client.post(
        "/v1/responses", json={"input": "Who?", "stream": True, "text": {"format": STRICT}}
    )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"


async def test_tool_calls_are_not_held_to_the_format(api: Api) -> None:
    lookup = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    api.script(ScriptedToolCall("lookup", {"q": "x"}))
    done = await api.create(text={"format": STRICT}, tools=[lookup])
    assert done["status"] == "completed" and done["output"][0]["type"] == "function_call"
    call_id = done["output"][0]["call_id"]
    api.script("not json")
    done = await api.create(
        previous_response_id=done["id"],
        input=[{"type": "function_call_output", "call_id": call_id, "output": "Ada"}],
        text={"format": STRICT},
        tools=[lookup],
    )
    assert done["status"] == "incomplete"


async def test_background_runs_carry_the_format(api: Api) -> None:
    api.script("nope")
    queued = await api.create(text={"format": STRICT}, background=True)
    assert queued["text"] == {"format": STRICT}
    for _ in range(200):
        done = await api.get(f"/v1/responses/{queued['id']}")
        if done["status"] not in ("queued", "in_progress"):
            break
        await asyncio.sleep(0.02)
    assert done["status"] == "incomplete" and done["incomplete_details"] == {"reason": "invalid_output"}
    assert done["text"] == {"format": STRICT}
    assert api.model.requests[-1].text_format.strict is True


async def test_an_agent_turn_honours_the_request_format(api: Api) -> None:
    created = await api.client.post("/v1/agents", json={"name": "extractor", "instructions": "Extract."})
    assert created.status_code == 200, created.text
    api.script(VALID)
    done = await api.create(model="agent:extractor", text={"format": STRICT})
    assert done["status"] == "completed" and done["text"] == {"format": STRICT}
    assert api.model.requests[-1].text_format.name == "person"
    api.script("[]")
    done = await api.create(model="agent:extractor", text={"format": STRICT})
    assert done["incomplete_details"] == {"reason": "invalid_output"}


BAD_FORMATS: list[tuple[Any, str]] = [
    ("json", "text.format"),
    ({}, "text.format.type"),
    ({"type": "xml"}, "text.format.type"),
    ({"type": "json_schema", "schema": PERSON}, "text.format.name"),
    ({"type": "json_schema", "name": "has space", "schema": PERSON}, "text.format.name"),
    ({"type": "json_schema", "name": "x" * 65, "schema": PERSON}, "text.format.name"),
    ({"type": "json_schema", "name": "p"}, "text.format.schema"),
    ({"type": "json_schema", "name": "p", "schema": "{}"}, "text.format.schema"),
    ({"type": "json_schema", "name": "p", "schema": {"properties": {}}}, "text.format.schema"),
    ({"type": "json_schema", "name": "p", "schema": {"type": "string"}}, "text.format.schema"),
    (
        {"type": "json_schema", "name": "p", "schema": {"type": "object", "required": "a"}},
        "text.format.schema",
    ),
    (
        {"type": "json_schema", "name": "p", "schema": {"type": "object", "properties": {"a": {"type": 3}}}},
        "text.format.schema",
    ),
    ({"type": "json_schema", "name": "p", "schema": PERSON, "strict": "yes"}, "text.format.strict"),
    ({"type": "json_schema", "name": "p", "schema": PERSON, "extra": 1}, "text.format.extra"),
    ({"type": "json_object", "schema": PERSON}, "text.format.schema"),
]


def _rows(runtime: Runtime) -> dict[str, int]:
    with runtime.store.db.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in ALL_TABLES
        }


@pytest.mark.parametrize(("fmt", "param"), BAD_FORMATS)
async def test_a_bad_format_is_a_400_naming_the_field(api: Api, fmt: Any, param: str) -> None:
    before, calls = _rows(api.runtime), len(api.model.requests)
    response = await api.client.post("/v1/responses", json={"input": "Who?", "text": {"format": fmt}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert set(error) == {"message", "type", "param", "code"}
    assert len(api.model.requests) == calls and _rows(api.runtime) == before


def test_output_violation_says_why() -> None:
    fmt = parse_text_format(STRICT)
    assert output_violation(fmt, VALID) is None
    assert "not valid JSON" in (output_violation(fmt, "{") or "")
    assert "'age'" in (output_violation(fmt, '{"name": "a"}') or "")
    assert output_violation(parse_text_format({"type": "text"}), "anything") is None


async def test_the_schema_counts_as_part_of_the_prompt(api: Api) -> None:
    """The format's schema is sent with the prompt (a `response_format`, Anthropic's format tool),
    so the context budget counts it like a tool definition."""

    async def count(**body: Any) -> int:
        response = await api.client.post("/v1/responses/input_tokens", json={"input": "Who?", **body})
        assert response.status_code == 200, response.text
        return int(response.json()["input_tokens"])

    plain = await count()
    assert await count(text={"format": {"type": "text"}}) == plain
    assert await count(text={"format": STRICT}) > plain + 10
