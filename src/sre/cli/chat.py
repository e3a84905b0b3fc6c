"""`sre chat`: an interactive terminal chat against a running SRE server over its HTTP API.

It creates a conversation (or resumes one), prints its id, then sends each line as a streamed turn
and prints the answer as it arrives. It talks HTTP like any other client; it holds no state.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx


class ChatError(Exception):
    pass


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise ChatError(f"{response.status_code}: {message}")
    body: dict[str, Any] = response.json()
    return body


def _text_of(item: dict[str, Any]) -> str:
    return "".join(p.get("text", "") for p in item.get("content", []) if isinstance(p, dict))


def chat_loop(
    *, base_url: str, api_key: str | None, conversation: str | None, model: str | None, compact: bool = False
) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    out = sys.stdout
    with httpx.Client(
        base_url=base_url.rstrip("/"), headers=headers, timeout=httpx.Timeout(300, connect=5)
    ) as http:
        try:
            if conversation is None:
                conversation = _check(http.post("/conversations", json={}))["id"]
                print(
                    f"New conversation {conversation} (resume it with: sre chat --conversation {conversation})",
                    file=out,
                )
            else:
                _check(http.get(f"/conversations/{conversation}"))
                recent = _check(http.get(f"/conversations/{conversation}/items", params={"limit": 6}))["data"]
                print(f"Resumed conversation {conversation}", file=out)
                for item in reversed(recent):
                    if item.get("type") == "message":
                        print(f"{item['role']}> {_text_of(item)}", file=out)
        except httpx.HTTPError as exc:
            raise ChatError(f"cannot reach {base_url}: {exc}") from None
        print("Type a message; /exit or Ctrl-D to leave.", file=out, flush=True)
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print(file=out)
                return
            if line.strip() in ("/exit", "/quit"):
                return
            if not line.strip():
                continue
            try:
                _turn(http, conversation, model, line, out, compact)
            except ChatError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
            except httpx.HTTPError as exc:
                raise ChatError(f"lost the connection to {base_url}: {exc}") from None


def _turn(
    http: httpx.Client, conversation: str, model: str | None, text: str, out: Any, compact: bool
) -> None:
    body: dict[str, Any] = {"input": text, "conversation": conversation, "stream": True, "truncation": "auto"}
    if model:
        body["model"] = model
    if compact:
        body["context_management"] = [{"type": "compaction"}]
    with http.stream("POST", "/responses", json=body) as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        print("assistant> ", end="", file=out, flush=True)
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            kind = event.get("type")
            if kind == "response.output_text.delta":
                print(event["delta"], end="", file=out, flush=True)
            elif kind == "response.output_item.done" and event["item"].get("type") == "function_call":
                print(f"[function call {event['item']['name']}]", end="", file=out)
            elif kind == "response.output_item.done" and event["item"].get("type") == "compaction":
                covers = event["item"].get("covers") or {}
                print(
                    f"[earlier turns summarised: {covers.get('items', '?')} items]",
                    end=" ",
                    file=out,
                    flush=True,
                )
            elif kind == "response.failed":
                error = (event.get("response") or {}).get("error") or {}
                print(file=out)
                raise ChatError(error.get("message", "the response failed"))
            elif kind == "error":
                print(file=out)
                raise ChatError(event.get("message", "error"))
        print(file=out, flush=True)
