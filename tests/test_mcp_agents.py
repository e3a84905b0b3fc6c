"""Agents using an MCP server's tools through the real `mcp` SDK, over stdio and streamable HTTP.

In-process on both stores (a function model decides which tools to call), and end to end: `sre
serve` as a real process configured with `[mcp_servers.calc]`, driven by the official `openai`
client. The MCP server is `tests/support/mcp_server.py`; its `record` tool appends one line per
execution to a count file, so the tests see exactly how often a call ran.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from sre import Runtime
from sre.models import ModelRequest
from sre.testing import FunctionModel, ScriptedToolCall
from sre.types.items import FunctionCallOutput
from tests.support.server import ServerProcess
from tests.test_mcp import REPO_ROOT, HTTPServer

TRANSPORTS = ["stdio", "http"]


def mcp_table(transport: str, tmp_path: Path, http: HTTPServer | None) -> tuple[str, Path]:
    """The `[mcp_servers.calc]` table for a transport, and the count file its server writes."""
    if http is not None:
        return f'[mcp_servers.calc]\nurl = "{http.url}"\ntimeout = 2\n', http.count_file
    count = tmp_path / "stdio-count.txt"
    command = [
        sys.executable,
        "-m",
        "tests.support.mcp_server",
        "--transport",
        "stdio",
        "--count-file",
        str(count),
    ]
    return (
        f"[mcp_servers.calc]\ncommand = {json.dumps(command)}\ncwd = {json.dumps(str(REPO_ROOT))}\ntimeout = 2\n",
        count,
    )


@pytest.fixture(params=TRANSPORTS)
def mcp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    http = HTTPServer(tmp_path).start() if request.param == "http" else None
    try:
        yield mcp_table(str(request.param), tmp_path, http)
    finally:
        if http is not None:
            http.kill()


def decide(request: ModelRequest) -> Any:
    outputs = [i.output_text() for i in request.items if isinstance(i, FunctionCallOutput)]
    if not outputs:
        return [ScriptedToolCall("add", {"a": 2, "b": 3}), ScriptedToolCall("record", {"note": "paid"})]
    if len(outputs) == 2:
        return ScriptedToolCall("slow", {"seconds": 30})  # beyond the server's 2 s timeout
    return "answers: " + " | ".join(outputs)


@pytest.fixture
async def runtime(
    store_url: str, tmp_path: Path, mcp: tuple[str, Path]
) -> AsyncIterator[tuple[Runtime, FunctionModel, Path]]:
    table, count = mcp
    config = tmp_path / "sre.toml"
    config.write_text(table)
    model = FunctionModel(decide, name="small")
    rt = Runtime.open(database_url=store_url, config=config, models=[model], env={})
    yield rt, model, count
    await rt.aclose()


async def test_an_agent_calls_mcp_tools(runtime: tuple[Runtime, FunctionModel, Path]) -> None:
    rt, model, count = runtime
    caller = rt.local_caller()
    name = f"calc-{uuid.uuid4().hex[:8]}"  # the local tenant is shared on PostgreSQL
    await rt.create_agent(
        caller,
        {
            "name": name,
            "tools": [{"type": "mcp", "server_label": "calc", "allowed_tools": ["add", "record", "slow"]}],
        },
    )
    response = await rt.create_response(caller, {"model": f"agent:{name}", "input": "go"})
    assert response["status"] == "completed"
    assert [t.name for t in model.requests[0].tools] == ["add", "slow", "record"] or sorted(
        t.name for t in model.requests[0].tools
    ) == ["add", "record", "slow"]
    outputs = [i["output"] for i in response["output"] if i["type"] == "function_call_output"]
    assert outputs[:2] == ["5", "recorded paid"]
    assert json.loads(outputs[2])["error"]["code"] == "timeout"
    assert response["output"][-1]["content"][0]["text"].startswith("answers: 5 | recorded paid")
    assert count.read_text().splitlines() == ["paid"]  # the side effect happened exactly once


async def test_an_unknown_mcp_server_is_refused(runtime: tuple[Runtime, FunctionModel, Path]) -> None:
    rt, _, _ = runtime
    from sre import InvalidRequest

    with pytest.raises(InvalidRequest) as caught:
        await rt.create_agent(
            rt.local_caller(), {"name": "x", "tools": [{"type": "mcp", "server_label": "nope"}]}
        )
    assert caught.value.param == "tools[0].server_label"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sre_serve_with_an_mcp_server_end_to_end(tmp_path: Path, mcp: tuple[str, Path], backend: str) -> None:
    table, count = mcp
    config = tmp_path / "serve.toml"
    config.write_text(
        '[models.calc-model]\nprovider = "scripted"\ncall_tool = "record"\n'
        'tool_arguments = {note = "{input}"}\nreplies = ["noted"]\n\n' + table
    )
    server = ServerProcess(data_dir=tmp_path / "data", args=["--config", str(config), "--no-auth"]).start()
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        agent = client.post(
            "/agents",
            body={
                "name": "scribe",
                "tools": [{"type": "mcp", "server_label": "calc", "allowed_tools": ["record"]}],
            },
            cast_to=object,
        )
        assert agent["name"] == "scribe"  # type: ignore[index]
        response = client.responses.create(model="agent:scribe", input="first entry")
        assert response.status == "completed" and response.output_text == "noted"
        kinds = [item.type for item in response.output]
        assert kinds == ["function_call", "function_call_output", "message"]
        assert count.read_text().splitlines() == ["first entry"]
    finally:
        server.stop()
