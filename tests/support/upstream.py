"""A small real HTTP server on loopback that speaks the Chat Completions wire format.

Tests start it, queue replies (text, tool calls, HTTP errors, broken streams) and read back the
requests it received. With no reply queued it echoes the last user message. It serves streaming
(server-sent events) and non-streaming requests like the real API.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments", "id"?}
    status: int = 200
    error_message: str = "upstream error"
    retry_after: str | None = None
    cut_after_chunks: int | None = None  # close the stream after this many chunks, without finishing
    malformed: bool = False
    finish_reason: str | None = None
    delay: float = 0.0


class ChatUpstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
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
                    reply = upstream.replies.popleft() if upstream.replies else None
                if self.path.split("?")[0] != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found"}})
                    return
                upstream._serve(self, body, reply or upstream._echo(body))

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
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> ChatUpstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    @staticmethod
    def _echo(body: dict[str, Any]) -> Reply:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        last = users[-1]["content"] if users else ""
        if isinstance(last, list):
            last = " ".join(p.get("text", "") for p in last)
        return Reply(text=f"echo: {last}")

    def _serve(self, handler: Any, body: dict[str, Any], reply: Reply) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status != 200:
            extra = {"retry-after": reply.retry_after} if reply.retry_after else None
            handler._json(
                reply.status, {"error": {"message": reply.error_message, "type": "upstream"}}, extra
            )
            return
        model = body.get("model", "fake")
        prompt_tokens = sum(len(str(m.get("content") or "")) // 4 + 1 for m in body.get("messages", []))
        if not body.get("stream"):
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
            handler._json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": 7,
                        "total_tokens": prompt_tokens + 7,
                    },
                },
            )
            return
        chunks = self._chunks(reply, model, prompt_tokens)
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        for index, chunk in enumerate(chunks):
            if reply.cut_after_chunks is not None and index >= reply.cut_after_chunks:
                handler.wfile.flush()
                handler.close_connection = True
                return
            handler.wfile.write(chunk.encode())
            handler.wfile.flush()
        handler.close_connection = True

    @staticmethod
    def _chunks(reply: Reply, model: str, prompt_tokens: int) -> list[str]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload)}\n\n"

        out = [chunk({"role": "assistant", "content": ""})]
        if reply.malformed:
            out.append("data: {this is not json\n\n")
        if reply.text:
            words = reply.text.split(" ")
            out.extend(chunk({"content": (" " if i else "") + w}) for i, w in enumerate(words))
        for i, call in enumerate(reply.tool_calls):
            args = call["arguments"]
            third = max(1, len(args) // 3)
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": call.get("id", f"call_{i}_{int(time.time() * 1000)}"),
                                "type": "function",
                                "function": {"name": call["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for start in range(0, len(args), third):
                out.append(
                    chunk(
                        {"tool_calls": [{"index": i, "function": {"arguments": args[start : start + third]}}]}
                    )
                )
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        out.append(chunk({}, finish))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 7, "total_tokens": prompt_tokens + 7}
        out.append(
            f"data: {json.dumps({'id': 'chatcmpl-fake', 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage})}\n\n"
        )
        out.append("data: [DONE]\n\n")
        return out
