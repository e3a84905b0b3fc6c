"""Responses, their items and model call records, and the one transaction that commits a turn.

A turn's input and output items, its response row and its model call record are written together
or not at all. A response without a named conversation lives in a hidden conversation: a chain of
`previous_response_id`s appends to it while it continues from the head, and forks it (by reference)
when a client branches from an older response.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.conversations import (
    append_rows,
    dumps,
    insert_conversation,
    item_from_row,
    load_conversation,
    read_window,
)
from sre.store.database import Database, id_equals
from sre.store.model_calls import insert_model_calls
from sre.store.quotas import QuotaRepository
from sre.store.runs import active_run, finish_run
from sre.store.schema import approvals, items, model_calls, responses, run_events, run_steps, runs
from sre.types.audit import AuditEvent
from sre.types.errors import InvalidRequest, NotFound
from sre.types.items import AnyItem
from sre.types.records import (
    Conversation,
    Lease,
    ModelCallRecord,
    Page,
    ResponseRecord,
    StoredItem,
    UsageRow,
    Viewer,
    Window,
)


@dataclass(frozen=True, slots=True)
class TurnCommit:
    tenant_id: str
    principal_id: str
    response_id: str
    model: str
    status: str
    body: dict[str, Any]
    created_at: int
    completed_at: int | None
    conversation_id: str | None  # the conversation the caller named
    previous: ResponseRecord | None  # the response the caller continues from
    input_items: Sequence[AnyItem]
    output_items: Sequence[AnyItem]
    store: bool
    keep_items: bool  # False for a failed turn: the conversation stays as it was
    model_calls: Sequence[ModelCallRecord]
    # A background run's lease and last events: the run ends in the same transaction (or not at all).
    run: tuple[Lease, list[dict[str, Any]]] | None = None


def response_from_row(row: sa.Row[Any]) -> ResponseRecord:
    m = row._mapping
    return ResponseRecord(
        tenant_id=m["tenant_id"],
        id=m["id"],
        principal_id=m["principal_id"],
        conversation_id=m["conversation_id"],
        public_conversation_id=m["public_conversation_id"],
        previous_response_id=m["previous_response_id"],
        status=m["status"],
        model=m["model"],
        head_seq=m["head_seq"],
        created_at=m["created_at"],
        completed_at=m["completed_at"],
        body=json.loads(m["body"]),
    )


def _owner(conn: sa.Connection, tenant_id: str, response_id: str) -> str | None:
    """The principal of a response, or of a durable run that has none yet; None when neither exists."""
    for table, column in ((responses, responses.c.id), (runs, runs.c.response_id)):
        found = conn.execute(
            sa.select(table.c.principal_id).where(
                table.c.tenant_id == tenant_id, id_equals(column, response_id)
            )
        ).scalar()
        if found is not None:
            return str(found)
    return None


class ResponseRepository:
    def __init__(self, db: Database, quotas: QuotaRepository | None = None) -> None:
        self.db = db
        self.quotas = quotas

    def get(
        self,
        tenant_id: str,
        response_id: str,
        *,
        param: str = "response_id",
        viewer: Viewer | None = None,
        write: bool = False,
    ) -> ResponseRecord:
        """The response, unless it is not the `viewer`'s to read (or, with `write`, to continue):
        then it is not found, as another tenant's would be."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(responses).where(
                    responses.c.tenant_id == tenant_id, id_equals(responses.c.id, response_id)
                )
            ).first()
        if row is None or (viewer is not None and not viewer.may(row.principal_id, write=write)):
            raise NotFound(f"Response with id '{response_id}' not found.", param=param)
        return response_from_row(row)

    def owner(self, tenant_id: str, response_id: str) -> str | None:
        """The principal a response (or a durable run without a response yet) belongs to; None when
        there is neither."""
        with self.db.read() as conn:
            return _owner(conn, tenant_id, response_id)

    def context(
        self,
        tenant_id: str,
        conversation_id: str | None,
        previous: ResponseRecord | None,
        budget: int,
        *,
        busy: bool = False,
        viewer: Viewer | None = None,
    ) -> Window:
        """The window a new turn starts from: a conversation's newest items (a conversation the
        `viewer` may add to), or a chain's at its head; with `busy`, a conversation's active run too
        (in the same read)."""
        with self.db.read() as conn:
            if conversation_id is not None:
                conv = load_conversation(
                    conn,
                    tenant_id,
                    conversation_id,
                    hidden_ok=False,
                    param="conversation",
                    viewer=viewer,
                    write=True,
                )
                window = read_window(conn, conv, budget)
                if busy:
                    window = dataclasses.replace(
                        window, active_run=active_run(conn, tenant_id, conversation_id)
                    )
                return window
            if previous is not None:
                conv = load_conversation(conn, tenant_id, previous.conversation_id)
                return read_window(conn, conv, budget, upto=previous.head_seq)
        return Window(items=[], tokens=0, truncated=False)

    def commit_turn(
        self, turn: TurnCommit
    ) -> tuple[ResponseRecord | None, list[StoredItem], list[StoredItem]]:
        """Write a finished turn in one transaction; return the response and its stored items."""
        with self.db.write() as conn:
            if turn.run is not None:
                finish_run(conn, turn.run[0], turn.status, turn.run[1], responded=True)
            if not turn.store and turn.conversation_id is None:
                insert_model_calls(conn, turn.tenant_id, turn.model_calls, quotas=self.quotas)
                return None, [], []
            # Rows are locked in one order everywhere (run, conversation, then the audit chain's
            # head), so that two transactions never wait on each other's locks.
            conv = self._target(conn, turn)
            insert_model_calls(conn, turn.tenant_id, turn.model_calls, quotas=self.quotas)
            stored_in: list[StoredItem] = []
            stored_out: list[StoredItem] = []
            if turn.keep_items:
                both = append_rows(
                    conn,
                    conv,
                    [*turn.input_items, *turn.output_items],
                    response_id=turn.response_id,
                    outputs_from=len(turn.input_items),
                )
                stored_in, stored_out = both[: len(turn.input_items)], both[len(turn.input_items) :]
            head = (
                (stored_out or stored_in)[-1].seq
                if (stored_out or stored_in)
                else self._base_head(turn, conv)
            )
            if not turn.store:
                return None, stored_in, stored_out
            record = ResponseRecord(
                tenant_id=turn.tenant_id,
                id=turn.response_id,
                principal_id=turn.principal_id,
                conversation_id=conv.id,
                public_conversation_id=turn.conversation_id,
                previous_response_id=None if turn.previous is None else turn.previous.id,
                status=turn.status,
                model=turn.model,
                head_seq=head,
                created_at=turn.created_at,
                completed_at=turn.completed_at,
                body=turn.body,
            )
            conn.execute(
                responses.insert(),
                dict(
                    tenant_id=record.tenant_id,
                    id=record.id,
                    principal_id=record.principal_id,
                    conversation_id=record.conversation_id,
                    public_conversation_id=record.public_conversation_id,
                    previous_response_id=record.previous_response_id,
                    status=record.status,
                    model=record.model,
                    head_seq=record.head_seq,
                    body=dumps(record.body),
                    created_at=record.created_at,
                    completed_at=record.completed_at,
                ),
            )
            return record, stored_in, stored_out

    @staticmethod
    def _base_head(turn: TurnCommit, conv: Conversation) -> int:
        if turn.previous is not None and turn.conversation_id is None:
            return turn.previous.head_seq
        return conv.last_seq

    @staticmethod
    def _target(conn: sa.Connection, turn: TurnCommit) -> Conversation:
        """The conversation this turn appends to, locked; a branch of a chain becomes a fork."""
        if turn.conversation_id is not None:
            return load_conversation(
                conn,
                turn.tenant_id,
                turn.conversation_id,
                for_update=True,
                hidden_ok=False,
                param="conversation",
            )
        previous = turn.previous
        if previous is None:
            return insert_conversation(conn, turn.tenant_id, hidden=True, owner=turn.principal_id)
        base = load_conversation(conn, turn.tenant_id, previous.conversation_id, for_update=True)
        if base.hidden and base.last_seq == previous.head_seq:
            return base
        if not turn.keep_items:
            return base
        return insert_conversation(
            conn,
            turn.tenant_id,
            hidden=True,
            parent=base,
            fork_seq=previous.head_seq,
            owner=turn.principal_id,
        )

    def output_items(self, record: ResponseRecord) -> list[StoredItem]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(items)
                .where(
                    items.c.tenant_id == record.tenant_id,
                    items.c.response_id == record.id,
                    items.c.origin == "output",
                )
                .order_by(items.c.seq)
            )
            return [item_from_row(row) for row in rows]

    def list_input_items(
        self,
        tenant_id: str,
        response_id: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: str = "desc",
    ) -> Page:
        descending = order == "desc"
        with self.db.read() as conn:
            exists = conn.execute(
                sa.select(responses.c.id).where(
                    responses.c.tenant_id == tenant_id, id_equals(responses.c.id, response_id)
                )
            ).first()
            if exists is None:
                raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
            query = sa.select(items).where(
                items.c.tenant_id == tenant_id, items.c.response_id == response_id, items.c.origin == "input"
            )
            if after is not None:
                seq = conn.execute(
                    sa.select(items.c.seq).where(
                        items.c.tenant_id == tenant_id,
                        items.c.response_id == response_id,
                        id_equals(items.c.id, after),
                    )
                ).scalar()
                if seq is None:
                    raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
                query = query.where(items.c.seq < seq if descending else items.c.seq > seq)
            query = query.order_by(items.c.seq.desc() if descending else items.c.seq).limit(limit + 1)
            rows = [item_from_row(row) for row in conn.execute(query)]
        return Page(data=rows[:limit], has_more=len(rows) > limit)

    def delete(self, tenant_id: str, response_id: str, *, viewer: Viewer | None = None) -> None:
        """Delete the response and, for a durable one, its run, events, journal and approvals (a
        worker still running it can then no longer commit it); only its owner may."""
        with self.db.write() as conn:
            owner = _owner(conn, tenant_id, response_id)
            if viewer is not None and owner is not None and not viewer.may(owner, write=True):
                raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
            deleted = conn.execute(
                responses.delete().where(
                    responses.c.tenant_id == tenant_id, id_equals(responses.c.id, response_id)
                )
            ).rowcount
            deleted += conn.execute(
                runs.delete().where(runs.c.tenant_id == tenant_id, id_equals(runs.c.response_id, response_id))
            ).rowcount
            for table in (run_events, run_steps, approvals):
                conn.execute(
                    table.delete().where(
                        table.c.tenant_id == tenant_id, id_equals(table.c.response_id, response_id)
                    )
                )
            if not deleted:
                raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
            event = AuditEvent(
                action="response.delete",
                resource_type="response",
                resource_id=response_id,
                actor=None if viewer is None else viewer.principal_id,
            )
            append_audit(conn, tenant_id, [event])

    def record_model_call(self, call: ModelCallRecord) -> None:
        """A model call outside a turn (embeddings, for instance)."""
        with self.db.write() as conn:
            insert_model_calls(conn, call.tenant_id, [call], quotas=self.quotas)

    def model_calls(self, tenant_id: str, response_id: str) -> list[ModelCallRecord]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(model_calls)
                .where(model_calls.c.tenant_id == tenant_id, model_calls.c.response_id == response_id)
                .order_by(model_calls.c.id)
            )
            return [
                ModelCallRecord(
                    tenant_id=r.tenant_id,
                    id=r.id,
                    response_id=r.response_id,
                    principal_id=r.principal_id,
                    model=r.model,
                    provider=r.provider,
                    status=r.status,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    latency_ms=r.latency_ms,
                    manifest=json.loads(r.manifest),
                    error=r.error,
                    created_at=r.created_at,
                    cached_tokens=r.cached_tokens,
                    tokens_exact=bool(r.tokens_exact),
                    cost_usd=r.cost_usd,
                    key_id=r.key_id,
                )
                for r in rows
            ]

    def usage(
        self,
        tenant_id: str,
        *,
        start: int | None = None,
        end: int | None = None,
        principal_id: str | None = None,
    ) -> list[UsageRow]:
        """Model calls of a tenant (of one principal) between `start` and `end` (epoch seconds), by
        principal, model, day."""
        day = (model_calls.c.created_at // 86400).label("day")
        query = (
            sa.select(
                model_calls.c.principal_id,
                model_calls.c.model,
                day,
                sa.func.count().label("calls"),
                sa.func.sum(sa.case((model_calls.c.status == "failed", 1), else_=0)).label("failed"),
                sa.func.sum(model_calls.c.input_tokens).label("input_tokens"),
                sa.func.sum(model_calls.c.cached_tokens).label("cached_tokens"),
                sa.func.sum(model_calls.c.output_tokens).label("output_tokens"),
                sa.func.sum(model_calls.c.cost_usd).label("cost"),
            )
            .where(model_calls.c.tenant_id == tenant_id)
            .group_by(model_calls.c.principal_id, model_calls.c.model, day)
            .order_by(day, model_calls.c.principal_id, model_calls.c.model)
        )
        if principal_id is not None:
            query = query.where(model_calls.c.principal_id == principal_id)
        if start is not None:
            query = query.where(model_calls.c.created_at >= start)
        if end is not None:
            query = query.where(model_calls.c.created_at < end)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            UsageRow(
                tenant_id=tenant_id,
                principal_id=r.principal_id,
                model=r.model,
                day=time.strftime("%Y-%m-%d", time.gmtime(int(r.day) * 86400)),
                calls=int(r.calls),
                failed_calls=int(r.failed or 0),
                input_tokens=int(r.input_tokens or 0),
                cached_tokens=int(r.cached_tokens or 0),
                output_tokens=int(r.output_tokens or 0),
                cost_usd=None if r.cost is None else round(float(r.cost), 8),
            )
            for r in rows
        ]
