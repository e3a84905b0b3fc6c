"""Approvals: the decisions paused runs wait for, listed, read and decided.

A decision is one transaction: the approval must still be pending and the deciding principal must
pass the governance layer's check (`sre.governance.rules`), made inside the transaction; once nothing
else is pending, the run goes back to the queue in the same transaction, so a worker resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.database import Database, id_equals
from sre.store.runs import put_steps, requeue_if_ready
from sre.store.schema import approvals, runs
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, NotFound
from sre.types.records import ApprovalRecord, Page, StepRecord
from sre.types.status import REQUIRES_ACTION


def approval_from_row(row: sa.Row[Any]) -> ApprovalRecord:
    m = row._mapping
    return ApprovalRecord(
        tenant_id=m["tenant_id"],
        id=m["id"],
        response_id=m["response_id"],
        principal_id=m["principal_id"],
        step=m["step"],
        call_id=m["call_id"],
        kind=m["kind"],
        tool=m["tool"],
        arguments=m["arguments"],
        approvers=json.loads(m["approvers"]),
        status=m["status"],
        reason=m["reason"],
        decided_by=m["decided_by"],
        created_at=m["created_at"],
        decided_at=m["decided_at"],
    )


def approval_row(record: ApprovalRecord) -> dict[str, Any]:
    return dict(
        tenant_id=record.tenant_id,
        id=record.id,
        response_id=record.response_id,
        principal_id=record.principal_id,
        step=record.step,
        call_id=record.call_id,
        kind=record.kind,
        tool=record.tool,
        arguments=record.arguments,
        approvers=json.dumps(record.approvers),
        status=record.status,
        reason=record.reason,
        decided_by=record.decided_by,
        created_at=record.created_at,
        decided_at=record.decided_at,
    )


DecisionCheck = Callable[[ApprovalRecord], None]  # raises when the decider may not decide it


class ApprovalRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, tenant_id: str, approval_id: str) -> ApprovalRecord:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(approvals).where(
                    approvals.c.tenant_id == tenant_id, id_equals(approvals.c.id, approval_id)
                )
            ).first()
        if row is None:
            raise NotFound(f"Approval with id '{approval_id}' not found.", param="approval_id")
        return approval_from_row(row)

    def list(
        self,
        tenant_id: str,
        *,
        status: str | None = None,
        response_id: str | None = None,
        after: str | None = None,
        limit: int = 20,
        seen_by: tuple[str, ...] | None = None,
    ) -> Page:
        """Oldest first; `after` is the id of the last approval of the previous page. With `seen_by`
        (a principal's id, then every approvers entry that names it), only the approvals of its own
        runs and those naming it."""
        query = sa.select(approvals).where(approvals.c.tenant_id == tenant_id)
        if seen_by is not None:
            query = query.where(
                sa.or_(
                    approvals.c.principal_id == seen_by[0],
                    *(
                        approvals.c.approvers.contains(json.dumps(label), autoescape=True)
                        for label in seen_by
                    ),
                )
            )
        with self.db.read() as conn:
            if status is not None:
                query = query.where(approvals.c.status == status)
            if response_id is not None:
                query = query.where(id_equals(approvals.c.response_id, response_id))
            if after is not None:
                cursor = conn.execute(
                    sa.select(approvals.c.created_at).where(
                        approvals.c.tenant_id == tenant_id, id_equals(approvals.c.id, after)
                    )
                ).first()
                if cursor is None:
                    raise NotFound(f"Approval with id '{after}' not found.", param="after")
                query = query.where(
                    sa.tuple_(approvals.c.created_at, approvals.c.id) > sa.tuple_(cursor.created_at, after)
                )
            rows = conn.execute(query.order_by(approvals.c.created_at, approvals.c.id).limit(limit + 1)).all()
        return Page(data=[approval_from_row(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def answer(
        self,
        tenant_id: str,
        response_id: str,
        *,
        outputs: Sequence[StepRecord],
        decisions: Sequence[tuple[str, bool, str | None]],
        check: DecisionCheck,
        decided_by: str,
        actor: str | None = None,
    ) -> bool:
        """A client's answers to a paused run in one transaction: tool outputs (journal rows) and
        decisions `(approval id, approve, reason)`, all or nothing; return whether the run is queued
        again."""
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(runs.c.status)
                .where(runs.c.tenant_id == tenant_id, runs.c.response_id == response_id)
                .with_for_update()
            ).first()
            if row is None or row.status != REQUIRES_ACTION:
                raise Conflict(
                    f"Response '{response_id}' is not waiting for answers.", code="response_not_paused"
                )
            events = [
                self._decide(conn, tenant_id, approval_id, check, decided_by, approve, reason, actor)[1]
                for approval_id, approve, reason in decisions
            ]
            put_steps(conn, tenant_id, response_id, outputs)
            requeued = requeue_if_ready(conn, tenant_id, response_id)
            append_audit(conn, tenant_id, events)  # the chain's head is locked last, as everywhere
            return requeued

    def _decide(
        self,
        conn: sa.Connection,
        tenant_id: str,
        approval_id: str,
        check: DecisionCheck,
        decided_by: str,
        approve: bool,
        reason: str | None,
        actor: str | None,
    ) -> tuple[ApprovalRecord, AuditEvent]:
        row = conn.execute(
            sa.select(approvals)
            .where(approvals.c.tenant_id == tenant_id, id_equals(approvals.c.id, approval_id))
            .with_for_update()
        ).first()
        if row is None:
            raise NotFound(f"Approval with id '{approval_id}' not found.", param="approval_id")
        record = approval_from_row(row)
        check(record)  # the governance layer's rule, inside this transaction
        if record.status != "pending":
            raise Conflict(
                f"Approval '{approval_id}' is already {record.status}"
                + (f" by '{record.decided_by}'." if record.decided_by else "."),
                code="approval_already_decided",
            )
        now = int(time.time())
        status = "approved" if approve else "denied"
        conn.execute(
            approvals.update()
            .where(approvals.c.tenant_id == tenant_id, approvals.c.id == record.id)
            .values(status=status, reason=reason, decided_by=decided_by, decided_at=now)
        )
        event = AuditEvent(
            action="approval.decide",
            resource_type="approval",
            resource_id=record.id,
            actor=actor,
            details={
                "decision": status,
                "decided_by": decided_by,
                "tool": record.tool,
                "kind": record.kind,
                "response_id": record.response_id,
            },
        )
        decided = dataclasses.replace(
            record, status=status, reason=reason, decided_by=decided_by, decided_at=now
        )
        return decided, event

    def decide(
        self,
        tenant_id: str,
        approval_id: str,
        *,
        check: DecisionCheck,
        decided_by: str,
        approve: bool,
        reason: str | None,
        actor: str | None = None,
    ) -> tuple[ApprovalRecord, bool]:
        """Approve or deny (as `decided_by`, once `check` allows it); return the decided approval and
        whether its run went back to the queue."""
        with self.db.write() as conn:
            decided, event = self._decide(
                conn, tenant_id, approval_id, check, decided_by, approve, reason, actor
            )
            requeued = requeue_if_ready(conn, tenant_id, decided.response_id)
            append_audit(conn, tenant_id, [event])  # the chain's head is locked last, as everywhere
        return decided, requeued
