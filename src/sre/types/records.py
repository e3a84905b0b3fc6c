"""Records: the plain, immutable shapes that the store hands to the layers above.

They carry ids and values only; no behaviour, no database handles. Every record names its tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sre.types.steps import RunPayload, StepData


@dataclass(frozen=True, slots=True)
class Grants:
    """What runs acting for a principal may use, besides what their agent was given: the names of
    tools and models (None: any)."""

    tools: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None

    def allows_tool(self, name: str) -> bool:
        return self.tools is None or name in self.tools

    def allows_model(self, name: str) -> bool:
        return self.models is None or name in self.models

    def as_dict(self) -> dict[str, list[str] | None]:
        return {
            "tools": None if self.tools is None else list(self.tools),
            "models": None if self.models is None else list(self.models),
        }


ANY = Grants()


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    id: str
    name: str
    kind: str  # "user", "service" or "agent"
    role: str = "member"  # "admin", "developer", "member" or "auditor" (sre.governance.roles)
    grants: Grants = ANY
    created_at: int = 0
    disabled_at: int | None = None  # its keys and tokens are refused from then on


@dataclass(frozen=True, slots=True)
class Group:
    tenant_id: str
    id: str
    name: str
    created_at: int
    members: tuple[str, ...] = ()  # ids of principals and groups (nested one level)


@dataclass(frozen=True, slots=True)
class ApiKey:
    tenant_id: str
    id: str
    principal_id: str
    name: str
    prefix: str  # the first characters of the secret, to recognise a key in lists
    created_at: int
    revoked_at: int | None
    expires_at: int | None = None  # refused from this time on (None: never)
    scopes: tuple[str, ...] | None = None  # the rights it carries (None: its principal's role's)
    rotated_from: str | None = None  # the key it replaced


ROLES = ("admin", "developer", "member", "auditor")  # what each may do: sre.governance.roles
OVERSIGHT_ROLES = ("admin", "auditor")  # read every principal's resources of their tenant (audited)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose resources a store call may touch: its principal's own, the tenant's shared ones and
    those that belong to no one; with `oversight`, every one of the tenant's for reading."""

    principal_id: str
    oversight: bool = False

    def may(self, owner: str | None, *, shared: bool = False, write: bool = False) -> bool:
        if owner is None or owner == self.principal_id or shared:
            return True
        return self.oversight and not write

    def overseeing(self, owner: str | None, *, shared: bool = False) -> bool:
        """Whether reading this is oversight (someone else's private resource): it is audited."""
        return owner is not None and owner != self.principal_id and not shared


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: resolved once per request from the API key (or the local no-auth mode)."""

    tenant_id: str
    principal_id: str
    key_id: str | None = None
    role: str = "member"
    groups: tuple[str, ...] = ()  # group names asserted by an identity provider's token (OIDC)
    scopes: tuple[str, ...] | None = None  # its key's scopes (None: everything its role may)
    grants: Grants = ANY  # what runs acting for it may use (tools, models)
    actor_id: str | None = None  # acting for `principal_id`: the service principal that does

    @property
    def viewer(self) -> Viewer:
        return Viewer(self.principal_id, oversight=self.role in OVERSIGHT_ROLES)


@dataclass(frozen=True, slots=True)
class Conversation:
    tenant_id: str
    id: str
    created_at: int
    metadata: dict[str, str]
    hidden: bool  # a response chain's private thread, never listed under /v1/conversations
    parent_id: str | None
    fork_seq: int | None  # the parent's last item seen by this fork
    last_seq: int
    compactions: int = 0  # compaction items among its own (not its parent's) items
    owner: str | None = None  # the principal it belongs to (None: made before ownership existed)
    visibility: str = "private"  # "private" (its owner's) or "tenant" (every principal of the tenant)


class StoredItem:
    """An item as stored. Its JSON is parsed only when asked for: a turn hands hundreds of items
    straight to the model and never needs them as dicts."""

    __slots__ = (
        "_data",
        "conversation_id",
        "created_at",
        "id",
        "origin",
        "raw",
        "response_id",
        "seq",
        "tenant_id",
        "tokens",
        "type",
    )

    def __init__(
        self,
        *,
        tenant_id: str,
        conversation_id: str,
        seq: int,
        id: str,
        type: str,
        raw: str,
        response_id: str | None,
        created_at: int,
        tokens: int,
        data: dict[str, Any] | None = None,
        origin: str = "input",
    ) -> None:
        self.tenant_id = tenant_id
        self.conversation_id = conversation_id
        self.seq = seq
        self.id = id
        self.type = type
        self.raw = raw  # the item in Responses shape, id included, as JSON
        self.response_id = response_id
        self.created_at = created_at
        self.tokens = tokens
        self.origin = origin  # "input" or "output" of its response
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = json.loads(self.raw)
        return self._data

    def __repr__(self) -> str:
        return f"StoredItem(id={self.id!r}, conversation_id={self.conversation_id!r}, seq={self.seq})"


@dataclass(frozen=True, slots=True)
class ResponseRecord:
    tenant_id: str
    id: str
    principal_id: str
    conversation_id: str  # where its items live (a visible conversation or a hidden chain)
    public_conversation_id: str | None  # the conversation the caller named, if any
    previous_response_id: str | None
    status: str
    model: str
    head_seq: int  # the seq of its last item: where a chain continues from
    created_at: int
    completed_at: int | None
    body: dict[str, Any]  # everything else of the response object (params, usage, error, metadata)


@dataclass(frozen=True, slots=True)
class AgentVersion:
    """One version of an agent's definition; the store keeps it as opaque JSON (`sre.types.agents`
    validates it)."""

    tenant_id: str
    name: str
    version: int
    definition: dict[str, Any]
    created_at: int


@dataclass(frozen=True, slots=True)
class ModelCallRecord:
    tenant_id: str
    id: str
    response_id: str | None
    principal_id: str
    model: str
    provider: str
    status: str
    input_tokens: int
    output_tokens: int
    latency_ms: float
    manifest: dict[str, Any]
    error: str | None = None
    created_at: int = 0
    cached_tokens: int = 0
    tokens_exact: bool = False  # counted by the model's tokenizer or reported by the upstream
    cost_usd: float | None = None  # None: the model's prices are unknown
    agent: str | None = None  # the agent it ran for (audited, not stored with the record)
    agent_version: int | None = None
    key_id: str | None = None  # the API key of the request it served (None: no key)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Model calls aggregated by principal, model and day (UTC) within one tenant."""

    tenant_id: str
    principal_id: str
    model: str
    day: str  # YYYY-MM-DD
    calls: int
    failed_calls: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    cost_usd: float | None


@dataclass(frozen=True, slots=True)
class Window:
    """The newest items of a conversation that fit a token budget, oldest first (stored estimates).

    When the conversation holds a compaction item, the items it covers are not read: `compaction` is
    the newest one and `items` only what came after the last item it covers (the compaction item
    itself is not among them). `truncated`: older items exist that did not fit.
    """

    items: list[StoredItem]
    tokens: int
    truncated: bool
    compaction: StoredItem | None = None
    start_seq: int = 0  # the position the window starts after (a compaction's last covered item)
    conversation_id: str | None = None  # whose lineage it was read from (None: no conversation yet)
    active_run: RunRecord | None = None  # the conversation's active run, when the reader asked


@dataclass(frozen=True, slots=True)
class Page:
    data: list[Any]
    has_more: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A durable run: its request (as queued), status, lease and committed cursor."""

    tenant_id: str
    response_id: str
    principal_id: str
    status: str  # queued, in_progress, requires_action, completed, incomplete, failed, cancelled
    payload: RunPayload  # the validated request and the queued response object
    attempts: int
    lease_owner: str | None
    lease_expires_at: int | None  # epoch milliseconds
    cancel_requested: bool
    created_at: int
    conversation_id: str | None = None
    background: bool = True
    steps: int = 0
    key_id: str | None = None  # the API key that started it (None: no key, or before 0010)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One journal row of an unfinished run: a model step (call_id "") or a tool call."""

    step: int
    call_id: str
    kind: str  # model, tool, client, compaction
    status: str  # started, pending, completed
    data: StepData


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    tenant_id: str
    id: str
    response_id: str
    principal_id: str
    step: int
    call_id: str
    kind: str  # approval, unknown_outcome
    tool: str
    arguments: str
    approvers: list[str]
    status: str  # pending, approved, denied, cancelled
    reason: str | None
    decided_by: str | None
    created_at: int
    decided_at: int | None


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on a run: valid while the run's row names this owner and attempt."""

    tenant_id: str
    response_id: str
    owner: str
    attempt: int
    next_sequence: int  # where this attempt's events start
