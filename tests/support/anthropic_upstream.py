"""A small real HTTP server on loopback that speaks Anthropic's Messages wire format, streaming.

It serves `POST /v1/messages` with the server-sent events the real API sends (`message_start`,
`content_block_*`, `message_delta`, `message_stop`, `ping`, `error`) and Anthropic's error bodies,
from queued `Reply`s; it records what it received.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.upstream import Reply, Stream, WireUpstream, split_arguments, split_words

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_STOP = {"stop": "end_turn", "length": "max_tokens", "content_filter": "refusal", "tool_calls": "tool_use"}


class AnthropicUpstream(WireUpstream):
    prefix = ""  # Anthropic's base URL has no `/v1`; the provider adds it
    endpoint = "/v1/messages"

    def echo(self, body: dict[str, Any]) -> Reply:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = users[-1]["content"] if users else ""
        if isinstance(content, list):
            content = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
        return Reply(text=f"echo: {content}")

    def error_body(self, reply: Reply) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(reply.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": reply.error_message}}

    def stream(self, reply: Reply, body: dict[str, Any]) -> Stream:
        out = Stream([])

        def event(kind: str, **fields: Any) -> None:
            out.chunks.append(f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n")

        total = reply.input_tokens
        if total is None:
            total = len(json.dumps(body.get("messages"))) // 4 + len(str(body.get("system", ""))) // 4
        usage = {
            # Anthropic counts cache reads apart from `input_tokens`.
            "input_tokens": total - reply.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": reply.cached_tokens,
            "output_tokens": 1,
        }
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": body.get("model", "fake"),
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        event("message_start", message=message)
        event("ping")
        if reply.malformed:
            out.chunks.append("event: content_block_delta\ndata: {this is not json\n\n")
        block = 0
        if reply.text:
            event("content_block_start", index=block, content_block={"type": "text", "text": ""})
            out.first_text = len(out.chunks)
            for piece in split_words(reply.text):
                event("content_block_delta", index=block, delta={"type": "text_delta", "text": piece})
            event("content_block_stop", index=block)
            block += 1
        for i, call in enumerate(reply.tool_calls):
            start = {
                "type": "tool_use",
                "id": call.get("id", f"toolu_{i}_{int(time.time() * 1000)}"),
                "name": call["name"],
                "input": {},
            }
            event("content_block_start", index=block, content_block=start)
            # The real API opens each call's arguments with an empty piece.
            for piece in ["", *split_arguments(call["arguments"])]:
                event(
                    "content_block_delta",
                    index=block,
                    delta={"type": "input_json_delta", "partial_json": piece},
                )
            event("content_block_stop", index=block)
            block += 1
        if reply.stream_error is not None:
            kind = "rate_limit_error" if reply.stream_error == "rate_limit" else "overloaded_error"
            event("error", error={"type": kind, "message": reply.error_message})
            return out
        stop = _STOP[reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")]
        event("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": 7})
        event("message_stop")
        return out
