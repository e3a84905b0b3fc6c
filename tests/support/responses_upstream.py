"""A small real HTTP server on loopback that speaks OpenAI's Responses wire format, streaming.

It serves `POST /v1/responses` with the server-sent events the real API sends (`response.created`,
output items, text and argument deltas, `response.completed` / `response.incomplete`, `error`),
shaped like the `openai` package's types, from queued `Reply`s; it records what it received.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.support.upstream import Reply, Stream, WireUpstream, split_arguments, split_words

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponsesUpstream(WireUpstream):
    endpoint = "/responses"

    def echo(self, body: dict[str, Any]) -> Reply:
        users = [i for i in body.get("input", []) if isinstance(i, dict) and i.get("role") == "user"]
        content = users[-1]["content"] if users else ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content)
        return Reply(text=f"echo: {content}")

    def error_body(self, reply: Reply) -> dict[str, Any]:
        kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(reply.status, "server_error")
        return {"error": {"message": reply.error_message, "type": kind, "param": None, "code": None}}

    def stream(self, reply: Reply, body: dict[str, Any]) -> Stream:
        out = Stream([])
        sequence = 0

        def event(kind: str, **fields: Any) -> None:
            nonlocal sequence
            payload = {"type": kind, "sequence_number": sequence, **fields}
            sequence += 1
            out.chunks.append(f"event: {kind}\ndata: {json.dumps(payload)}\n\n")

        response: dict[str, Any] = {
            "id": "resp_fake",
            "object": "response",
            "created_at": time.time(),
            "model": body.get("model", "fake"),
            "status": "in_progress",
            "output": [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "store": False,
            "error": None,
            "incomplete_details": None,
        }
        event("response.created", response=response)
        event("response.in_progress", response=response)
        if reply.malformed:
            out.chunks.append("event: response.output_text.delta\ndata: {this is not json\n\n")
        output: list[dict[str, Any]] = []
        if reply.text:
            item_id = "msg_fake"
            item = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            where = {"item_id": item_id, "output_index": len(output), "content_index": 0}
            event("response.output_item.added", output_index=len(output), item=item)
            part = {"type": "output_text", "text": "", "annotations": []}
            event("response.content_part.added", **where, part=part)
            out.first_text = len(out.chunks)
            for piece in split_words(reply.text):
                event("response.output_text.delta", **where, delta=piece, logprobs=[])
            event("response.output_text.done", **where, text=reply.text, logprobs=[])
            event("response.content_part.done", **where, part={**part, "text": reply.text})
            item = {**item, "status": "completed", "content": [{**part, "text": reply.text}]}
            event("response.output_item.done", output_index=len(output), item=item)
            output.append(item)
        for i, call in enumerate(reply.tool_calls):
            item_id = f"fc_fake_{i}"
            item = {
                "id": item_id,
                "type": "function_call",
                "status": "in_progress",
                "call_id": call.get("id", f"call_{i}_{int(time.time() * 1000)}"),
                "name": call["name"],
                "arguments": "",
            }
            index = len(output)
            event("response.output_item.added", output_index=index, item=item)
            for piece in split_arguments(call["arguments"]):
                event(
                    "response.function_call_arguments.delta", item_id=item_id, output_index=index, delta=piece
                )
            arguments = call["arguments"]
            event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=arguments,
            )
            item = {**item, "status": "completed", "arguments": arguments}
            event("response.output_item.done", output_index=index, item=item)
            output.append(item)
        if reply.stream_error is not None:
            code = "rate_limit_exceeded" if reply.stream_error == "rate_limit" else "server_error"
            event("error", code=code, message=reply.error_message, param=None)
            return out
        total = (
            reply.input_tokens if reply.input_tokens is not None else len(json.dumps(body.get("input"))) // 4
        )
        usage = {
            "input_tokens": total,
            "input_tokens_details": {"cached_tokens": reply.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": total + 7,
        }
        final = {**response, "output": output, "usage": usage}
        reason = _INCOMPLETE.get(reply.finish_reason or "")
        if reason is None:
            event("response.completed", response={**final, "status": "completed"})
        else:
            final.update(status="incomplete", incomplete_details={"reason": reason})
            event("response.incomplete", response=final)
        return out
