"""What the runtime's parts share: the attributes every part of the facade uses, and the checks on
arguments that every listing and every Python-API call makes. No behaviour of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sre.context import ContextAssembler
from sre.engine.background import BackgroundRuns
from sre.engine.plain import PlainTurns
from sre.engine.runs import RunEngine
from sre.engine.turn import TurnEngine
from sre.engine.workers import WorkerPool
from sre.governance import Authenticator
from sre.governance.quotas import Quotas
from sre.governance.secrets import Secrets
from sre.models.config import ModelRegistry
from sre.models.embeddings import EmbeddingRegistry
from sre.runtime.settings import Settings
from sre.store import Store
from sre.tools.catalog import ToolCatalog
from sre.types.audit import AuditEvent
from sre.types.errors import InvalidRequest
from sre.types.records import Caller, Principal
from sre.types.requests import invalid_from_pydantic

M = TypeVar("M", bound=BaseModel)


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


class RuntimeParts:
    """The state the facade's parts share; `Runtime.__init__` sets it; and the audit of oversight."""

    store: Store
    models: ModelRegistry
    settings: Settings
    embeddings: EmbeddingRegistry
    auth: Authenticator
    quotas: Quotas
    secrets: Secrets
    context: ContextAssembler
    turns: TurnEngine
    engine: RunEngine
    plain: PlainTurns
    tools: ToolCatalog
    background: BackgroundRuns
    workers: WorkerPool | None
    warm_embeddings: bool

    def _identity(self, caller: Caller) -> tuple[Principal, tuple[str, ...]]:
        """The caller's principal and the groups it is in (the directory's and its token's)."""
        principal = self.auth.principal(caller)
        stored = self.store.directory.group_names_of(caller.tenant_id, principal.id)
        return principal, tuple(dict.fromkeys((*stored, *caller.groups)))

    async def _oversee(
        self, caller: Caller, owner: str | None, shared: bool, action: str, kind: str, resource_id: str
    ) -> None:
        """An admin or auditor reading someone else's private resource leaves an audit event first."""
        if caller.viewer.overseeing(owner, shared=shared):
            event = AuditEvent(action, kind, resource_id, actor=caller.principal_id, details={"owner": owner})
            await asyncio.to_thread(self.store.audit.append, caller.tenant_id, [event])
