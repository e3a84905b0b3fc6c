"""A turn, prepared: the request validated and everything it needs read, before anything is written.

`TurnEngine.prepare` checks the request, folds in the agent it names (its model, instructions, tools
and context policy), resolves the model and the server-side tools, reads the previous response or the
conversation's newest items (down to its newest compaction item) and assembles the first model call's
context once, so a turn that cannot fit the model's window is a 400 before anything is stored. It
raises a clear error for anything wrong. The `PreparedTurn` then runs through the run engine
(`sre.engine.runs`): durably (background, or an agent's stored turn) or as a plain turn.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from sre.context import (
    AssembledContext,
    CompactionResult,
    ContextAssembler,
    ContextDefaults,
    ContextRequest,
    TurnContext,
    output_reserve,
    summary_message,
    turn_policy,
)
from sre.engine.agents import AgentRef, apply_agent, load_agent, parse_agent_ref
from sre.engine.shapes import response_object
from sre.models.base import ChatModel, FunctionTool, ModelRequest, format_tools, tool_dicts
from sre.models.config import ModelRegistry
from sre.store import Store, TurnCommit
from sre.tools.catalog import BoundTool, ToolCatalog
from sre.types.agents import AgentDefinition
from sre.types.audit import AuditEvent
from sre.types.context import ContextPolicy
from sre.types.errors import InvalidRequest, PermissionDenied
from sre.types.formats import TEXT, TextFormat
from sre.types.ids import new_id
from sre.types.items import (
    ID_PREFIX,
    AnyItem,
    Compaction,
    FunctionCall,
    FunctionCallOutput,
    ModelItem,
    parse_input_items,
)
from sre.types.records import AgentVersion, Caller, ResponseRecord, Window
from sre.types.requests import CreateResponse
from sre.types.status import CANCELLED, FAILED


def model_denial(caller: Caller, model: str, agent: AgentVersion | None) -> AuditEvent:
    return AuditEvent(
        action="access.denied",
        resource_type="model",
        resource_id=model,
        actor=caller.principal_id,
        outcome="denied",
        agent=agent.name if agent is not None else None,
        agent_version=agent.version if agent is not None else None,
        details={"reason": "model_not_granted"},
    )


def runs_durably(request: CreateResponse, definition: AgentDefinition | None) -> bool:
    """Background turns, and stored turns of an agent, run durably (journal, lease, steps); the
    rest are plain turns."""
    return bool(request.background) or (definition is not None and request.store)


@dataclass
class PreparedTurn:
    caller: Caller
    request: CreateResponse  # the agent's definition folded in
    model: ChatModel
    input_items: list[AnyItem]  # ids assigned
    previous: ResponseRecord | None
    window: Window
    body: dict[str, Any]
    policy: ContextPolicy
    tools: list[FunctionTool]  # what the model is offered: client-side functions, then server-side
    original: CreateResponse  # as the client sent it (what a durable run is queued with)
    response_id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    reported_model: str | None = None  # what the response says it ran on ("agent:NAME"), if not the model
    completed_at: int | None = None
    agent: AgentVersion | None = None
    definition: AgentDefinition | None = None  # the agent's, when the request names one
    bound: dict[str, BoundTool] = field(default_factory=dict)  # the server-side tools it may call
    request_instructions: str | None = None  # the request's own, before the agent's were folded in
    compaction_model: ChatModel | None = None  # set when the policy compacts
    prepared: AssembledContext | None = None  # the first call's context, assembled by `prepare`
    text_format: TextFormat = TEXT  # what the final text must be (`text.format`)

    @property
    def durable(self) -> bool:
        """Run by the run engine durably (journal, lease, steps) rather than as one model call:
        background runs, and stored turns of an agent."""
        return runs_durably(self.request, self.definition)

    @property
    def model_label(self) -> str:
        return self.reported_model or self.model.name

    @property
    def agent_instructions(self) -> str | None:
        return self.definition.instructions if self.definition is not None else None

    def context_of(self, run_items: list[ModelItem], step: int) -> TurnContext:
        return TurnContext(
            caller=self.caller,
            agent=self.agent,
            definition=self.definition,
            conversation_id=self.request.conversation_id,
            window=self.window,
            input_items=self.input_items,
            run_items=run_items,
            agent_instructions=self.agent_instructions,
            request_instructions=self.request_instructions,
            now=time.time(),
            step=step,
            counter=self.model.prompt_counter(),
        )

    async def assemble(
        self,
        context: ContextAssembler,
        run_items: list[ModelItem],
        step: int,
        made: CompactionResult | None,
        *,
        check: bool = False,
    ) -> AssembledContext:
        """A model call's context: the prepared one for a first call that nothing has changed since,
        else assembled now (compacting when the policy says so, unless this is `prepare`'s check)."""
        if self.prepared is not None and not run_items and made is None and self.compaction_model is None:
            return self.prepared
        truncation = self.request.truncation or "disabled"
        if check and self.compaction_model is not None:
            truncation = "auto"  # the step will compact; nothing to refuse yet
        request = ContextRequest(
            model=self.model,
            policy=self.policy,
            max_output_tokens=self.request.max_output_tokens,
            tools=self.tools + format_tools(self.text_format),
            truncation=truncation,
            compaction_model=None if check else self.compaction_model,
            response_id=self.response_id,
            made=made,
        )
        return await context.assemble(self.context_of(run_items, step), request)

    def model_request(self, items: list[ModelItem], instructions: str | None) -> ModelRequest:
        request = self.request
        return ModelRequest(
            items=items,
            instructions=instructions,
            tools=self.tools,
            tool_choice=request.tool_choice.model_dump()
            if request.tool_choice is not None and not isinstance(request.tool_choice, str)
            else request.tool_choice,
            parallel_tool_calls=request.parallel_tool_calls,
            temperature=request.temperature,
            top_p=request.top_p,
            max_output_tokens=request.max_output_tokens,
            text_format=self.text_format,
        )

    def commit(
        self,
        status: str,
        output: list[AnyItem],
        *,
        model_calls: list[Any],
        keep: bool | None = None,
    ) -> TurnCommit:
        """The turn's one transaction: its items (by default kept unless it failed or was cancelled),
        response and model calls (a durable run's ledger adds the run's end)."""
        return TurnCommit(
            tenant_id=self.caller.tenant_id,
            principal_id=self.caller.principal_id,
            response_id=self.response_id,
            model=self.model_label,
            status=status,
            body=self.body,
            created_at=self.created_at,
            completed_at=self.completed_at if status != FAILED else None,
            conversation_id=self.request.conversation_id,
            previous=self.previous,
            input_items=self.input_items,
            output_items=output,
            store=self.request.store,
            keep_items=status not in (FAILED, CANCELLED) if keep is None else keep,
            model_calls=model_calls,
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
        "text": _text(request),
    }


def _text(request: CreateResponse) -> dict[str, Any]:
    """`text` as the response echoes it: the format (plain text unless asked), and a verbosity sent."""
    out: dict[str, Any] = {"format": request.text_format.to_dict()}
    if request.text is not None and request.text.verbosity is not None:
        out["verbosity"] = request.text.verbosity
    return out


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


def _function_tools(request: CreateResponse) -> list[FunctionTool]:
    return [
        FunctionTool(name=t.name, description=t.description, parameters=t.parameters, strict=t.strict)
        for t in request.tools or []
    ]


def _with_ids(items: list[AnyItem]) -> list[AnyItem]:
    """The input with the ids it will be stored under (a manifest and a cut marker name them)."""
    return [
        item if item.id else item.model_copy(update={"id": new_id(ID_PREFIX[item.type])}) for item in items
    ]


class TurnEngine:
    def __init__(
        self,
        store: Store,
        models: ModelRegistry,
        tools: ToolCatalog,
        context: ContextAssembler,
        defaults: ContextDefaults | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.tools = tools
        self.context = context
        self.defaults = defaults if defaults is not None else ContextDefaults()

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
        original = request
        ref = parse_agent_ref(request.model)
        loaded = await asyncio.to_thread(self._load, caller, request, ref)  # one trip to the store
        agent, definition, request, model, items, previous, window = loaded
        bound: dict[str, BoundTool] = {}
        if definition is not None:
            bound = await self.tools.resolve([t for t in definition.tools if t.type != "function"])
            for index, tool in enumerate(request.tools or []):
                if tool.name in bound:
                    raise InvalidRequest(
                        f"Invalid value for 'tools[{index}].name': '{tool.name}' is one of agent "
                        f"'{definition.name}''s server-side tools.",
                        param=f"tools[{index}].name",
                        code="duplicate_tool",
                    )
        policy = turn_policy(
            definition.context if definition is not None else None, self.defaults, request.context_management
        )
        compaction_model = self._compaction_model(policy, definition, agent)
        tools = _function_tools(request) + [
            FunctionTool(name=b.spec.name, description=b.spec.description, parameters=b.spec.parameters)
            for b in bound.values()
        ]
        _check_tool_outputs(items, window)
        body = _body(request)
        if request.background:
            body["background"] = True
        if agent is not None:
            body["agent"] = {"name": agent.name, "version": agent.version}
        turn = PreparedTurn(
            caller=caller,
            request=request,
            model=model,
            input_items=items,
            previous=previous,
            window=window,
            body=body,
            policy=policy,
            tools=tools,
            reported_model=None if ref is None else ref.model,
            agent=agent,
            definition=definition,
            bound=bound,
            original=original,
            request_instructions=original.instructions,
            compaction_model=compaction_model,
            text_format=request.text_format,
        )
        turn.prepared = await turn.assemble(self.context, [], 0, None, check=True)
        return turn

    def _load(
        self, caller: Caller, request: CreateResponse, ref: AgentRef | None
    ) -> tuple[
        AgentVersion | None,
        AgentDefinition | None,
        CreateResponse,
        ChatModel,
        list[AnyItem],
        ResponseRecord | None,
        Window,
    ]:
        """Everything a turn reads, in one worker thread: the agent it names (folded into the
        request), its model, its input, and the previous response or the conversation's window."""
        agent: AgentVersion | None = None
        definition: AgentDefinition | None = None
        if ref is not None:  # an agent's turn is a plain request once its definition is folded in
            agent, definition = load_agent(self.store, caller.tenant_id, ref)
            request = apply_agent(request, definition)
            if any(t.type != "function" for t in definition.tools) and not request.store:
                raise InvalidRequest(
                    f"Agent '{definition.name}' has server-side tools, so its runs are stored: send "
                    "'store': true (the default).",
                    param="store",
                )
        model = self._model(request.model, agent)
        if not caller.grants.allows_model(model.name):
            self.store.audit.append(caller.tenant_id, [model_denial(caller, model.name, agent)])
            raise PermissionDenied(
                f"Model '{model.name}' is not granted to this principal.", param="model", code="not_granted"
            )
        items = _with_ids(parse_input_items(request.input))
        model.prompt_counter()  # made here: a local model loads its tokenizer off the event loop
        # The read's bound counts the server-side tools of the registry, not those of MCP servers
        # (listed later, over their connections): the assembler counts them all.
        tools = _function_tools(request) + [
            FunctionTool(name=r.spec.name, description=r.spec.description, parameters=r.spec.parameters)
            for ref_ in (definition.tools if definition is not None else [])
            if ref_.type == "server" and (r := self.tools.registry.tools.get(ref_.name)) is not None
        ]
        # A plain turn cannot wait behind a run on its conversation: read whether one is active too.
        bound = self._read_bound(model, request, items, tools + format_tools(request.text_format))
        previous, window = self._read_state(
            caller, request, bound, busy=not runs_durably(request, definition)
        )
        return agent, definition, request, model, items, previous, window

    def _model(self, name: str | None, agent: AgentVersion | None) -> ChatModel:
        try:
            return self.models.resolve(name)
        except InvalidRequest:
            if agent is None:
                raise
            raise InvalidRequest(
                f"Agent '{agent.name}' (version {agent.version}) runs on model '{name}', "
                "which is not configured here.",
                param="model",
                code="model_not_found",
            ) from None

    def _compaction_model(
        self, policy: ContextPolicy, definition: AgentDefinition | None, agent: AgentVersion | None
    ) -> ChatModel | None:
        if not policy.compaction:
            return None
        name = (
            definition.compaction_model if definition is not None else None
        ) or self.defaults.compaction_model
        try:
            return self.models.resolve(name)
        except InvalidRequest:
            where = f"agent '{agent.name}' (version {agent.version})" if agent is not None else "the server"
            raise InvalidRequest(
                f"The compaction model '{name}' of {where} is not configured here.",
                param="model",
                code="model_not_found",
            ) from None

    @staticmethod
    def _read_bound(
        model: ChatModel, request: CreateResponse, items: list[AnyItem], tools: list[FunctionTool]
    ) -> int:
        """How much history to read, in the store's estimates: what could fit once the required parts
        are in (with room to spare for a tokenizer that counts fewer tokens than the estimate)."""
        counter = model.prompt_counter()
        window = model.info.context_window
        required = (
            counter.base + counter.tools(tool_dicts(tools)) + counter.instructions(request.instructions)
        )
        for item in items:  # a tool output may be cut down to a marker: count that much of it
            tokens = counter.item(summary_message(item) if isinstance(item, Compaction) else item)
            required += min(tokens, 64) if isinstance(item, FunctionCallOutput) else tokens
        room = max(0, window - output_reserve(window, request.max_output_tokens) - required)
        return room if not counter.exact else room + room // 2

    def _read_state(
        self, caller: Caller, request: CreateResponse, budget: int, *, busy: bool = False
    ) -> tuple[ResponseRecord | None, Window]:
        previous = None
        if request.previous_response_id is not None:
            previous = self.store.responses.get(
                caller.tenant_id,
                request.previous_response_id,
                param="previous_response_id",
                viewer=caller.viewer,
                write=True,
            )
        window = self.store.responses.context(
            caller.tenant_id, request.conversation_id, previous, budget, busy=busy, viewer=caller.viewer
        )
        return previous, window
