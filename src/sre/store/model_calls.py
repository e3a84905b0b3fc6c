"""Writing a model call record: shared by a turn's commit and a durable run's step commit."""

from __future__ import annotations

import sqlalchemy as sa

from sre.store.conversations import dumps
from sre.store.schema import model_calls
from sre.types.records import ModelCallRecord


def insert_model_call(conn: sa.Connection, call: ModelCallRecord) -> None:
    conn.execute(
        model_calls.insert(),
        dict(
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
        ),
    )
