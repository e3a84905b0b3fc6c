"""The model's output stream, assembled: output items and OpenAI streaming events.

`OutputAssembler` is fed a model call's `ModelEvent`s in order and keeps the output items the step
will store; when asked, it also produces the Responses streaming events for them (item added,
deltas, done). (What goes *into* a model call is `sre.context`'s business.) Pure bookkeeping: no
I/O, no store.
"""

from __future__ import annotations

from typing import Any

from sre.models.base import Finish, ModelEvent, TextDelta, ToolCallDelta, Usage
from sre.types.ids import new_id
from sre.types.items import FunctionCall, Message, OutputText

Event = dict[str, Any]


class _Text:
    def __init__(self, output_index: int) -> None:
        self.id = new_id("msg")
        self.output_index = output_index
        self.parts: list[str] = []

    def item(self, status: str) -> dict[str, Any]:
        text = "".join(self.parts)
        content = (
            [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            if status != "in_progress"
            else []
        )
        return {"id": self.id, "type": "message", "status": status, "role": "assistant", "content": content}


class _Call:
    def __init__(self, output_index: int, call_id: str, name: str) -> None:
        self.id = new_id("fc")
        self.output_index = output_index
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []

    def item(self, status: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": "".join(self.arguments),
        }


class OutputAssembler:
    def __init__(self, *, events: bool, offset: int = 0) -> None:
        self.want_events = events
        self.offset = offset  # output items before this model call's (earlier steps of a run)
        self.outputs: list[_Text | _Call] = []
        self.calls: dict[int, _Call] = {}
        self.open_text: _Text | None = None
        self.usage: Usage | None = None
        self.finish: Finish | None = None

    def feed(self, event: ModelEvent) -> list[Event]:
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, ToolCallDelta):
            return self._call(event)
        if isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Finish):
            self.finish = event
        return []

    def _text(self, delta: str) -> list[Event]:
        out: list[Event] = []
        if self.open_text is None:
            self.open_text = _Text(self.offset + len(self.outputs))
            self.outputs.append(self.open_text)
            if self.want_events:
                out.append(self._added(self.open_text.output_index, self.open_text.item("in_progress")))
                out.append(
                    {
                        "type": "response.content_part.added",
                        "item_id": self.open_text.id,
                        "output_index": self.open_text.output_index,
                        "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                    }
                )
        self.open_text.parts.append(delta)
        if self.want_events:
            out.append(
                {
                    "type": "response.output_text.delta",
                    "item_id": self.open_text.id,
                    "output_index": self.open_text.output_index,
                    "content_index": 0,
                    "delta": delta,
                    "logprobs": [],
                }
            )
        return out

    def _call(self, delta: ToolCallDelta) -> list[Event]:
        out: list[Event] = []
        call = self.calls.get(delta.index)
        if call is None:
            out.extend(self._close_text())
            call = _Call(self.offset + len(self.outputs), delta.call_id or new_id("call"), delta.name or "")
            self.calls[delta.index] = call
            self.outputs.append(call)
            if self.want_events:
                out.append(self._added(call.output_index, call.item("in_progress")))
        elif delta.name and not call.name:
            call.name = delta.name
        if delta.arguments:
            call.arguments.append(delta.arguments)
            if self.want_events:
                out.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": call.id,
                        "output_index": call.output_index,
                        "delta": delta.arguments,
                    }
                )
        return out

    @staticmethod
    def _added(output_index: int, item: dict[str, Any]) -> Event:
        return {"type": "response.output_item.added", "output_index": output_index, "item": item}

    def _close_text(self) -> list[Event]:
        text, self.open_text = self.open_text, None
        if text is None or not self.want_events:
            return []
        full = "".join(text.parts)
        part = {"type": "output_text", "text": full, "annotations": [], "logprobs": []}
        common = {"item_id": text.id, "output_index": text.output_index, "content_index": 0}
        return [
            {"type": "response.output_text.done", **common, "text": full, "logprobs": []},
            {"type": "response.content_part.done", **common, "part": part},
            {
                "type": "response.output_item.done",
                "output_index": text.output_index,
                "item": text.item("completed"),
            },
        ]

    def close(self, status: str) -> list[Event]:
        """Finish every open item; `status` is the items' final status."""
        out = self._close_text()
        if not self.want_events:
            return out
        for call in self.calls.values():
            out.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": call.id,
                    "output_index": call.output_index,
                    "name": call.name,
                    "arguments": "".join(call.arguments),
                }
            )
            out.append(
                {
                    "type": "response.output_item.done",
                    "output_index": call.output_index,
                    "item": call.item(status),
                }
            )
        return out

    def output_text(self) -> str:
        """Everything the model produced, as text: what its output tokens were spent on."""
        return "".join(
            "".join(entry.parts) if isinstance(entry, _Text) else entry.name + "".join(entry.arguments)
            for entry in self.outputs
        )

    def has_calls(self) -> bool:
        return bool(self.calls)

    def items(self) -> list[Message | FunctionCall]:
        """The output as validated items, ids included, ready to store."""
        out: list[Message | FunctionCall] = []
        for entry in self.outputs:
            if isinstance(entry, _Text):
                out.append(
                    Message(id=entry.id, role="assistant", content=[OutputText(text="".join(entry.parts))])
                )
            else:
                out.append(
                    FunctionCall(
                        id=entry.id,
                        call_id=entry.call_id,
                        name=entry.name or "unknown",
                        arguments="".join(entry.arguments),
                    )
                )
        return out
