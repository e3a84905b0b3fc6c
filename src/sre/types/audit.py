"""Audit events: who did what, for whom, through which agent, to which resource, with what outcome.

An `AuditEvent` is what a layer asks to be recorded; the store gives it its place in the tenant's
chain (`AuditRecord`: a sequence number, the previous event's hash and its own) in the transaction
that writes what it records. `chain_hash` is the one definition of an event's hash, shared by the
writer and by `sre audit verify`. An event carries ids, names and counts, never content: what was
deleted is not kept here, only the fact that it was.
"""

from __future__ import annotations

import hashlib
import json
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["success", "denied", "failure", "error"]
OUTCOMES: tuple[str, ...] = ("success", "denied", "failure", "error")

GENESIS = "0" * 64  # the "previous hash" of a tenant's first event

# The id of the API request being served (set by the API's middleware): an event recorded on its
# behalf, in its task or its worker threads, carries it unless the event names its own.
REQUEST_ID: ContextVar[str | None] = ContextVar("sre_request_id", default=None)
# The service principal acting for the request's user (`X-SRE-On-Behalf-Of`): an event whose actor
# is that user is recorded with the service as `actor` and the user as `on_behalf_of`.
ACTING: ContextVar[str | None] = ContextVar("sre_acting", default=None)

# The actions SRE records (`GET /v1/audit?action=` filters by them; docs/governance.md lists them).
ACTIONS: dict[str, str] = {
    "model.call": "a model was called for a response (its model call record)",
    "tool.call": "a server-side tool ran for a run (or was refused, or its outcome is unknown)",
    "approval.decide": "an approval was approved or denied",
    "conversation.read": "an admin or auditor read another principal's private conversation",
    "response.read": "an admin or auditor read another principal's response",
    "response.delete": "a stored response was deleted",
    "conversation.delete": "a conversation was deleted",
    "conversation.item.delete": "an item was deleted from a conversation",
    "agent.create": "an agent was created",
    "agent.update": "an agent got a new version",
    "agent.delete": "an agent was deleted",
    "principal.create": "a principal was created",
    "principal.update": "a principal's role, grants or disabling was changed",
    "group.create": "a group was created",
    "group.delete": "a group was deleted",
    "group.member.add": "a principal or group was added to a group",
    "group.member.remove": "a member was removed from a group",
    "key.create": "an API key was created",
    "key.rotate": "an API key was replaced by a new one (revoked now, or expiring after a grace period)",
    "key.revoke": "an API key was revoked",
    "secret.create": "a secret was created (its name and id; never its value)",
    "secret.update": "a secret was given a new value (and perhaps a new description)",
    "secret.delete": "a secret was deleted",
    "secret.rekey": "a batch of the tenant's secrets was re-encrypted with the newest secret key (a count)",
    "access.denied": "a request was refused for want of a right, a scope or a grant",
    "auth.failure": "a request presented a key that is unknown, revoked or expired, or a refused token",
    "quota.update": "an admin set or cleared a tenant's, principal's or key's own limits",
    "quota.exceeded": "a quota refused requests (once per subject, limit and window, not per request)",
}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """An event to record, before the store chains it."""

    action: str
    resource_type: str
    resource_id: str | None
    actor: str | None  # the principal id that acted (None: the system, or an unknown caller)
    outcome: Outcome = "success"
    on_behalf_of: str | None = None
    agent: str | None = None
    agent_version: int | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # ids, names and counts; never content


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A recorded event, in its place in its tenant's chain."""

    tenant_id: str
    seq: int
    id: str
    created_ms: int
    action: str
    resource_type: str
    resource_id: str | None
    actor: str | None
    on_behalf_of: str | None
    agent: str | None
    agent_version: int | None
    outcome: str
    request_id: str | None
    details: str  # JSON, exactly as stored and hashed
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "audit.event",
            "sequence": self.seq,
            "created_at": self.created_ms // 1000,
            "created_ms": self.created_ms,
            "action": self.action,
            "resource": {"type": self.resource_type, "id": self.resource_id},
            "actor": self.actor,
            "on_behalf_of": self.on_behalf_of,
            "agent": None if self.agent is None else {"name": self.agent, "version": self.agent_version},
            "outcome": self.outcome,
            "request_id": self.request_id,
            "details": json.loads(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def details_json(details: dict[str, Any]) -> str:
    """The canonical text of an event's details: what is stored and what is hashed."""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(
    prev_hash: str,
    tenant_id: str,
    seq: int,
    event_id: str,
    created_ms: int,
    action: str,
    resource_type: str,
    resource_id: str | None,
    actor: str | None,
    on_behalf_of: str | None,
    agent: str | None,
    agent_version: int | None,
    outcome: str,
    request_id: str | None,
    details: str,
) -> str:
    """SHA-256 over the previous event's hash and every field of this one, in a fixed order, joined
    by U+001E; a missing value is U+0000 (so None and "" differ)."""
    n = "\x00"
    text = (
        f"{prev_hash}\x1e{tenant_id}\x1e{seq}\x1e{event_id}\x1e{created_ms}\x1e{action}\x1e"
        f"{resource_type}\x1e{n if resource_id is None else resource_id}\x1e"
        f"{n if actor is None else actor}\x1e{n if on_behalf_of is None else on_behalf_of}\x1e"
        f"{n if agent is None else agent}\x1e{n if agent_version is None else agent_version}\x1e"
        f"{outcome}\x1e{n if request_id is None else request_id}\x1e{details}"
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    seq: int  # the first position where the chain is wrong
    kind: Literal["changed", "missing", "inserted", "reordered", "truncated", "head"]
    message: str


@dataclass
class VerifyReport:
    tenant_id: str
    events: int = 0
    head_seq: int = 0
    problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> int | None:
        return min((p.seq for p in self.problems), default=None)
