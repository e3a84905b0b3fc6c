"""The `Runtime`: the whole system in-process, and the only door the API, CLI and users go through.

Each method takes the `Caller` (tenant and principal) and returns OpenAI-shaped dicts, so the
HTTP layer only parses and serialises. Store work runs in worker threads; model calls run on the
event loop. No business rule lives outside this facade and the layers beneath it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import struct
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sre.engine.agents import agent_list, agent_object, agent_version_list, is_agent_name
from sre.engine.background import BackgroundRuns, WorkerPool
from sre.engine.shapes import conversation_object, item_list, stored_response_object
from sre.engine.turn import TurnEngine
from sre.models.base import ChatModel
from sre.models.config import ModelRegistry, local_model_info
from sre.models.embeddings import EmbeddingModel, EmbeddingRegistry, local_embeddings
from sre.models.local import LocalChatModel
from sre.runtime.settings import LOCAL_PRINCIPAL, LOCAL_TENANT, Settings
from sre.store import Store, sqlite_url
from sre.types.agents import AgentDefinition, UpdateAgent
from sre.types.errors import InvalidRequest, ModelError, NotFound, SREError, Unauthenticated
from sre.types.ids import new_id
from sre.types.items import parse_input_items
from sre.types.records import AgentVersion, ApiKey, Caller, ModelCallRecord
from sre.types.requests import (
    CountInputTokens,
    CreateConversation,
    CreateEmbeddings,
    CreateItems,
    CreateResponse,
    UpdateConversation,
    invalid_from_pydantic,
)

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("sre.runtime")


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # what OpenAI's clients ask for by default: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _coerce(kind: type[M], value: M | Mapping[str, Any]) -> M:
    if isinstance(value, kind):
        return value
    try:
        return kind.model_validate(value)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc) from None


def _page_args(limit: int, order: str) -> None:
    if not 1 <= limit <= 100:
        raise InvalidRequest("Invalid value for 'limit': must be between 1 and 100.", param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': must be 'asc' or 'desc'.", param="order")


class Runtime:
    """Open with `Runtime.open(...)`; close with `await runtime.aclose()`."""

    def __init__(
        self,
        store: Store,
        models: ModelRegistry,
        settings: Settings,
        embeddings: EmbeddingRegistry | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.embeddings = embeddings if embeddings is not None else EmbeddingRegistry()
        self.turns = TurnEngine(store, models)
        self.background = BackgroundRuns(store, self.turns, lease_seconds=settings.lease_seconds)
        self.workers: WorkerPool | None = None
        self.warm_embeddings = True

    @classmethod
    def open(
        cls,
        *,
        data_dir: str | Path | None = None,
        database_url: str | None = None,
        config: str | Path | None = None,
        models: ModelRegistry | list[ChatModel] | None = None,
        embeddings: EmbeddingRegistry | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Runtime:
        """Connect to the store (migrating it) and set up the models from configuration.

        With no chat model configured, the bundled local model is the default; with no embedding
        model configured, the bundled local one is. Both load on first use (or `warm`).
        """
        settings = Settings.load(data_dir=data_dir, database_url=database_url, config_path=config, env=env)
        if isinstance(models, list):
            registry = ModelRegistry()
            for model in models:
                registry.add(model)
        elif models is not None:
            registry = models
        else:
            registry = ModelRegistry.from_config(settings.config, env)
            if not registry.models:
                registry.add(LocalChatModel(local_model_info()))
        warm_embeddings = True
        if embeddings is None:
            embeddings = EmbeddingRegistry.from_config(settings.config)
            if not embeddings.models:
                embeddings.add(local_embeddings())
                # Available on demand, but loaded at start only in the embedded default.
                warm_embeddings = all(m.info.provider == "local" for m in registry.models.values())
        store = Store(settings.database_url or sqlite_url(settings.data_dir))
        runtime = cls(store, registry, settings, embeddings)
        runtime.warm_embeddings = warm_embeddings
        return runtime

    async def warm(self) -> None:
        """Load local model weights now rather than on the first request (embedding models only where
        they are configured, or in the embedded default)."""
        models: list[ChatModel | EmbeddingModel] = list(self.models.models.values())
        if self.warm_embeddings:
            models.extend(self.embeddings.models.values())
        for model in models:
            load = getattr(model, "load", None)
            if load is None:
                continue
            try:
                await load() if asyncio.iscoroutinefunction(load) else await asyncio.to_thread(load)
            except Exception as exc:  # the first request will report it properly
                log.warning("could not load model %s: %s", model.name, exc)

    def start_workers(self, count: int) -> None:
        """Start `count` worker tasks executing background runs on this event loop (0: none)."""
        if count > 0 and self.workers is None:
            self.workers = WorkerPool(self.background, count)
            self.workers.start()

    async def aclose(self) -> None:
        if self.workers is not None:
            await self.workers.aclose()
            self.workers = None
        await self.turns.aclose()
        await self.models.aclose()
        await self.embeddings.aclose()
        self.store.close()

    # -- identity -----------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Caller:
        caller = await asyncio.to_thread(self.store.keys.authenticate, secret)
        if caller is None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        return caller

    def local_caller(self) -> Caller:
        """The caller of the embedded, single-user setup (`--no-auth`, first-start key)."""
        tenant_id = self.store.keys.ensure_tenant(LOCAL_TENANT)
        principal = self.store.keys.ensure_principal(tenant_id, LOCAL_PRINCIPAL)
        return Caller(tenant_id=tenant_id, principal_id=principal.id)

    def create_key(self, tenant: str, principal: str, name: str = "default") -> tuple[ApiKey, str]:
        tenant_id = self.store.keys.ensure_tenant(tenant)
        found = self.store.keys.ensure_principal(tenant_id, principal)
        return self.store.keys.create_key(tenant_id, found.id, name)

    def bootstrap_local_key(self) -> str | None:
        """On the first start of an embedded store, create and return a key for the local user."""
        if self.store.keys.list_keys():
            return None
        caller = self.local_caller()
        _, secret = self.store.keys.create_key(caller.tenant_id, caller.principal_id, "local")
        return secret

    # -- responses ----------------------------------------------------------------------------

    async def create_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> dict[str, Any]:
        """Run one turn to the end and return the response object; with `background`, queue it and
        return the queued response at once."""
        turn = await self.turns.prepare(caller, _coerce(CreateResponse, request))
        if turn.request.background:
            return await self.background.enqueue(turn)
        return await self.turns.respond(turn)

    async def stream_response(
        self, caller: Caller, request: CreateResponse | Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        """Validate and read now (errors raise here), then return the turn's event stream."""
        turn = await self.turns.prepare(caller, _coerce(CreateResponse, request))
        if turn.request.background:  # queued, then followed through the run's event log
            await self.background.enqueue(turn)
            return await self.background.follow(caller, turn.response_id, None)
        return self.turns.stream(turn)

    async def stream_background_response(
        self, caller: Caller, response_id: str, *, starting_after: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A background response's events after `starting_after`, following it until it ends."""
        return await self.background.follow(caller, response_id, starting_after)

    async def cancel_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        """Cancel a queued or in-progress background response; `Conflict` once it has finished."""
        return await self.background.cancel(caller, response_id)

    async def count_input_tokens(
        self, caller: Caller, request: CountInputTokens | Mapping[str, Any]
    ) -> dict[str, Any]:
        """The input tokens `create_response` would send for this request, without calling the model."""
        turn = await self.turns.prepare(caller, _coerce(CountInputTokens, request).as_response_request())
        counted = await asyncio.to_thread(turn.model.count_tokens, turn.model_request)
        return {"object": "response.input_tokens", "input_tokens": counted.tokens, "exact": counted.exact}

    async def usage(
        self, caller: Caller, *, start: int | None = None, end: int | None = None
    ) -> dict[str, Any]:
        """The caller's tenant's model usage by principal, model and day (UTC)."""
        if start is not None and end is not None and end <= start:
            raise InvalidRequest("'end_time' must be after 'start_time'.", param="end_time")
        rows = await asyncio.to_thread(self.store.responses.usage, caller.tenant_id, start=start, end=end)
        return {"object": "list", "data": [{"object": "usage.bucket", **dataclasses.asdict(r)} for r in rows]}

    async def get_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            try:
                record = self.store.responses.get(caller.tenant_id, response_id)
            except NotFound:  # a background run not committed (yet, or ever: cancelled, failed)
                unfinished = self.background.response_object(caller.tenant_id, response_id)
                if unfinished is None:
                    raise
                return unfinished
            return stored_response_object(record, self.store.responses.output_items(record))

        return await asyncio.to_thread(read)

    async def delete_response(self, caller: Caller, response_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self.store.responses.delete, caller.tenant_id, response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def list_input_items(
        self,
        caller: Caller,
        response_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> dict[str, Any]:
        _page_args(limit, order)
        page = await asyncio.to_thread(
            self.store.responses.list_input_items,
            caller.tenant_id,
            response_id,
            after=after,
            limit=limit,
            order=order,
        )
        return item_list(page.data, page.has_more)

    # -- conversations ------------------------------------------------------------------------

    async def create_conversation(
        self, caller: Caller, request: CreateConversation | Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        body = _coerce(CreateConversation, request or {})
        initial = parse_input_items(body.items or [], "items")
        conv, _ = await asyncio.to_thread(
            lambda: self.store.conversations.create(caller.tenant_id, metadata=body.metadata, initial=initial)
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def get_conversation(self, caller: Caller, conversation_id: str) -> dict[str, Any]:
        conv = await asyncio.to_thread(self.store.conversations.get, caller.tenant_id, conversation_id)
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def update_conversation(
        self, caller: Caller, conversation_id: str, request: UpdateConversation | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(UpdateConversation, request)
        conv = await asyncio.to_thread(
            self.store.conversations.update_metadata, caller.tenant_id, conversation_id, body.metadata
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def delete_conversation(self, caller: Caller, conversation_id: str) -> dict[str, Any]:
        await asyncio.to_thread(self.store.conversations.delete, caller.tenant_id, conversation_id)
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    async def fork_conversation(
        self, caller: Caller, conversation_id: str, *, at_item_id: str | None = None
    ) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            lambda: self.store.conversations.fork(caller.tenant_id, conversation_id, at_item_id=at_item_id)
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    async def create_items(
        self, caller: Caller, conversation_id: str, request: CreateItems | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CreateItems, request)
        new = parse_input_items(body.items, "items")
        stored = await asyncio.to_thread(
            self.store.conversations.append, caller.tenant_id, conversation_id, new
        )
        return item_list(stored, False)

    async def list_items(
        self,
        caller: Caller,
        conversation_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> dict[str, Any]:
        _page_args(limit, order)
        page = await asyncio.to_thread(
            lambda: self.store.conversations.list_items(
                caller.tenant_id, conversation_id, after=after, limit=limit, order=order
            )
        )
        return item_list(page.data, page.has_more)

    async def get_item(self, caller: Caller, conversation_id: str, item_id: str) -> dict[str, Any]:
        item = await asyncio.to_thread(
            self.store.conversations.get_item, caller.tenant_id, conversation_id, item_id
        )
        return item.data

    async def delete_item(self, caller: Caller, conversation_id: str, item_id: str) -> dict[str, Any]:
        conv = await asyncio.to_thread(
            self.store.conversations.delete_item, caller.tenant_id, conversation_id, item_id
        )
        return conversation_object(conv.id, conv.created_at, conv.metadata)

    # -- agents -------------------------------------------------------------------------------

    def _with_model(self, definition: AgentDefinition) -> AgentDefinition:
        """The definition naming a configured model (the default one where it names none)."""
        return definition.model_copy(update={"model": self.models.resolve(definition.model).name})

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
            self.store.agents.create, caller.tenant_id, definition.name, definition.to_stored()
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

        def revise(current: AgentVersion) -> dict[str, Any]:
            latest = AgentDefinition.from_stored(current.name, current.definition)
            return self._with_model(body.revise(latest)).to_stored()

        record = await asyncio.to_thread(self.store.agents.update, caller.tenant_id, name, revise)
        return agent_object(record)

    async def delete_agent(self, caller: Caller, name: str) -> dict[str, Any]:
        """Delete every version; the name may be created again."""
        await asyncio.to_thread(self.store.agents.delete, caller.tenant_id, self._agent_name(name))
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

    # -- embeddings ---------------------------------------------------------------------------

    async def create_embeddings(
        self, caller: Caller, request: CreateEmbeddings | Mapping[str, Any]
    ) -> dict[str, Any]:
        body = _coerce(CreateEmbeddings, request)
        model = self.embeddings.resolve(body.model)
        if body.dimensions is not None and body.dimensions != model.info.dimensions:
            raise InvalidRequest(
                f"Model '{model.name}' makes {model.info.dimensions}-dimensional vectors; "
                f"'dimensions' must be {model.info.dimensions} or omitted.",
                param="dimensions",
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        started = time.perf_counter()
        try:
            result = await model.embed(texts)
            status, error = "completed", None
        except SREError as exc:
            status, error, result = "failed", exc, None
        call = ModelCallRecord(
            tenant_id=caller.tenant_id,
            id=new_id("mc"),
            response_id=None,
            principal_id=caller.principal_id,
            model=model.name,
            provider=model.info.provider,
            status=status,
            input_tokens=0 if result is None else result.tokens,
            output_tokens=0,
            latency_ms=(time.perf_counter() - started) * 1000,
            manifest={"embeddings": len(texts)},
            error=None if error is None else error.message,
            created_at=int(time.time()),
            tokens_exact=model.info.provider == "local",
        )
        await asyncio.to_thread(self.store.responses.record_model_call, call)
        if error is not None or result is None:
            raise error or ModelError("embedding failed")
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        return {"object": "list", "data": data, "model": model.name, "usage": usage}

    # -- models -------------------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        data = [
            {
                "id": info.name,
                "object": "model",
                "created": 0,
                "owned_by": info.provider,
                "context_window": info.context_window,
                "pricing": None
                if info.pricing is None
                else {
                    "input": info.pricing.input,
                    "cached_input": info.pricing.cached_input,
                    "output": info.pricing.output,
                    "unit": "USD per 1M tokens",
                },
            }
            for info in self.models.infos()
        ]
        for embedding in self.embeddings.models.values():
            data.append(
                {
                    "id": embedding.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": embedding.info.provider,
                    "kind": "embedding",
                    "dimensions": embedding.info.dimensions,
                }
            )
        return {"object": "list", "data": data}
