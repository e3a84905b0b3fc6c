"""The runtime's approvals: the decisions paused runs wait for, listed and decided by approvers."""

from __future__ import annotations

import asyncio
from typing import Any

from sre.governance import approval_check
from sre.governance.rules import approver_labels, may_decide
from sre.runtime.base import RuntimeParts
from sre.types.errors import InvalidRequest, NotFound
from sre.types.lists import list_object
from sre.types.records import ApprovalRecord, Caller, Principal

STATUSES = ("pending", "approved", "denied", "cancelled")
MAX_REASON = 4096


def approval_object(record: ApprovalRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "approval",
        "response_id": record.response_id,
        "kind": record.kind,
        "tool": record.tool,
        "arguments": record.arguments,
        "call_id": record.call_id,
        "status": record.status,
        "approvers": record.approvers,
        "reason": record.reason,
        "decided_by": record.decided_by,
        "created_at": record.created_at,
        "decided_at": record.decided_at,
    }


class ApprovalsAPI(RuntimeParts):
    async def list_approvals(
        self,
        caller: Caller,
        *,
        status: str | None = None,
        response_id: str | None = None,
        after: str | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        """The tenant's approvals, oldest first; filter by `status` (pending, approved, denied,
        cancelled) and by response."""
        if status is not None and status not in STATUSES:
            raise InvalidRequest(
                f"Invalid value for 'status': {status!r}; use one of {', '.join(STATUSES)}.", param="status"
            )
        if not 1 <= limit <= 100:
            raise InvalidRequest("Invalid value for 'limit': must be between 1 and 100.", param="limit")
        principal, groups = await asyncio.to_thread(self._identity, caller)
        seen_by = None if caller.viewer.oversight else approver_labels(principal, groups)
        page = await asyncio.to_thread(
            lambda: self.store.approvals.list(
                caller.tenant_id,
                status=status,
                response_id=response_id,
                after=after,
                limit=limit,
                seen_by=seen_by,
            )
        )
        return list_object([approval_object(r) for r in page.data], page.has_more)

    async def _visible(
        self, caller: Caller, approval_id: str
    ) -> tuple[ApprovalRecord, Principal, tuple[str, ...]]:
        """The approval, if the caller's run asked for it, names the caller (or a group or role of
        it), or the caller oversees the tenant; else not found."""
        record = await asyncio.to_thread(self.store.approvals.get, caller.tenant_id, approval_id)
        principal, groups = await asyncio.to_thread(self._identity, caller)
        if not (
            caller.viewer.oversight
            or may_decide(record, principal, groups)
            or record.principal_id == principal.id
        ):
            raise NotFound(f"Approval with id '{approval_id}' not found.", param="approval_id")
        return record, principal, groups

    async def get_approval(self, caller: Caller, approval_id: str) -> dict[str, Any]:
        record, _, _ = await self._visible(caller, approval_id)
        return approval_object(record)

    async def decide_approval(
        self,
        caller: Caller,
        approval_id: str,
        *,
        approve: bool,
        reason: str | None = None,
        resume_here: bool = True,
    ) -> dict[str, Any]:
        """Approve or deny a pending approval as the caller; the run resumes once nothing else is
        pending (a worker picks it up; with no workers in this process and `resume_here`, it runs
        here, in the background)."""
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise InvalidRequest(
                f"Invalid value for 'reason': expected a string of at most {MAX_REASON} characters.",
                param="reason",
            )
        _, principal, groups = await self._visible(caller, approval_id)
        record, requeued = await asyncio.to_thread(
            lambda: self.store.approvals.decide(
                caller.tenant_id,
                approval_id,
                check=approval_check(principal, groups),
                decided_by=principal.name,
                approve=approve,
                reason=reason,
                actor=caller.principal_id,
            )
        )
        if requeued and resume_here and self.workers is None:
            run_caller = Caller(tenant_id=caller.tenant_id, principal_id=record.principal_id)
            self.background.spawn_drain(run_caller, record.response_id)
        return approval_object(record)
