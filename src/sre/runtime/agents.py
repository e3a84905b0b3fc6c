"""The runtime's agents: versioned definitions, validated against the configured models."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from functools import partial
from typing import Any

from sre.engine.agents import agent_list, agent_object, agent_version_list, is_agent_name
from sre.runtime.base import RuntimeParts, _coerce, _page_args
from sre.types.agents import AgentDefinition, UpdateAgent
from sre.types.errors import InvalidRequest, NotFound
from sre.types.records import AgentVersion, Caller


class AgentsAPI(RuntimeParts):
    def _with_model(self, definition: AgentDefinition) -> AgentDefinition:
        """The definition naming a configured model (the default one where it names none), its
        server-side and MCP tools checked against those configured."""
        self.tools.check(definition.tools)
        if definition.compaction_model is not None:
            self._compaction_model(definition.compaction_model)
        return definition.model_copy(update={"model": self.models.resolve(definition.model).name})

    def _compaction_model(self, name: str) -> None:
        try:
            self.models.resolve(name)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.message, param="compaction_model", code=exc.code) from None

    @staticmethod
    def _agent_name(name: str) -> str:
        if not is_agent_name(name):  # no agent can have this name
            raise NotFound(f"Agent '{name[:64]}' not found.", param="name")
        return name

    async def create_agent(
        self, caller: Caller, request: AgentDefinition | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Define a new agent (version 1); a deleted name starts again after its last version."""
        definition = self._with_model(_coerce(AgentDefinition, request))
        record = await asyncio.to_thread(
            partial(
                self.store.agents.create,
                caller.tenant_id,
                definition.name,
                definition.to_stored(),
                actor=caller.principal_id,
            )
        )
        return agent_object(record)

    async def get_agent(self, caller: Caller, name: str, *, version: int | None = None) -> dict[str, Any]:
        """The agent's newest version, or the given one."""
        record = await asyncio.to_thread(
            self.store.agents.get, caller.tenant_id, self._agent_name(name), version
        )
        return agent_object(record)

    async def update_agent(
        self, caller: Caller, name: str, request: UpdateAgent | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Write the agent's next version: the newest one with the given fields replaced."""
        name = self._agent_name(name)
        body = _coerce(UpdateAgent, request)
        if body.model is not None:
            self.models.resolve(body.model)  # refuse an unknown model before touching the store
        if body.tools is not None:
            self.tools.check(body.tools)
        if body.compaction_model is not None:
            self._compaction_model(body.compaction_model)

        def revise(current: AgentVersion) -> dict[str, Any]:
            latest = AgentDefinition.from_stored(current.name, current.definition)
            return self._with_model(body.revise(latest)).to_stored()

        record = await asyncio.to_thread(
            partial(self.store.agents.update, caller.tenant_id, name, revise, actor=caller.principal_id)
        )
        return agent_object(record)

    async def delete_agent(self, caller: Caller, name: str) -> dict[str, Any]:
        """Delete every version; the name may be created again."""
        await asyncio.to_thread(
            partial(
                self.store.agents.delete,
                caller.tenant_id,
                self._agent_name(name),
                actor=caller.principal_id,
            )
        )
        return {"id": name, "object": "agent.deleted", "deleted": True}

    async def list_agents(
        self, caller: Caller, *, after: str | None = None, limit: int = 20, order: str = "asc"
    ) -> dict[str, Any]:
        """The tenant's agents (newest version of each) by name; `after` is the last name seen."""
        _page_args(limit, order)
        if after is not None and not is_agent_name(after):
            raise InvalidRequest("Invalid value for 'after': expected an agent name.", param="after")
        page = await asyncio.to_thread(
            lambda: self.store.agents.list(caller.tenant_id, after=after, limit=limit, order=order)
        )
        return agent_list(page)

    async def list_agent_versions(
        self, caller: Caller, name: str, *, after: int | None = None, limit: int = 20, order: str = "desc"
    ) -> dict[str, Any]:
        """The agent's versions since it was last created; `after` is the last version seen."""
        _page_args(limit, order)
        name = self._agent_name(name)
        page = await asyncio.to_thread(
            lambda: self.store.agents.versions(caller.tenant_id, name, after=after, limit=limit, order=order)
        )
        return agent_version_list(page)
