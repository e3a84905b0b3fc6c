"""MCP servers as a tool source: `MCPSource` lists and calls the tools of one MCP server, spawned as
a command (stdio) or reached at a URL (streamable HTTP), through the official `mcp` SDK.

It owns the connection to that one server: connecting on first use, keeping the SDK session alive in
one background task (the SDK's anyio scopes must be entered and left by the same task), connecting
again after the server went away, and turning MCP results into the text or `ToolError` the run
engine expects. It must never send a call twice when the first may have reached the server: a
connection that breaks mid-call gives `ToolError(code="unavailable")` and the outcome stays unknown.
It knows nothing of runs, the store or the models; permissions and retries belong to the engine.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import urlsplit

import anyio
from mcp import Client, StdioServerParameters
from mcp.client import Transport
from mcp.client._transport import TransportStreams
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    AudioContent,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    Implementation,
    RequestParamsMeta,
    ResourceLink,
    TextContent,
    TextResourceContents,
    Tool,
)
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from sre.tools.base import DEFAULT_TIMEOUT, Risk, ToolError, ToolSpec
from sre.types.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_KEYS = frozenset({"command", "url", "env", "headers", "timeout", "cwd"})
MIN_CONNECT_TIMEOUT = 10.0  # seconds; spawning a server and its handshake may take longer than a call
CLOSE_TIMEOUT = 10.0  # seconds; the SDK bounds its own shutdown (stdio: ~6 s worst case)
IDEMPOTENCY_META_KEY = "sre/idempotency_key"


class MCPSource:
    """The tools of one MCP server. Exactly one of `command` (spawned, spoken to over stdio) and `url`
    (streamable HTTP) is given; `env` and `cwd` apply to the command, `headers` to the URL. The SDK
    passes a spawned server only a few variables of this environment (PATH, HOME, USER, ...), so
    anything else it needs goes in `env`. `timeout` bounds each call and listing, in seconds."""

    def __init__(
        self,
        label: str,
        *,
        command: list[str] | None = None,
        url: str | None = None,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cwd: str | None = None,
    ) -> None:
        if (command is None) == (url is None):
            raise ValueError("MCPSource needs exactly one of command or url")
        if command is not None and not command:
            raise ValueError("MCPSource command must not be empty")
        if not timeout > 0:
            raise ValueError("MCPSource timeout must be > 0")
        self.label = label
        self.command = list(command) if command is not None else None
        self.url = url
        self.env = dict(env) if env is not None else None
        self.headers = dict(headers) if headers is not None else None
        self.timeout = float(timeout)
        self.cwd = cwd
        self._lock = asyncio.Lock()  # one connection attempt at a time
        self._session: _Session | None = None
        self._attempts = 0
        self._last_failure: ToolError | None = None
        self._closed = False

    @classmethod
    def from_config(cls, label: str, table: dict[str, Any]) -> MCPSource:
        """Build a source from its TOML table; anything wrong is a one-line `ConfigError`."""
        where = f"MCP server {label!r}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        for key in table:
            if key not in CONFIG_KEYS:
                raise ConfigError(
                    f"{where}: unknown key {key!r} (expected {', '.join(sorted(CONFIG_KEYS))})", param=key
                )
        command, url = table.get("command"), table.get("url")
        if (command is None) == (url is None):
            raise ConfigError(f"{where}: give exactly one of 'command' or 'url'", param="command")
        if command is not None and (
            not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command)
        ):
            raise ConfigError(f"{where}: 'command' must be a non-empty list of strings", param="command")
        if url is not None:
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"{where}: 'url' must be an http:// or https:// URL", param="url")
        env = _string_table(table, "env", where)
        headers = _string_table(table, "headers", where)
        if env is not None and url is not None:
            raise ConfigError(f"{where}: 'env' applies only to a 'command' server", param="env")
        if headers is not None and command is not None:
            raise ConfigError(f"{where}: 'headers' applies only to a 'url' server", param="headers")
        timeout = table.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ConfigError(f"{where}: 'timeout' must be a number of seconds > 0", param="timeout")
        cwd = table.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or url is not None):
            raise ConfigError(f"{where}: 'cwd' must be a string, for a 'command' server", param="cwd")
        return cls(label, command=command, url=url, env=env, headers=headers, timeout=timeout, cwd=cwd)

    def __repr__(self) -> str:
        return (
            f"MCPSource({self.label!r}, {'command' if self.command else 'url'}={self.command or self.url!r})"
        )

    async def list_tools(self) -> list[ToolSpec]:
        _, tools = await self._listed()
        return list(tools.values())

    async def call(self, name: str, arguments: dict[str, Any], *, key: str) -> str:
        session, tools = await self._listed()
        if name not in tools:
            raise ToolError(f"MCP server {self.label!r} has no tool {name!r}", code="unknown_tool")
        try:
            result = await self._call_once(session, name, arguments, key)
        except _StaleSession:
            # The server answered that it does not know our session (HTTP 404 after a restart), so it
            # rejected the call without running it: sending it once on a new session is safe.
            session = await self._connected()
            try:
                result = await self._call_once(session, name, arguments, key)
            except _StaleSession as exc:
                raise ToolError(
                    f"MCP server {self.label!r} rejected the call: {exc}", code="unavailable"
                ) from None
        return _result_text(result, name)

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- connection ----------------------------------------------------------------------------------

    async def _connected(self) -> _Session:
        """The live session, connecting (one attempt) when there is none or the last one ended.
        Callers that waited on another caller's failed attempt share its failure."""
        attempts_seen = self._attempts
        async with self._lock:
            if self._closed:
                raise ToolError(f"MCP server {self.label!r}: the source is closed", code="unavailable")
            session = self._session
            if session is not None and not session.ended:
                return session
            if self._attempts != attempts_seen and self._last_failure is not None:
                raise ToolError(self._last_failure.message, code=self._last_failure.code)
            self._session = None
            if session is not None:
                await session.close()
            session = _Session(self.label, self._transport, http=self.url is not None)
            try:
                await session.open(max(self.timeout, MIN_CONNECT_TIMEOUT))
            except ToolError as exc:
                self._last_failure = exc
                raise
            finally:
                self._attempts += 1  # counted when finished, so that those waiting see it
            self._last_failure = None
            self._session = session
            return session

    async def _listed(self) -> tuple[_Session, dict[str, ToolSpec]]:
        """The live session and its tools. Listing changes nothing on the server, so when the
        connection turns out to be gone, one new connection may list them again."""
        session = await self._connected()
        try:
            return session, await self._tools(session)
        except ToolError as exc:
            if exc.code != "unavailable":
                raise
        session = await self._connected()
        return session, await self._tools(session)

    def _transport(self, on_end: Callable[[], None]) -> Transport:
        return _watched(self._raw_transport(), on_end)

    @asynccontextmanager
    async def _raw_transport(self) -> AsyncIterator[TransportStreams]:
        if self.command is not None:
            params = StdioServerParameters(
                command=self.command[0], args=self.command[1:], env=self.env, cwd=self.cwd
            )
            async with stdio_client(params) as streams:
                yield streams
        else:
            assert self.url is not None
            async with (
                create_mcp_http_client(headers=self.headers) as http,
                streamable_http_client(self.url, http_client=http) as streams,
            ):
                yield streams

    async def _tools(self, session: _Session) -> dict[str, ToolSpec]:
        """The server's tools, listed once per session (so a reconnect lists them again)."""
        if session.tools is not None:
            return session.tools
        tools: dict[str, ToolSpec] = {}
        cursor: str | None = None
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    page = await session.client.list_tools(cursor=cursor)
            except TimeoutError:
                raise ToolError(
                    f"MCP server {self.label!r} did not list its tools in {self.timeout:g}s", code="timeout"
                ) from None
            except MCPError as exc:
                if exc.code == CONNECTION_CLOSED:
                    session.mark_ended()
                    raise ToolError(
                        f"MCP server {self.label!r}: connection lost", code="unavailable"
                    ) from None
                raise ToolError(f"MCP server {self.label!r} could not list tools: {exc.message}") from None
            for tool in page.tools:
                tools[tool.name] = self._spec(tool)
            cursor = page.next_cursor
            if cursor is None:
                break
        session.tools = tools
        return tools

    def _spec(self, tool: Tool) -> ToolSpec:
        hints = tool.annotations
        read_only = bool(hints and hints.read_only_hint)
        risk: Risk = "low" if read_only else "high" if hints and hints.destructive_hint else "medium"
        return ToolSpec(
            name=tool.name,
            description=tool.description or "",
            parameters=tool.input_schema,
            risk=risk,
            idempotent=bool(hints and (hints.idempotent_hint or hints.read_only_hint)),
            timeout=self.timeout,
            source=f"mcp:{self.label}",
        )

    async def _call_once(
        self, session: _Session, name: str, arguments: dict[str, Any], key: str
    ) -> CallToolResult:
        where = f"MCP tool {name!r} on server {self.label!r}"
        # `_meta` is an open map (PEP 728 `extra_items`), which mypy does not model yet.
        meta = cast(RequestParamsMeta, {IDEMPOTENCY_META_KEY: key}) if key else None
        try:
            async with asyncio.timeout(self.timeout):
                return await session.client.call_tool(name, arguments, meta=meta)
        except TimeoutError:
            raise ToolError(f"{where} did not finish in {self.timeout:g}s", code="timeout") from None
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise ToolError(f"{where} did not finish in {self.timeout:g}s", code="timeout") from None
            if exc.code == CONNECTION_CLOSED:
                session.mark_ended()
                raise ToolError(
                    f"{where}: the connection broke during the call, so whether it ran is unknown",
                    code="unavailable",
                ) from None
            if session.stale_session_error(exc):
                session.mark_ended()
                raise _StaleSession(exc.message) from None
            code = "invalid_arguments" if exc.code == INVALID_PARAMS else "tool_failed"
            raise ToolError(f"{where} failed: {exc.message}", code=code) from None
        except (ValidationError, RuntimeError) as exc:
            # An answer came, but not one to use: a result off the protocol (ValidationError) or
            # off the tool's output schema, or a request for user input (RuntimeError).
            raise ToolError(f"{where} returned an unusable result: {exc}", code="tool_failed") from None
        except Exception as exc:
            logger.exception("MCP server %r: unexpected failure calling %r", self.label, name)
            session.mark_ended()  # whatever broke, the next call starts on a new connection
            raise ToolError(
                f"{where} failed unexpectedly ({_describe(exc)}), so whether it ran is unknown",
                code="unavailable",
            ) from None


class _StaleSession(Exception):
    """The HTTP server no longer knows the session (it restarted): the call was rejected unrun."""


class _Session:
    """One connection to the server, owned by one background task that enters and leaves the SDK's
    `Client` (its anyio task groups and cancel scopes); other tasks call through `client`."""

    def __init__(
        self, label: str, transport: Callable[[Callable[[], None]], Transport], *, http: bool
    ) -> None:
        self.label = label
        self.http = http
        self.tools: dict[str, ToolSpec] | None = None
        self.ended = False  # the transport is gone, or the owner task left the client
        self._transport = transport
        self._client: Client | None = None
        self.protocol_version = ""
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def client(self) -> Client:
        assert self._client is not None
        return self._client

    def mark_ended(self) -> None:
        self.ended = True

    def stale_session_error(self, exc: MCPError) -> bool:
        """Whether `exc` is a handshake-era HTTP server's "unknown session" answer (HTTP 404), which
        the MCP spec says rejects the request without running it and asks for a new session."""
        return (
            self.http
            and exc.code == INVALID_REQUEST
            and "session" in exc.message.lower()
            and self.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        )

    async def open(self, timeout: float) -> None:
        # A fresh context, so the owner task inherits no caller's contextvars (tracing spans, etc.).
        self._task = asyncio.create_task(
            self._own(timeout), name=f"mcp:{self.label}", context=contextvars.Context()
        )
        try:
            await self._ready.wait()
        except asyncio.CancelledError:
            # The caller gave up; the owner task must not live on, holding a server nobody closes.
            await asyncio.shield(self.close())
            raise
        if self._client is None:
            failure = self._failure
            await self.close()
            raise ToolError(
                f"MCP server {self.label!r} is unavailable: {_describe(failure)}", code="unavailable"
            )

    async def close(self) -> None:
        self.ended = True
        self._stop.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("MCP server %r did not shut down in %gs; cancelling", self.label, CLOSE_TIMEOUT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _own(self, connect_timeout: float) -> None:
        """Enter the client, publish it, wait for `close`, leave it: all in this one task."""
        client = Client(self._transport(self.mark_ended), cache=None, client_info=_CLIENT_INFO, mode="auto")
        closing = False  # left because `close` asked, not because the connection broke
        try:
            # The deadline covers only connecting; it is lifted once the handshake is done. One
            # scope around the whole lifetime keeps the SDK's own scopes properly nested inside it.
            with anyio.CancelScope(deadline=anyio.current_time() + connect_timeout) as scope:
                async with client:
                    try:
                        scope.deadline = math.inf
                        if not scope.cancel_called:  # the deadline may have passed just now
                            self.protocol_version = client.protocol_version
                            self._client = client
                            self._ready.set()
                        await self._stop.wait()
                        closing = True
                    finally:
                        self.ended = True
            if scope.cancelled_caught and self._client is None:
                self._failure = TimeoutError(f"no connection within {connect_timeout:g}s")
        except Exception as exc:
            self._failure = exc
            if closing:
                logger.warning("MCP server %r: error while closing: %s", self.label, _describe(exc))
            elif self._client is not None:
                logger.warning("MCP server %r: connection lost: %s", self.label, _describe(exc))
        finally:
            self.ended = True
            self._ready.set()


class _WatchedReadStream:
    """The transport's read side, reporting when it ends (the server went away), so the next call
    can tell a connection that is known to be gone from one that may still carry its request."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], on_end: Callable[[], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> contextvars.Context | None:
        # The SDK restores the sender's contextvars from this when the inner stream keeps them.
        context: contextvars.Context | None = getattr(self._inner, "last_context", None)
        return context

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    async def aclose(self) -> None:
        self._on_end()
        await self._inner.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


@asynccontextmanager
async def _watched(
    transport: AbstractAsyncContextManager[TransportStreams], on_end: Callable[[], None]
) -> AsyncIterator[tuple[_WatchedReadStream, WriteStream[SessionMessage]]]:
    async with transport as (read_stream, write_stream):
        yield _WatchedReadStream(read_stream, on_end), write_stream


def _client_info() -> Implementation:
    try:
        version = metadata.version("sre")
    except metadata.PackageNotFoundError:
        version = "0"
    return Implementation(name="sre", version=version)


_CLIENT_INFO = _client_info()


def _string_table(table: dict[str, Any], key: str, where: str) -> dict[str, str] | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where}: '{key}' must be a table of strings", param=key)
    return dict(value)


def _result_text(result: CallToolResult, name: str) -> str:
    """The result as the model reads it: text parts joined by newlines, other parts as short JSON,
    the structured result as JSON when there is no text; an error result raises."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    parts = [_block_text(block) for block in result.content]
    if not texts and result.structured_content is not None:
        parts.insert(0, json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n".join(parts)
    if result.is_error:
        raise ToolError(text or f"MCP tool {name!r} failed", code="tool_failed")
    return text


def _block_text(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    described: dict[str, Any]
    if isinstance(block, ImageContent | AudioContent):
        described = {"type": block.type, "mime_type": block.mime_type, "base64_chars": len(block.data)}
    elif isinstance(block, ResourceLink):
        described = {"type": block.type, "uri": block.uri, "name": block.name, "mime_type": block.mime_type}
    elif isinstance(block, EmbeddedResource):
        contents = block.resource
        described = {"type": block.type, "uri": contents.uri, "mime_type": contents.mime_type}
        if isinstance(contents, TextResourceContents):
            described["text"] = contents.text
        else:
            described["base64_chars"] = len(contents.blob)
    else:  # a content type newer than this code
        described = {"type": getattr(block, "type", "unknown")}
    return json.dumps({k: v for k, v in described.items() if v is not None}, ensure_ascii=False)


def _describe(exc: BaseException | None) -> str:
    """One line for a connection failure, looking inside the SDK's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if exc is None:
        return "no connection"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
