"""End to end: the official `openai` client against `sre serve` as a real process, over both stores.

The upstream model is the fake Chat Completions server on loopback; it records what it received,
which is how these tests see what the runtime sent for each turn. The server is stopped and started
again between turns to show that state lives in the store, not in the process.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

from tests.conftest import upstream_config
from tests.support.server import ServerProcess
from tests.support.upstream import ChatUpstream, Reply


class Harness:
    def __init__(self, tmp_path: Path, backend: str, pg_url: str | None, upstream: ChatUpstream) -> None:
        self.data_dir = tmp_path / "data"
        self.config = upstream_config(tmp_path / "sre.toml", upstream)
        self.env = {"SRE_DATABASE_URL": pg_url} if backend == "postgresql" and pg_url else {}
        self.upstream = upstream
        self.server: ServerProcess | None = None
        self.tenant = ""
        self.key = self._create_key()

    def _create_key(self) -> str:
        import os
        import uuid

        self.tenant = f"e2e-{uuid.uuid4().hex[:8]}"
        cmd = [
            sys.executable,
            "-m",
            "sre",
            "keys",
            "create",
            "--tenant",
            self.tenant,
            "--principal",
            "alice",
            "--role",
            "developer",
            "--data-dir",
            str(self.data_dir),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def start(self) -> openai.OpenAI:
        self.server = ServerProcess(
            data_dir=self.data_dir, env=self.env, args=["--config", str(self.config)]
        ).start()
        return openai.OpenAI(base_url=self.server.base_url, api_key=self.key, max_retries=0)

    def restart(self) -> openai.OpenAI:
        assert self.server is not None
        self.server.stop()
        return self.start()

    def last_messages(self) -> list[dict[str, object]]:
        return list(self.upstream.requests[-1]["messages"])


@pytest.fixture
def harness(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest, upstream: ChatUpstream
) -> Iterator[Harness]:
    pg = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    h = Harness(tmp_path, backend, pg, upstream)
    yield h
    if h.server is not None:
        h.server.stop()


def contents(messages: list[dict[str, object]]) -> list[object]:
    return [m.get("content") for m in messages]


def test_conversation_survives_a_restart(harness: Harness) -> None:
    client = harness.start()
    conv = client.conversations.create(metadata={"user": "alice"})
    first = client.responses.create(input="My name is Ada.", conversation=conv.id)
    assert first.output_text == "echo: My name is Ada." and first.conversation is not None
    client.responses.create(input="I live in Paris.", conversation=conv.id)
    client = harness.restart()
    third = client.responses.create(input="Where do I live?", conversation=conv.id)
    assert third.status == "completed"
    assert contents(harness.last_messages()) == [
        "My name is Ada.",
        "echo: My name is Ada.",
        "I live in Paris.",
        "echo: I live in Paris.",
        "Where do I live?",
    ]
    items = client.conversations.items.list(conv.id, order="asc")
    assert [i.type for i in items.data] == ["message"] * 6
    assert client.conversations.retrieve(conv.id).metadata == {"user": "alice"}


def test_previous_response_chain_survives_a_restart(harness: Harness) -> None:
    client = harness.start()
    one = client.responses.create(input="one", instructions="Answer briefly.")
    two = client.responses.create(input="two", previous_response_id=one.id)
    client = harness.restart()
    three = client.responses.create(input="three", previous_response_id=two.id)
    assert three.previous_response_id == two.id
    assert contents(harness.last_messages()) == [
        "one",
        "echo: one",
        "two",
        "echo: two",
        "three",
    ]  # no instructions
    branch = client.responses.create(input="branch", previous_response_id=one.id)
    assert contents(harness.last_messages()) == ["one", "echo: one", "branch"]
    assert client.responses.retrieve(branch.id).output_text == "echo: branch"
    assert [i.id for i in client.responses.input_items.list(three.id).data] != []
    client.responses.delete(one.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(one.id)
    client.responses.create(input="four", previous_response_id=three.id)  # the chain still works
    assert contents(harness.last_messages())[-2:] == ["echo: three", "four"]


def test_streaming(harness: Harness) -> None:
    client = harness.start()
    conv = client.conversations.create()
    harness.upstream.queue(Reply(text="streamed words arrive one by one"))
    events = list(client.responses.create(input="stream please", conversation=conv.id, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "streamed words arrive one by one" and len(deltas) == 6
    final = events[-1].response  # type: ignore[union-attr]
    list(client.responses.create(input="second", conversation=conv.id, stream=True))
    client = harness.restart()
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "streamed words arrive one by one" and stored.status == "completed"
    with client.responses.stream(model="fake", input="third", conversation=conv.id) as stream:
        for _ in stream:
            pass
        third = stream.get_final_response()
    assert third.output_text == "echo: third"
    assert contents(harness.last_messages()) == [
        "stream please",
        "streamed words arrive one by one",
        "second",
        "echo: second",
        "third",
    ]
    harness.upstream.queue(Reply(text="an answer cut short", cut_after_chunks=3))  # after output: no retry
    failing = list(client.responses.create(input="break", conversation=conv.id, stream=True))
    assert failing[-1].type == "response.failed"
    client.responses.create(input="after", conversation=conv.id)
    assert contents(harness.last_messages())[-3:] == [
        "third",
        "echo: third",
        "after",
    ]  # the failed turn left nothing


def test_function_tool_round_trip(harness: Harness) -> None:
    client = harness.start()
    tools = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    harness.upstream.queue(
        Reply(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"}', "id": "call_w"}])
    )
    first = client.responses.create(input="Weather in Paris?", tools=tools)  # type: ignore[arg-type]
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].arguments == '{"city": "Paris"}'
    assert harness.upstream.requests[-1]["tools"][0]["function"]["name"] == "get_weather"
    client = harness.restart()
    harness.upstream.queue(Reply(text="It is sunny in Paris."))
    second = client.responses.create(
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"sky": "sunny"}'}],
        tools=tools,  # type: ignore[arg-type]
    )
    assert second.output_text == "It is sunny in Paris."
    sent = harness.last_messages()
    assert sent[-2]["tool_calls"][0]["id"] == "call_w"  # type: ignore[index]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_w", "content": '{"sky": "sunny"}'}


def test_keys_and_errors_through_the_client(harness: Harness) -> None:
    client = harness.start()
    assert client.models.list().data[0].id == "fake"
    bad = openai.OpenAI(base_url=client.base_url, api_key="sre-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(input="x")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(input="x", model="no-such-model")
    assert err.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve("conv_00000000000000000000000000000000")
    harness.upstream.queue(Reply(status=429, retry_after="0"), Reply(status=429, retry_after="0"))
    with pytest.raises(openai.RateLimitError):
        client.responses.create(input="x")  # the one retry the config allows failed too
    harness.upstream.queue(Reply(status=500), Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        client.responses.create(input="x")
    before = len(harness.upstream.requests)
    harness.upstream.queue(Reply(status=503), Reply(text="recovered"))
    assert client.responses.create(input="x").output_text == "recovered"
    assert len(harness.upstream.requests) == before + 2


class Person(BaseModel):
    name: str
    age: int
    languages: list[str]


def test_structured_output_parse(harness: Harness) -> None:
    """`client.responses.parse(text_format=Model)` (and `.stream(text_format=Model)`): the schema
    reaches the upstream as `response_format`, the answer comes back parsed; one against the
    schema ends incomplete."""
    client = harness.start()
    harness.upstream.queue(Reply(text='{"name": "Ada", "age": 36, "languages": ["en", "fr"]}'))
    parsed = client.responses.parse(input="Who wrote the first program?", text_format=Person)
    assert parsed.status == "completed"
    assert parsed.output_parsed == Person(name="Ada", age=36, languages=["en", "fr"])
    sent = harness.upstream.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Person"
    assert sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["required"] == ["name", "age", "languages"]
    stored = client.responses.retrieve(parsed.id)
    assert stored.text is not None and stored.text.format is not None
    assert stored.text.format.type == "json_schema"

    harness.upstream.queue(Reply(text='{"name": "Grace", "age": 85, "languages": ["COBOL"]}'))
    with client.responses.stream(model="fake", input="And the compiler?", text_format=Person) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_parsed == Person(name="Grace", age=85, languages=["COBOL"])

    harness.upstream.queue(Reply(text='{"name": "Ada", "age": "old", "languages": []}'))
    refused = client.responses.create(
        input="Who?",
        text={
            "format": {
                "type": "json_schema",
                "name": "Person",
                "schema": Person.model_json_schema(),
                "strict": True,
            }
        },
    )
    assert refused.status == "incomplete"
    assert refused.incomplete_details is not None
    assert str(refused.incomplete_details.reason) == "invalid_output"  # a reason OpenAI's types lack


def test_agents_sdk_output_type(harness: Harness) -> None:
    """An OpenAI Agents SDK agent with `output_type`, on SRE through the Responses API: its final
    output is a parsed object (before structured outputs, this failed with "Invalid JSON")."""
    agents = pytest.importorskip("agents")  # the `dev` extras pin openai-agents
    client = harness.start()
    agents.set_tracing_disabled(True)
    async_client = openai.AsyncOpenAI(base_url=str(client.base_url), api_key=harness.key, max_retries=0)
    model = agents.OpenAIResponsesModel(model="fake", openai_client=async_client)
    agent = agents.Agent(
        name="extractor", instructions="Extract the person.", output_type=Person, model=model
    )
    harness.upstream.queue(Reply(text='{"name": "Grace", "age": 85, "languages": ["COBOL"]}'))
    result = agents.Runner.run_sync(agent, "Grace Hopper, 85, wrote COBOL.")
    assert result.final_output == Person(name="Grace", age=85, languages=["COBOL"])
    sent = harness.upstream.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
