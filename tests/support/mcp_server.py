"""A small MCP server for the tests, over stdio or streamable HTTP (path `/mcp`).

    python -m tests.support.mcp_server --transport stdio
    python -m tests.support.mcp_server --transport http --port 8931 --count-file calls.txt

`record` appends one line per execution to the count file, so a test can count exactly how many
times the server ran a call; `--pid-file` lets a test kill a server that the SDK spawned; `--legacy`
makes it a 2025-era server (initialize handshake, HTTP sessions). Built with the `mcp` SDK's
`MCPServer`; nothing here imports SRE.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import METHOD_NOT_FOUND, RequestParams, ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)


def build_server(count_file: Path | None, *, legacy: bool = False) -> MCPServer:
    server = MCPServer("sre-test-tools", log_level="WARNING")
    if legacy:
        # Answer `server/discover` like a 2025-era server, so clients fall back to the initialize
        # handshake and (over HTTP) a stateful session with an `Mcp-Session-Id`.
        async def no_discover(ctx: Any, params: RequestParams) -> Any:
            raise MCPError(code=METHOD_NOT_FOUND, message="Method not found")

        server._lowlevel_server.add_request_handler("server/discover", RequestParams, no_discover)

    @server.tool(annotations=READ_ONLY)
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(annotations=READ_ONLY)
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then say so."""
        await anyio.sleep(seconds)
        return "slept"

    @server.tool(annotations=DESTRUCTIVE)
    def record(note: str) -> str:
        """Append the note as one line to the count file."""
        if count_file is None:
            raise RuntimeError("the server was started without --count-file")
        with count_file.open("a") as f:
            f.write(note + "\n")
        return f"recorded {note}"

    @server.tool()
    def fail(message: str) -> str:
        """Fail with the given message (an error result, not a protocol error)."""
        raise ToolError(message)

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.mcp_server")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--count-file", type=Path, default=None)
    parser.add_argument("--legacy", action="store_true", help="speak only the 2025 handshake era")
    parser.add_argument("--pid-file", type=Path, default=None, help="write this process's id here")
    args = parser.parse_args(argv)
    if args.pid_file is not None:
        args.pid_file.write_text(str(os.getpid()))
    server = build_server(args.count_file, legacy=args.legacy)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
