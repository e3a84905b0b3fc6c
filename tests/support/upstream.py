"""Small real HTTP servers on loopback that speak a model wire format; here, Chat Completions.

`WireUpstream` is what every wire-level fake shares: a threaded server on 127.0.0.1, a queue of
`Reply`s (text, tool calls, usage, HTTP errors, streams cut short, malformed chunks, errors reported
mid-stream), and a record of the requests received (body, headers, path with query). With no reply
queued a fake echoes the last user message. Each wire format (`ChatUpstream` here, the Responses
and Messages fakes beside it) only says how a reply looks on its wire.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

HOLD_TIMEOUT = 10.0  # a held stream goes on by itself after this many seconds, so no test hangs


@dataclass
class Reply:
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments", "id"?}
    status: int = 200
    error_message: str = "upstream error"
    retry_after: str | None = None
    cut_after_chunks: int | None = None  # close the stream after this many chunks, without finishing
    malformed: bool = False
    finish_reason: str | None = None  # Chat Completions' words: stop, length, content_filter
    delay: float = 0.0
    input_tokens: int | None = None  # input tokens to report, cached ones included
    cached_tokens: int = 0
    stream_error: str | None = None  # "server" or "rate_limit": fail mid-stream instead of finishing
    hold: threading.Event | None = None  # after the first text chunk, wait until this is set


@dataclass
class Stream:
    chunks: list[str]
    first_text: int | None = None  # index of the chunk that carries the first piece of text


def split_words(text: str) -> list[str]:
    """Text as it streams: word by word, each piece but the first with its leading space."""
    return [(" " if i else "") + w for i, w in enumerate(text.split(" "))]


def split_arguments(arguments: str) -> list[str]:
    third = max(1, len(arguments) // 3)
    return [arguments[start : start + third] for start in range(0, len(arguments), third)]


class WireUpstream:
    prefix = "/v1"  # what base_url ends with
    endpoint = "/chat/completions"  # requests to any path ending with this are served

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []  # path and query of each request
        self.replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with upstream._lock:
                    upstream.requests.append(body)
                    upstream.headers.append({k.lower(): v for k, v in self.headers.items()})
                    upstream.paths.append(self.path)
                    reply = upstream.replies.popleft() if upstream.replies else None
                if not self.path.split("?")[0].endswith(upstream.endpoint):
                    self._json(404, {"error": {"message": "not found"}})
                    return
                upstream._serve(self, body, reply or upstream.echo(body))

            def _json(
                self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hangs up mid-stream is part of the tests, not news

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll interval: `stop` waits for the serving loop to notice, once per test.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.origin + self.prefix

    def start(self) -> Self:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    # What each wire format says for itself.

    def echo(self, body: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def error_body(self, reply: Reply) -> dict[str, Any]:
        return {"error": {"message": reply.error_message, "type": "upstream"}}

    def stream(self, reply: Reply, body: dict[str, Any]) -> Stream:
        raise NotImplementedError

    def complete(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any] | None:
        """The answer to a request that does not stream; None where the format always streams here."""
        return None

    def _serve(self, handler: Any, body: dict[str, Any], reply: Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status != 200:
            extra = {"retry-after": reply.retry_after} if reply.retry_after else None
            handler._json(reply.status, self.error_body(reply), extra)
            return
        if not body.get("stream"):
            answer = self.complete(reply, body)
            if answer is None:
                handler._json(400, {"error": {"message": "this fake only streams"}})
            else:
                handler._json(200, answer)
            return
        stream = self.stream(reply, body)
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        for index, chunk in enumerate(stream.chunks):
            if reply.cut_after_chunks is not None and index >= reply.cut_after_chunks:
                break
            handler.wfile.write(chunk.encode())
            handler.wfile.flush()
            if reply.hold is not None and index == stream.first_text:
                reply.hold.wait(HOLD_TIMEOUT)
        handler.close_connection = True


class ChatUpstream(WireUpstream):
    """OpenAI's Chat Completions: `POST /v1/chat/completions`, streaming and not."""

    def echo(self, body: dict[str, Any]) -> Reply:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        last = users[-1]["content"] if users else ""
        if isinstance(last, list):
            last = " ".join(p.get("text", "") for p in last)
        return Reply(text=f"echo: {last}")

    @staticmethod
    def _usage(reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        prompt = reply.input_tokens
        if prompt is None:
            prompt = sum(len(str(m.get("content") or "")) // 4 + 1 for m in body.get("messages", []))
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": 7, "total_tokens": prompt + 7}
        if reply.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        return usage

    def complete(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any] | None:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.get("id", f"call_{i}"),
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for i, c in enumerate(reply.tool_calls)
            ]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
            "usage": self._usage(reply, body),
        }

    def stream(self, reply: Reply, body: dict[str, Any]) -> Stream:
        model = body.get("model", "fake")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        out = Stream([chunk({"role": "assistant", "content": ""})])
        if reply.malformed:
            out.chunks.append("data: {this is not json\n\n")
        if reply.text:
            out.first_text = len(out.chunks)
            out.chunks.extend(chunk({"content": piece}) for piece in split_words(reply.text))
        for i, call in enumerate(reply.tool_calls):
            head = {
                "index": i,
                "id": call.get("id", f"call_{i}_{int(time.time() * 1000)}"),
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            out.chunks.append(chunk({"tool_calls": [head]}))
            for piece in split_arguments(call["arguments"]):
                out.chunks.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        if reply.stream_error is not None:
            error = (
                {"message": reply.error_message, "type": "tokens", "code": "rate_limit_exceeded"}
                if reply.stream_error == "rate_limit"
                else {"message": reply.error_message, "type": "server_error", "code": None}
            )
            out.chunks.append(f"data: {json.dumps({'error': error})}\n\n")
            return out
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        out.chunks.append(chunk({}, finish))
        usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time())}
        usage.update(model=model, choices=[], usage=self._usage(reply, body))
        out.chunks.append(f"data: {json.dumps(usage)}\n\n")
        out.chunks.append("data: [DONE]\n\n")
        return out
