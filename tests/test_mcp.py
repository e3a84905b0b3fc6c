"""`MCPSource` against a real MCP server (tests/support/mcp_server.py), over stdio and streamable HTTP.

The stdio server is spawned by the SDK itself; the HTTP server is a subprocess on a free port, which
the reconnect tests kill with SIGKILL and start again on the same port. `record` writes one line per
execution, so the tests can tell that no call ran twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, EmbeddedResource, ImageContent, TextContent, TextResourceContents

from sre.tools.base import ToolError
from sre.tools.mcp import MCPSource, _result_text
from sre.types.errors import ConfigError
from tests.support.server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
TRANSPORTS = ["stdio", "http"]


class HTTPServer:
    """tests/support/mcp_server.py over streamable HTTP, as a subprocess that can be killed and
    started again on the same port."""

    def __init__(self, tmp_path: Path, *, legacy: bool = False) -> None:
        self.port = free_port()
        self.count_file = tmp_path / "http-count.txt"
        self.log = tmp_path / f"mcp-http-{self.port}.log"
        self.legacy = legacy
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 20.0) -> HTTPServer:
        cmd = [sys.executable, "-m", "tests.support.mcp_server", "--transport", "http"]
        cmd += ["--port", str(self.port), "--count-file", str(self.count_file)]
        cmd += ["--legacy"] if self.legacy else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MCP server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"MCP server did not start in {timeout}s:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Server:
    """One test server and how to reach it, for either transport."""

    def __init__(self, transport: str, tmp_path: Path) -> None:
        self.transport = transport
        self.tmp_path = tmp_path
        self.http = HTTPServer(tmp_path).start() if transport == "http" else None
        self.stdio_count_file = tmp_path / "stdio-count.txt"
        self.pid_file = tmp_path / "stdio.pid"

    @property
    def count_file(self) -> Path:
        return self.http.count_file if self.http is not None else self.stdio_count_file

    def recorded(self) -> list[str]:
        return self.count_file.read_text().splitlines() if self.count_file.exists() else []

    def source(self, *, timeout: float = 10.0, label: str = "test") -> MCPSource:
        if self.http is not None:
            return MCPSource(label, url=self.http.url, timeout=timeout)
        command = [sys.executable, "-m", "tests.support.mcp_server", "--transport", "stdio"]
        command += ["--count-file", str(self.stdio_count_file), "--pid-file", str(self.pid_file)]
        return MCPSource(label, command=command, cwd=str(REPO_ROOT), timeout=timeout)

    def stdio_pid(self) -> int:
        return int(self.pid_file.read_text())

    async def kill(self) -> None:
        """Kill the server with SIGKILL and wait until it is gone."""
        if self.http is not None:
            self.http.kill()
            return
        pid = self.stdio_pid()
        os.kill(pid, signal.SIGKILL)
        await wait_until_gone(pid)

    def stop(self) -> None:
        if self.http is not None:
            self.http.kill()


async def wait_until_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process is reaped (by the SDK's event loop), then a moment for the pipes' EOF."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            await asyncio.sleep(0.1)
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"process {pid} is still there")


@pytest.fixture(params=TRANSPORTS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    srv = Server(str(request.param), tmp_path)
    yield srv
    srv.stop()


@pytest.fixture
async def source(server: Server) -> AsyncIterator[MCPSource]:
    src = server.source()
    yield src
    await src.aclose()


async def test_lists_tools_with_schemas_and_annotations(source: MCPSource) -> None:
    tools = {spec.name: spec for spec in await source.list_tools()}
    assert set(tools) == {"add", "echo", "slow", "record", "fail"}
    add = tools["add"]
    assert add.description == "Add two integers."
    assert add.parameters["type"] == "object"
    assert set(add.parameters["properties"]) == {"a", "b"}
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert sorted(add.parameters["required"]) == ["a", "b"]
    assert (add.risk, add.idempotent) == ("low", True)  # readOnlyHint
    assert (tools["echo"].risk, tools["echo"].idempotent) == ("low", True)
    assert (tools["record"].risk, tools["record"].idempotent) == ("high", False)  # destructiveHint
    assert (tools["slow"].risk, tools["slow"].idempotent) == ("medium", False)  # no annotations
    assert all(spec.source == "mcp:test" and spec.timeout == 10.0 for spec in tools.values())


async def test_calls_tools(source: MCPSource) -> None:
    assert await source.call("add", {"a": 2, "b": 40}, key="run_1:step_1:call_1") == "42"
    assert await source.call("echo", {"text": "héllo\nworld"}, key="") == "héllo\nworld"


async def test_record_runs_once_per_call(server: Server, source: MCPSource) -> None:
    assert await source.call("record", {"note": "one"}, key="k1") == "recorded one"
    assert await source.call("record", {"note": "two"}, key="k2") == "recorded two"
    assert server.recorded() == ["one", "two"]


async def test_error_result_is_tool_failed(source: MCPSource) -> None:
    with pytest.raises(ToolError) as caught:
        await source.call("fail", {"message": "the disk is full"}, key="k")
    assert caught.value.code == "tool_failed"
    assert "the disk is full" in caught.value.message


async def test_arguments_the_server_rejects_are_tool_failed(source: MCPSource) -> None:
    with pytest.raises(ToolError) as caught:
        await source.call("add", {"a": "not a number", "b": 1}, key="k")
    assert caught.value.code == "tool_failed"
    assert await source.call("add", {"a": 1, "b": 1}, key="k") == "2"


async def test_unknown_tool(source: MCPSource) -> None:
    with pytest.raises(ToolError) as caught:
        await source.call("no_such_tool", {}, key="k")
    assert caught.value.code == "unknown_tool"


async def test_slow_call_times_out_and_the_source_still_works(server: Server) -> None:
    src = server.source(timeout=1.0)
    try:
        await src.list_tools()  # connect first, so the timeout measures only the call
        started = time.monotonic()
        with pytest.raises(ToolError) as caught:
            await src.call("slow", {"seconds": 5}, key="k")
        assert caught.value.code == "timeout"
        assert time.monotonic() - started < 3
        assert await src.call("add", {"a": 1, "b": 2}, key="k") == "3"
    finally:
        await src.aclose()


async def test_parallel_calls(server: Server, source: MCPSource) -> None:
    started = time.monotonic()
    slow = [source.call("slow", {"seconds": 0.5}, key=f"s{i}") for i in range(5)]
    adds = [source.call("add", {"a": i, "b": i}, key=f"a{i}") for i in range(10)]
    records = [source.call("record", {"note": f"n{i}"}, key=f"r{i}") for i in range(5)]
    results = await asyncio.gather(*slow, *adds, *records)
    assert results[:5] == ["slept"] * 5
    assert results[5:15] == [str(2 * i) for i in range(10)]
    assert sorted(server.recorded()) == [f"n{i}" for i in range(5)]
    assert time.monotonic() - started < 2.4  # five half-second calls ran at once


async def test_reconnects_after_the_server_was_killed(server: Server, source: MCPSource) -> None:
    assert await source.call("record", {"note": "before"}, key="k1") == "recorded before"
    first_pid = server.stdio_pid() if server.http is None else None
    await server.kill()
    if server.http is not None:
        server.http.start()  # the same port
    assert await source.call("record", {"note": "after"}, key="k2") == "recorded after"
    assert server.recorded() == ["before", "after"]
    if first_pid is not None:
        assert server.stdio_pid() != first_pid  # a new process was spawned


async def test_call_cut_off_by_a_dying_server_is_unavailable_and_not_resent(
    server: Server, source: MCPSource
) -> None:
    await source.list_tools()
    call = asyncio.create_task(source.call("slow", {"seconds": 5}, key="k1"))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await server.kill()
    with pytest.raises(ToolError) as caught:
        await call
    assert caught.value.code == "unavailable"
    assert "unknown" in caught.value.message  # the call may or may not have run
    assert time.monotonic() - started < 3  # not sent again and waited for
    if server.http is not None:
        server.http.start()
    assert await source.call("record", {"note": "next"}, key="k2") == "recorded next"
    assert server.recorded() == ["next"]


async def test_http_server_down_then_back(tmp_path: Path) -> None:
    http = HTTPServer(tmp_path).start()
    src = MCPSource("down", url=http.url, timeout=5.0)
    try:
        assert await src.call("add", {"a": 1, "b": 1}, key="k") == "2"
        http.kill()
        for _ in range(2):  # the broken connection, then a connection that cannot be made
            with pytest.raises(ToolError) as caught:
                await src.call("record", {"note": "lost"}, key="k")
            assert caught.value.code == "unavailable"
        http.start()
        assert await src.call("record", {"note": "back"}, key="k") == "recorded back"
        assert http.count_file.read_text().splitlines() == ["back"]
    finally:
        await src.aclose()
        http.kill()


async def test_http_session_lost_in_a_restart_is_renewed_without_running_twice(tmp_path: Path) -> None:
    """A 2025-era server answers 404 to a session it no longer knows, having run nothing: the call is
    sent once more on a new session."""
    http = HTTPServer(tmp_path, legacy=True).start()
    src = MCPSource("legacy", url=http.url, timeout=5.0)
    try:
        assert await src.call("record", {"note": "one"}, key="k1") == "recorded one"
        http.kill()
        http.start()
        assert await src.call("record", {"note": "two"}, key="k2") == "recorded two"
        assert http.count_file.read_text().splitlines() == ["one", "two"]
    finally:
        await src.aclose()
        http.kill()


async def test_unreachable_url_is_unavailable() -> None:
    src = MCPSource("nowhere", url=f"http://127.0.0.1:{free_port()}/mcp", timeout=5.0)
    try:
        with pytest.raises(ToolError) as caught:
            await src.list_tools()
        assert caught.value.code == "unavailable"
        assert "'nowhere'" in caught.value.message
        failures = await asyncio.gather(
            *(src.call("add", {"a": 1, "b": 1}, key=f"k{i}") for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(f, ToolError) and f.code == "unavailable" for f in failures)
    finally:
        await src.aclose()


async def test_missing_command_is_unavailable(tmp_path: Path) -> None:
    src = MCPSource("missing", command=[str(tmp_path / "no-such-server")])
    try:
        with pytest.raises(ToolError) as caught:
            await src.list_tools()
        assert caught.value.code == "unavailable"
    finally:
        await src.aclose()


async def test_close_is_clean_and_final(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    src = server.source()
    await asyncio.gather(src.list_tools(), src.call("add", {"a": 1, "b": 2}, key="k"))
    await src.aclose()
    await src.aclose()
    assert [r.getMessage() for r in caplog.records] == []
    if server.http is None:
        await wait_until_gone(server.stdio_pid(), timeout=1.0)  # the spawned server was stopped
    with pytest.raises(ToolError) as caught:
        await src.call("add", {"a": 1, "b": 2}, key="k")
    assert caught.value.code == "unavailable"


async def test_caller_cancelled_while_connecting_leaves_no_server(tmp_path: Path) -> None:
    server = Server("stdio", tmp_path)
    src = server.source()
    try:
        connecting = asyncio.create_task(src.list_tools())
        await asyncio.sleep(0.2)  # the server is starting, the handshake not done
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        await asyncio.sleep(0.5)
        if server.pid_file.exists():
            await wait_until_gone(server.stdio_pid(), timeout=5.0)
        assert await src.call("add", {"a": 1, "b": 2}, key="k") == "3"  # and the source still works
    finally:
        await src.aclose()


def test_result_text_renders_every_kind_of_content() -> None:
    result = CallToolResult(
        content=[
            TextContent(text="first"),
            ImageContent(data="aGVsbG8=", mime_type="image/png"),
            EmbeddedResource(resource=TextResourceContents(uri="file:///a.txt", text="inside")),
            TextContent(text="last"),
        ]
    )
    lines = _result_text(result, "t").split("\n")
    assert lines[0] == "first" and lines[-1] == "last"
    assert '"type": "image"' in lines[1] and '"mime_type": "image/png"' in lines[1]
    assert '"uri": "file:///a.txt"' in lines[2] and '"text": "inside"' in lines[2]
    structured = CallToolResult(content=[], structured_content={"result": 3})
    assert _result_text(structured, "t") == '{"result": 3}'
    with pytest.raises(ToolError) as caught:
        _result_text(CallToolResult(content=[], is_error=True), "t")
    assert caught.value.code == "tool_failed"


def test_from_config_builds_both_kinds() -> None:
    stdio = MCPSource.from_config(
        "files", {"command": ["npx", "server"], "env": {"TOKEN": "x"}, "cwd": "/tmp", "timeout": 5}
    )
    assert (stdio.label, stdio.command, stdio.env, stdio.cwd, stdio.timeout) == (
        "files",
        ["npx", "server"],
        {"TOKEN": "x"},
        "/tmp",
        5.0,
    )
    http = MCPSource.from_config("web", {"url": "https://example.com/mcp", "headers": {"Authorization": "B"}})
    assert (http.url, http.headers, http.timeout, http.command) == (
        "https://example.com/mcp",
        {"Authorization": "B"},
        30.0,
        None,
    )


@pytest.mark.parametrize(
    ("table", "bad_key"),
    [
        ({"command": ["x"], "comand": ["y"]}, "comand"),
        ({}, "command"),
        ({"command": ["x"], "url": "http://h/mcp"}, "command"),
        ({"command": "server --stdio"}, "command"),
        ({"command": []}, "command"),
        ({"command": ["x", 1]}, "command"),
        ({"url": "ftp://h/mcp"}, "url"),
        ({"url": "localhost:8000"}, "url"),
        ({"url": 8000}, "url"),
        ({"command": ["x"], "env": {"A": 1}}, "env"),
        ({"command": ["x"], "env": "A=1"}, "env"),
        ({"url": "http://h/mcp", "env": {"A": "1"}}, "env"),
        ({"url": "http://h/mcp", "headers": ["A: 1"]}, "headers"),
        ({"command": ["x"], "headers": {"A": "1"}}, "headers"),
        ({"command": ["x"], "timeout": 0}, "timeout"),
        ({"command": ["x"], "timeout": -1.5}, "timeout"),
        ({"command": ["x"], "timeout": "30"}, "timeout"),
        ({"command": ["x"], "timeout": True}, "timeout"),
        ({"command": ["x"], "cwd": 7}, "cwd"),
        ({"url": "http://h/mcp", "cwd": "/tmp"}, "cwd"),
    ],
)
def test_from_config_rejects(table: dict[str, Any], bad_key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MCPSource.from_config("srv", table)
    message = caught.value.message
    assert "\n" not in message
    assert "'srv'" in message and bad_key in message
    assert caught.value.param == bad_key
