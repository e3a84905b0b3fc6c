"""The `Runtime`: the whole system in-process, and the only door the API, CLI and users go through.

Each method takes the `Caller` (tenant and principal) and returns OpenAI-shaped dicts, so the
HTTP layer only parses and serialises. The methods live in one module per resource (responses,
conversations, agents, models, quotas); this one opens, warms and closes the whole. Store work runs in worker threads; model calls run on the
event loop. No business rule lives outside this facade and the layers beneath it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sre.context import Compactor, ContextAssembler, ContextSource
from sre.engine.agents import is_agent_name
from sre.engine.background import BackgroundRuns
from sre.engine.plain import PlainTurns
from sre.engine.runs import RunEngine
from sre.engine.turn import TurnEngine
from sre.engine.workers import WorkerPool
from sre.governance import Authenticator
from sre.governance.access import Access
from sre.governance.quotas import Quotas
from sre.governance.roles import rights
from sre.governance.secrets import Secrets
from sre.models.base import ChatModel
from sre.models.config import ModelRegistry, local_model_info
from sre.models.embeddings import EmbeddingModel, EmbeddingRegistry, local_embeddings
from sre.models.local import LocalChatModel
from sre.runtime.agents import AgentsAPI
from sre.runtime.approvals import ApprovalsAPI
from sre.runtime.audit import AuditAPI
from sre.runtime.compact import CompactAPI
from sre.runtime.conversations import ConversationsAPI
from sre.runtime.directory import DirectoryAPI
from sre.runtime.models import ModelsAPI
from sre.runtime.responses import ResponsesAPI
from sre.runtime.secrets import SecretsAPI
from sre.runtime.settings import Settings
from sre.store import Database, Store, sqlite_url
from sre.tools.base import ToolSource
from sre.tools.catalog import ToolCatalog
from sre.tools.registry import ToolRegistry, default_registry, tools_from_modules
from sre.types.errors import ConfigError
from sre.types.records import ApiKey, Caller

log = logging.getLogger("sre.runtime")


def tool_catalog(config: Mapping[str, Any], registry: ToolRegistry | None = None) -> ToolCatalog:
    """The tools a configuration offers: `[tools] modules` (imported; they register on the default
    registry) and `[mcp_servers.LABEL]` tables."""
    table = config.get("tools", {})
    if not isinstance(table, dict) or set(table) - {"modules"}:
        raise ConfigError("[tools] takes one key, 'modules': a list of Python modules to import")
    modules = table.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConfigError("[tools] modules must be a list of module names")
    tools_from_modules(modules)
    servers = config.get("mcp_servers", {})
    if not isinstance(servers, dict):
        raise ConfigError("[mcp_servers] must be a table of tables, one per server")
    mcp: dict[str, ToolSource] = {}
    if servers:
        from sre.tools.mcp import MCPSource

        for label, server in servers.items():
            if not is_agent_name(label) or not isinstance(server, dict):
                raise ConfigError(
                    f"[mcp_servers.{label}]: a label of letters, digits, '_' or '-', and a table"
                )
            mcp[label] = MCPSource.from_config(label, server)
    return ToolCatalog(registry if registry is not None else default_registry, mcp)


class Runtime(
    ResponsesAPI,
    CompactAPI,
    ConversationsAPI,
    AgentsAPI,
    ModelsAPI,
    ApprovalsAPI,
    AuditAPI,
    DirectoryAPI,
    SecretsAPI,
):
    """Open with `Runtime.open(...)`; close with `await runtime.aclose()`."""

    def __init__(
        self,
        store: Store,
        models: ModelRegistry,
        settings: Settings,
        embeddings: EmbeddingRegistry | None = None,
        tools: ToolCatalog | None = None,
    ) -> None:
        self.store = store
        self.models = models
        self.settings = settings
        self.embeddings = embeddings if embeddings is not None else EmbeddingRegistry()
        self.tools = tools if tools is not None else ToolCatalog(ToolRegistry())
        self.auth = Authenticator(store, settings.oidc)
        self.secrets = Secrets(store, keys=settings.secret_key, generated_key=settings.secret_key_file)
        self.access = Access(store)
        self.quotas = Quotas(store, settings.quotas)
        store.quotas.meter = self.quotas.metered
        self.context = ContextAssembler(compactor=Compactor(store))
        self.turns = TurnEngine(store, models, self.tools, self.context, settings.context)
        self.engine = RunEngine(store, self.context)
        self.plain = PlainTurns(self.engine)
        self.background = BackgroundRuns(store, self.turns, self.engine, lease_seconds=settings.lease_seconds)
        self.workers: WorkerPool | None = None
        self.warm_embeddings = True

    def add_context_source(self, source: ContextSource) -> None:
        """Offer an application's own context to every model call: its candidates compete for the
        budget with the others (section by section, as the context policy says)."""
        self.context.add_source(source)

    @classmethod
    def open(
        cls,
        *,
        data_dir: str | Path | None = None,
        database_url: str | None = None,
        config: str | Path | None = None,
        models: ModelRegistry | list[ChatModel] | None = None,
        embeddings: EmbeddingRegistry | None = None,
        tools: ToolRegistry | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Runtime:
        """Connect to the store (migrating it) and set up the models and tools from configuration.

        Server-side tools are `tools` (default: `sre.tools.default_registry`, where `@sre.tool`
        registers) plus those of the modules the configuration's `[tools] modules` names.

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
        catalog = tool_catalog(settings.config, tools)
        store = Store(
            settings.database_url or sqlite_url(settings.data_dir), synchronous=settings.sqlite_synchronous
        )
        runtime = cls(store, registry, settings, embeddings, catalog)
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
        await self.background.aclose()
        await self.plain.aclose()
        await self.tools.aclose()
        await self.models.aclose()
        await self.embeddings.aclose()
        self.store.close()

    def close(self) -> None:
        """Close the store only (for short-lived, synchronous users such as CLI commands)."""
        self.store.close()

    # -- identity -----------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> Caller:
        return await asyncio.to_thread(self.auth.authenticate, secret)

    async def authenticate_header(self, header: str | None) -> Caller:
        """The caller an `Authorization: Bearer` header names."""
        return await asyncio.to_thread(self.auth.from_header, header)

    async def check_access(self, caller: Caller, right: str, route: str) -> None:
        """`PermissionDenied` (audited) unless the caller holds `right` (`sre.governance.roles`); no
        store work unless it is refused."""
        if right not in rights(caller):
            await asyncio.to_thread(self.access.check, caller, right, route)

    async def act_for(self, caller: Caller, user: str, route: str) -> Caller:
        """The caller acting for `user` (it needs the `act_as` scope)."""
        return await asyncio.to_thread(self.access.act_for, caller, user, route)

    def local_caller(self) -> Caller:
        """The caller of the embedded, single-user setup (`--no-auth`, first-start key)."""
        return self.auth.local_caller()

    def tenant_caller(self, tenant: str | None, principal: str | None = None) -> Caller:
        """Act within a tenant (the CLI): as `principal`, its `cli` service, or the local user."""
        return self.auth.tenant_caller(tenant, principal)

    def create_key(
        self,
        tenant: str,
        principal: str,
        name: str = "default",
        role: str | None = None,
        expires_in: int | None = None,
        *,
        scopes: list[str] | None = None,
        kind: str = "user",
    ) -> tuple[ApiKey, str]:
        """A key for a principal of a tenant (both created if new; a new principal is a `member`
        of `kind` unless `role` names another role), expiring `expires_in` seconds from now if given,
        holding only `scopes` if given."""
        return self.auth.create_key(tenant, principal, name, role, expires_in, scopes=scopes, kind=kind)

    def rotate_key(self, key_id: str, grace_seconds: int = 0) -> tuple[ApiKey, str, ApiKey]:
        """A new key in place of `key_id` (any tenant's: the operator's command); the old one is
        revoked now or after `grace_seconds`."""
        return self.auth.rotate_key(key_id, grace_seconds)

    def list_keys(self, tenant: str | None = None) -> list[tuple[ApiKey, str, str]]:
        return self.auth.list_keys(tenant)

    def revoke_key(self, key_id: str) -> ApiKey:
        return self.auth.revoke_key(key_id)

    def bootstrap_local_key(self) -> str | None:
        """On the first start of an embedded store, create and return a key for the local user."""
        return self.auth.bootstrap_local_key()


def upgrade_schema(
    *, data_dir: str | Path | None = None, database_url: str | None = None
) -> tuple[str | None, str | None, str | None]:
    """Apply pending migrations without opening a runtime: (revision before, head, revision after)."""
    settings = Settings.load(data_dir=data_dir, database_url=database_url)
    db = Database(settings.database_url or sqlite_url(settings.data_dir))
    try:
        current, head = db.current_revision(), db.head_revision()
        if current != head:
            db.upgrade()
        return current, head, db.current_revision()
    finally:
        db.dispose()
