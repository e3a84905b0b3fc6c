"""Agents in turns: `model: "agent:NAME"` (or `"agent:NAME@VERSION"`) read and folded into a request,
and the agent objects the API returns.

A turn for an agent runs on the agent's model with the agent's instructions, followed by the
request's own, and the agent's function tools merged with the request's (the request's win on a
name clash). An agent that does not exist for the caller's tenant is reported like an unknown
model: a 400 naming `model`. Reads go through the store; nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sre.store import Store
from sre.types.agents import MAX_AGENT_VERSION, NAME_PATTERN, AgentDefinition
from sre.types.errors import InvalidRequest, NotFound
from sre.types.lists import list_object
from sre.types.records import AgentVersion, Page
from sre.types.requests import CreateResponse, FunctionToolParam

AGENT_PREFIX = "agent:"
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class AgentRef:
    name: str
    version: int | None  # None: the newest version

    @property
    def model(self) -> str:
        """What a response reports as its `model`."""
        return AGENT_PREFIX + self.name


def is_agent_name(name: str) -> bool:
    return len(name) <= 64 and _NAME.fullmatch(name) is not None


def parse_agent_ref(model: str | None) -> AgentRef | None:
    """The agent a request's `model` names, or None for a plain model name."""
    if model is None or not model.startswith(AGENT_PREFIX):
        return None
    name, at, version = model[len(AGENT_PREFIX) :].partition("@")
    if not is_agent_name(name) or (at and not (version.isascii() and version.isdigit())):
        raise InvalidRequest(
            f"Invalid value for 'model': '{model}' is not an agent reference; use 'agent:NAME' or "
            "'agent:NAME@VERSION'.",
            param="model",
            code="invalid_value",
        )
    return AgentRef(name=name, version=int(version) if at else None)


_PARSED: dict[tuple[str, str, int], AgentDefinition] = {}  # versions never change: parse each once
_PARSED_SIZE = 256


def load_agent(store: Store, tenant_id: str, ref: AgentRef) -> tuple[AgentVersion, AgentDefinition]:
    """The agent version a turn runs with; a missing one is a 400 on `model`, like a missing model."""
    try:
        if ref.version is not None and not 1 <= ref.version <= MAX_AGENT_VERSION:
            raise NotFound(f"Agent '{ref.name}' has no version {ref.version}.")
        record = store.agents.get(tenant_id, ref.name, ref.version)
    except NotFound as exc:
        raise InvalidRequest(
            f"The model '{AGENT_PREFIX}{ref.name}{'' if ref.version is None else f'@{ref.version}'}' "
            f"does not exist: {exc.message}",
            param="model",
            code="model_not_found",
        ) from None
    key = (tenant_id, record.name, record.version)
    definition = _PARSED.get(key)
    if definition is None:
        definition = AgentDefinition.from_stored(record.name, record.definition)
        if len(_PARSED) >= _PARSED_SIZE:
            _PARSED.clear()
        _PARSED[key] = definition
    return record, definition


def apply_agent(request: CreateResponse, agent: AgentDefinition) -> CreateResponse:
    """The request as the agent runs it: its model, its instructions first, its tools merged."""
    instructions = "\n\n".join(part for part in (agent.instructions, request.instructions) if part)
    own = {tool.name for tool in request.tools or []}
    tools: list[FunctionToolParam] = [
        t for t in agent.tools if isinstance(t, FunctionToolParam) and t.name not in own
    ] + list(request.tools or [])
    return request.model_copy(
        update={
            "model": agent.model,
            "instructions": instructions or None,
            "tools": tools if tools else request.tools,
        }
    )


# -- the objects the API returns ------------------------------------------------------------------


def agent_object(record: AgentVersion) -> dict[str, Any]:
    definition = AgentDefinition.from_stored(record.name, record.definition)
    return {
        "id": record.name,
        "object": "agent",
        "name": record.name,
        "version": record.version,
        "created_at": record.created_at,
        "instructions": definition.instructions,
        "model": definition.model,
        "tools": [t.model_dump(exclude_none=True) for t in definition.tools],
        "metadata": definition.metadata,
        "limits": definition.limits.model_dump(),
        "approval": definition.approval.model_dump(),
        "concurrency": definition.concurrency,
        "context": definition.context.model_dump(),
        "compaction_model": definition.compaction_model,
    }


def agent_list(page: Page) -> dict[str, Any]:
    return list_object([agent_object(record) for record in page.data], page.has_more)


def agent_version_list(page: Page) -> dict[str, Any]:
    return list_object([agent_object(record) for record in page.data], page.has_more, cursor="version")
