"""One turn of a stateful conversation over a stateless model.

`prepare` validates the request and reads what the turn needs (the agent it names, if any, with its
tools, the previous response or the conversation, and the newest items that fit the model's window);
it writes nothing and raises a clear error for anything wrong. A durable turn (background, or an
agent's) then goes to the run engine (`sre.engine.runs`). A plain turn is one model call: `start`
drives the model in a task of its own, so a client that goes away does not lose the turn, and
commits the turn's input, output, response and model call record in one transaction before
announcing completion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sre.engine.agents import apply_agent, load_agent, parse_agent_ref
from sre.engine.assembler import Assembler, Event
from sre.engine.shapes import response_object, usage_object
from sre.models.base import ChatModel, FunctionTool, ModelRequest
from sre.models.config import ModelRegistry
from sre.store import Store, TurnCommit
from sre.tools.catalog import BoundTool, ToolCatalog
from sre.tools.registry import ToolRegistry
from sre.types.agents import AgentDefinition
from sre.types.errors import InvalidRequest, ModelError, SREError
from sre.types.ids import new_id
from sre.types.items import (
    FunctionCall,
    FunctionCallOutput,
    Message,
    estimate_tokens,
    item_from_json,
    parse_input_items,
)
from sre.types.records import AgentVersion, Caller, Lease, ModelCallRecord, ResponseRecord, Window
from sre.types.requests import CreateResponse

AnyItem = Message | FunctionCall | FunctionCallOutput
_DONE = object()
FINAL_EVENT = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
    # The Responses API has no `response.cancelled` event: a cancelled run ends with
    # `response.incomplete` whose response has status "cancelled" (the openai client parses it).
    "cancelled": "response.incomplete",
}


@dataclass
class PreparedTurn:
    caller: Caller
    request: CreateResponse
    model: ChatModel
    input_items: list[AnyItem]
    previous: ResponseRecord | None
    window: Window
    model_request: ModelRequest
    body: dict[str, Any]
    response_id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    reported_model: str | None = None  # what the response says it ran on ("agent:NAME"), if not the model
    completed_at: int | None = None
    counted: tuple[int, int, int, bool] | None = None  # input, cached, output tokens, exact
    agent: AgentVersion | None = None
    definition: AgentDefinition | None = None  # the agent's, when the request names one
    tools: dict[str, BoundTool] = field(default_factory=dict)  # the server-side tools it may call

    @property
    def durable(self) -> bool:
        """Run by the run engine (journal, lease, steps) rather than as one model call: background
        runs, and stored turns of an agent."""
        return bool(self.request.background) or (self.definition is not None and self.request.store)

    @property
    def model_label(self) -> str:
        return self.reported_model or self.model.name

    def manifest(self) -> dict[str, Any]:
        """What went into a model call of this turn: the window read from the store, and the rest."""
        window = self.window
        return {
            "window": {
                "first_item_id": window.items[0].id if window.items else None,
                "last_item_id": window.items[-1].id if window.items else None,
                "items": len(window.items),
                "tokens": window.tokens,
                "older_items_dropped": window.truncated,
            },
            "input_items": len(self.input_items),
            "instructions_chars": len(self.request.instructions or ""),
        }

    def commit(
        self,
        status: str,
        output: list[AnyItem],
        *,
        model_call: ModelCallRecord | None,
        run: tuple[Lease, list[dict[str, Any]]] | None = None,
        keep: bool | None = None,
    ) -> TurnCommit:
        """The turn's one transaction: its items (by default kept unless it failed or was cancelled),
        response and model call, and for a durable run its end."""
        return TurnCommit(
            tenant_id=self.caller.tenant_id,
            principal_id=self.caller.principal_id,
            response_id=self.response_id,
            model=self.model_label,
            status=status,
            body=self.body,
            created_at=self.created_at,
            completed_at=self.completed_at if status != "failed" else None,
            conversation_id=self.request.conversation_id,
            previous=self.previous,
            input_items=self.input_items,
            output_items=output,
            store=self.request.store,
            keep_items=status not in ("failed", "cancelled") if keep is None else keep,
            model_call=model_call,
            run=run,
        )

    def snapshot(
        self, status: str, output: list[dict[str, Any]], completed_at: int | None = None
    ) -> dict[str, Any]:
        return response_object(
            response_id=self.response_id,
            status=status,
            model=self.model_label,
            created_at=self.created_at,
            body=self.body,
            output=output,
            previous_response_id=self.request.previous_response_id,
            conversation_id=self.request.conversation_id,
            completed_at=completed_at,
        )


def _body(request: CreateResponse) -> dict[str, Any]:
    tools = [t.model_dump(exclude_none=True) for t in request.tools or []]
    choice = request.tool_choice
    return {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "parallel_tool_calls": True if request.parallel_tool_calls is None else request.parallel_tool_calls,
        "store": request.store,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "tool_choice": choice.model_dump()
        if choice is not None and not isinstance(choice, str)
        else (choice or "auto"),
        "tools": tools,
        "truncation": request.truncation or "disabled",
        "metadata": request.metadata or {},
    }


def count_usage(model: ChatModel, request: ModelRequest, assembler: Assembler) -> tuple[int, int, int, bool]:
    """Input, cached and output tokens of one model call, and whether they are exact: the
    upstream's report if it sent one, else the model's tokenizer, else an estimate."""
    usage = assembler.usage
    if usage is not None:
        return usage.input_tokens, usage.cached_tokens, usage.output_tokens, usage.exact
    counted = model.count_tokens(request)
    tokenizer = model.tokenizer()
    text = assembler.output_text()
    output = tokenizer.count(text) if tokenizer is not None else (len(text) + 3) // 4
    return counted.tokens, 0, output, counted.exact


def _check_tool_outputs(items: list[AnyItem], window: Window) -> None:
    """Every function_call_output must answer a function call the model made (OpenAI's rule)."""
    known = {i.data.get("call_id") for i in window.items if i.type == "function_call"}
    for index, item in enumerate(items):
        if isinstance(item, FunctionCall):
            known.add(item.call_id)
        elif isinstance(item, FunctionCallOutput) and item.call_id not in known:
            raise InvalidRequest(
                f"No tool call found for function call output with call_id {item.call_id}.",
                param=f"input[{index}].call_id",
            )


class TurnEngine:
    def __init__(self, store: Store, models: ModelRegistry, tools: ToolCatalog | None = None) -> None:
        self.store = store
        self.models = models
        self.tools = tools if tools is not None else ToolCatalog(ToolRegistry())
        self._tasks: set[asyncio.Task[None]] = set()

    async def prepare(self, caller: Caller, request: CreateResponse) -> PreparedTurn:
        if request.background and not request.store:
            raise InvalidRequest(
                "Background responses must be stored: send 'store': true (the default) with 'background'.",
                param="store",
            )
        if request.conversation is not None and request.previous_response_id is not None:
            raise InvalidRequest(
                "'previous_response_id' and 'conversation' cannot be used together.", param="conversation"
            )
        ref = parse_agent_ref(request.model)
        agent: AgentVersion | None = None
        definition: AgentDefinition | None = None
        bound: dict[str, BoundTool] = {}
        if ref is not None:  # an agent's turn is a plain request once its definition is folded in
            loaded, found = await asyncio.to_thread(load_agent, self.store, caller.tenant_id, ref)
            agent, definition = loaded, found
            request = apply_agent(request, found)
            server_refs = [t for t in found.tools if t.type != "function"]
            if server_refs and not request.store:
                raise InvalidRequest(
                    f"Agent '{found.name}' has server-side tools, so its runs are stored: send "
                    "'store': true (the default).",
                    param="store",
                )
            bound = await self.tools.resolve(server_refs)
            for index, tool in enumerate(request.tools or []):
                if tool.name in bound:
                    raise InvalidRequest(
                        f"Invalid value for 'tools[{index}].name': '{tool.name}' is one of agent "
                        f"'{found.name}''s server-side tools.",
                        param=f"tools[{index}].name",
                        code="duplicate_tool",
                    )
        try:
            model = self.models.resolve(request.model)
        except InvalidRequest:
            if agent is None:
                raise
            raise InvalidRequest(
                f"Agent '{agent.name}' (version {agent.version}) runs on model '{request.model}', "
                "which is not configured here.",
                param="model",
                code="model_not_found",
            ) from None
        items = parse_input_items(request.input)
        reserve = request.max_output_tokens or min(4096, model.info.context_window // 4)
        fixed = sum(estimate_tokens(i) for i in items) + (len(request.instructions or "") + 3) // 4
        budget = model.info.context_window - reserve - fixed
        if budget < 0:
            raise InvalidRequest(
                f"The input ({fixed} tokens) and the reserved output ({reserve}) exceed the context window "
                f"of model '{model.name}' ({model.info.context_window} tokens).",
                param="input",
                code="context_length_exceeded",
            )
        previous, window = await asyncio.to_thread(self._read_state, caller, request, budget)
        if window.truncated and request.truncation != "auto":
            raise InvalidRequest(
                f"The conversation exceeds the context window of model '{model.name}'. Send "
                "truncation='auto' to drop the oldest items.",
                param="input",
                code="context_length_exceeded",
            )
        _check_tool_outputs(items, window)
        history = [item_from_json(i.raw) for i in window.items]
        model_request = ModelRequest(
            items=history + items,
            instructions=request.instructions,
            tools=[
                FunctionTool(name=t.name, description=t.description, parameters=t.parameters, strict=t.strict)
                for t in request.tools or []
            ]
            + [
                FunctionTool(name=b.spec.name, description=b.spec.description, parameters=b.spec.parameters)
                for b in bound.values()
            ],
            tool_choice=request.tool_choice.model_dump()
            if request.tool_choice is not None and not isinstance(request.tool_choice, str)
            else request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            temperature=request.temperature,
            top_p=request.top_p,
            max_output_tokens=request.max_output_tokens,
        )
        body = _body(request)
        if request.background:
            body["background"] = True
        if agent is not None:
            body["agent"] = {"name": agent.name, "version": agent.version}
        return PreparedTurn(
            caller=caller,
            request=request,
            model=model,
            input_items=items,
            previous=previous,
            window=window,
            model_request=model_request,
            body=body,
            reported_model=None if ref is None else ref.model,
            agent=agent,
            definition=definition,
            tools=bound,
        )

    def _read_state(
        self, caller: Caller, request: CreateResponse, budget: int
    ) -> tuple[ResponseRecord | None, Window]:
        previous = None
        if request.previous_response_id is not None:
            previous = self.store.responses.get(
                caller.tenant_id, request.previous_response_id, param="previous_response_id"
            )
        window = self.store.responses.context(caller.tenant_id, request.conversation_id, previous, budget)
        return previous, window

    # -- running ------------------------------------------------------------------------------

    def start(self, turn: PreparedTurn, *, events: bool) -> asyncio.Queue[Any]:
        """Run the turn in its own task; its events (and finally a result) arrive on the queue."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.create_task(self._drive(turn, queue, events=events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return queue

    async def stream(self, turn: PreparedTurn) -> AsyncIterator[Event]:
        queue = self.start(turn, events=True)
        last = -1
        while True:
            event = await queue.get()
            if event is _DONE:
                return
            if isinstance(event, dict):
                last = event["sequence_number"]
                yield event
            elif isinstance(event, SREError):  # the turn could not be committed: say so, last
                yield {
                    "type": "error",
                    "code": event.code or event.error_type,
                    "message": event.message,
                    "param": event.param,
                    "sequence_number": last + 1,
                }

    async def respond(self, turn: PreparedTurn) -> dict[str, Any]:
        queue = self.start(turn, events=False)
        final: dict[str, Any] | None = None
        while True:
            event = await queue.get()
            if event is _DONE:
                break
            if isinstance(event, SREError):
                raise event
            final = event["response"]
        assert final is not None
        return final

    async def _drive(self, turn: PreparedTurn, queue: asyncio.Queue[Any], *, events: bool) -> None:
        sequence = 0

        def emit(event: Event) -> None:
            nonlocal sequence
            if events or event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                queue.put_nowait({**event, "sequence_number": sequence})
                sequence += 1

        try:
            await self._run(turn, emit, events=events, queue=queue)
        except Exception as exc:  # the task must always end the queue
            error = (
                exc
                if isinstance(exc, SREError)
                else ModelError(f"internal error: {type(exc).__name__}: {exc}")
            )
            queue.put_nowait(error)
        finally:
            queue.put_nowait(_DONE)

    async def _run(
        self,
        turn: PreparedTurn,
        emit: Any,
        *,
        events: bool,
        queue: asyncio.Queue[Any] | None = None,
    ) -> None:
        """Stream the model into events and commit (a one-step turn; durable runs are `RunEngine`'s)."""
        assembler = Assembler(events=events)
        if events:
            emit({"type": "response.created", "response": turn.snapshot("in_progress", [])})
            emit({"type": "response.in_progress", "response": turn.snapshot("in_progress", [])})
        started = time.perf_counter()
        error: SREError | None = None
        try:
            stream = turn.model.stream(turn.model_request)
            try:
                async for model_event in stream:
                    for event in assembler.feed(model_event):
                        emit(event)
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
        except SREError as exc:
            error = exc
        except Exception as exc:
            error = ModelError(
                f"model '{turn.model.name}' failed: {type(exc).__name__}: {exc}", code="model_error"
            )
        latency_ms = (time.perf_counter() - started) * 1000
        status = "failed" if error else "completed"
        if (
            status == "completed"
            and assembler.finish is not None
            and assembler.finish.reason in ("length", "content_filter")
        ):
            status = "incomplete"
        for event in assembler.close("completed" if status != "failed" else "incomplete"):
            emit(event)
        final_type = FINAL_EVENT[status]
        record = await asyncio.to_thread(self._commit, turn, assembler, status, error, latency_ms)
        emit({"type": final_type, "response": record})
        if error is not None and not events and queue is not None:
            queue.put_nowait(error)

    def _finish_body(
        self, turn: PreparedTurn, assembler: Assembler, status: str, error: SREError | None
    ) -> dict[str, Any]:
        """Set the turn's final body (usage, error, incomplete details) and return its snapshot."""
        if turn.counted is None:
            turn.counted = count_usage(turn.model, turn.model_request, assembler)
            input_tokens, cached_tokens, output_tokens, _ = turn.counted
            body = dict(turn.body)
            body["usage"] = usage_object(input_tokens, output_tokens, cached_tokens)
            if status == "incomplete" and assembler.finish is not None:
                reason = "max_output_tokens" if assembler.finish.reason == "length" else "content_filter"
                body["incomplete_details"] = {"reason": reason}
            if error is not None:
                body["error"] = {"code": error.code or "server_error", "message": error.message}
            turn.body = body
            turn.completed_at = int(time.time())
        output = assembler.items() if status not in ("failed", "cancelled") else []
        return turn.snapshot(
            status,
            [i.model_dump(mode="json", exclude_none=True) for i in output],
            turn.completed_at if status != "failed" else None,
        )

    def _commit(
        self,
        turn: PreparedTurn,
        assembler: Assembler,
        status: str,
        error: SREError | None,
        latency_ms: float,
    ) -> dict[str, Any]:
        snapshot = self._finish_body(turn, assembler, status, error)
        assert turn.counted is not None
        input_tokens, cached_tokens, output_tokens, exact = turn.counted
        pricing = turn.model.info.pricing
        cost = None if pricing is None else pricing.cost(input_tokens, output_tokens, cached_tokens)
        now = turn.completed_at or int(time.time())
        call = ModelCallRecord(
            tenant_id=turn.caller.tenant_id,
            id=new_id("mc"),
            response_id=turn.response_id if turn.request.store else None,
            principal_id=turn.caller.principal_id,
            model=turn.model.name,
            provider=turn.model.info.provider,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            tokens_exact=exact,
            cost_usd=cost,
            latency_ms=latency_ms,
            manifest=turn.manifest(),
            error=None if error is None else error.message,
            created_at=now,
        )
        output: list[AnyItem] = list(assembler.items()) if status not in ("failed", "cancelled") else []
        self.store.responses.commit_turn(turn.commit(status, output, model_call=call))
        # Output ids were assigned before streaming and the store keeps them, so the snapshot matches.
        return snapshot

    async def aclose(self) -> None:
        """Let running turns finish (they commit), up to a bound, then cancel the rest."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()
