"""Writing model call records, each with its audit event (and its tokens on the quota counters that
count them): shared by a turn's commit, a durable run's step commit and a call outside any turn
(embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.conversations import dumps
from sre.store.quotas import QuotaRepository
from sre.store.schema import model_calls
from sre.types.audit import AuditEvent
from sre.types.records import ModelCallRecord

_INSERT = model_calls.insert()


def model_call_event(call: ModelCallRecord) -> AuditEvent:
    """The audit event of a model call: who, for which response, which model, how much; no content."""
    details: dict[str, object] = {
        "model": call.model,
        "provider": call.provider,
        "status": call.status,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
    }
    if call.response_id is not None:
        details["response_id"] = call.response_id
    if call.error is not None:
        details["error"] = call.error[:200]
    return AuditEvent(
        action="model.call",
        resource_type="model_call",
        resource_id=call.id,
        actor=call.principal_id,
        outcome="success" if call.status in ("completed", "incomplete") else "failure",
        agent=call.agent,
        agent_version=call.agent_version,
        details=details,
    )


def model_call_row(call: ModelCallRecord) -> dict[str, object]:
    """The `model_calls` row of a record."""
    return dict(
        tenant_id=call.tenant_id,
        id=call.id,
        response_id=call.response_id,
        principal_id=call.principal_id,
        model=call.model,
        provider=call.provider,
        status=call.status,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        latency_ms=call.latency_ms,
        manifest=dumps(call.manifest),
        error=call.error,
        created_at=call.created_at,
        cached_tokens=call.cached_tokens,
        tokens_exact=call.tokens_exact,
        cost_usd=call.cost_usd,
        key_id=call.key_id,
    )


def insert_model_calls(
    conn: sa.Connection,
    tenant_id: str,
    calls: Sequence[ModelCallRecord],
    audit: Sequence[AuditEvent] = (),
    *,
    quotas: QuotaRepository | None = None,
) -> None:
    """The calls' records, their tokens on the quota counters that count them (with `quotas`), and
    their audit events (with `audit`, the transaction's others), in the caller's transaction."""
    if calls:
        conn.execute(_INSERT, [model_call_row(call) for call in calls])
        if quotas is not None:
            quotas.add_tokens(conn, tenant_id, calls)
    append_audit(conn, tenant_id, [*(model_call_event(c) for c in calls), *audit])
