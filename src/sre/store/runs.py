"""Durable runs: the queue, the workers' leases, the step journal and the run's persisted stream events.

A run is enqueued with its first event in one transaction (on PostgreSQL the commit also sends a
`NOTIFY` so idle workers wake at once). A run on a named conversation waits behind the conversation's
older active runs, so one runs at a time and items keep one order; the enqueue applies the agent's
concurrency policy (reject, enqueue, interrupt) inside the same transaction. `claim_runnable_run`
hands a queued run, or one whose lease expired, to one worker: PostgreSQL picks it with
`FOR UPDATE SKIP LOCKED`, SQLite inside a `BEGIN IMMEDIATE` transaction. Every later write of a worker
(a step, events, a pause, the final commit) checks that the run still names its lease, so a worker
that lost its lease can never write again. A step's journal rows, its events and the run's cursor
commit together; a new attempt drops only the events written after the last committed step. Nothing
here knows about models, tools or HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as sa_postgresql
from sqlalchemy.dialects import sqlite as sa_sqlite

from sre.store.conversations import dumps
from sre.store.database import Database, id_equals
from sre.store.model_calls import insert_model_calls
from sre.store.places import check_places
from sre.store.quotas import QuotaRepository
from sre.store.schema import approvals, conversations, run_events, run_steps, runs
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, NotFound
from sre.types.quotas import Bound
from sre.types.records import ApprovalRecord, Lease, ModelCallRecord, RunRecord, StepRecord
from sre.types.status import ACTIVE, CANCELLED, IN_PROGRESS, QUEUED, REQUIRES_ACTION, TERMINAL
from sre.types.steps import RunPayload, step_data_from_stored

if TYPE_CHECKING:
    from sre.store.listener import RunListener

NOTIFY_CHANNEL = "sre_runs"


class LeaseLost(Exception):
    """The run is no longer this worker's: its lease expired and another worker took it, or it ended."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def run_from_row(row: sa.Row[Any]) -> RunRecord:
    m = row._mapping
    return RunRecord(
        tenant_id=m["tenant_id"],
        response_id=m["response_id"],
        principal_id=m["principal_id"],
        status=m["status"],
        payload=RunPayload.model_validate(json.loads(m["request"])),
        attempts=m["attempts"],
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        cancel_requested=bool(m["cancel_requested"]),
        created_at=m["created_at"],
        conversation_id=m["conversation_id"],
        background=bool(m["background"]),
        steps=m["steps"],
        key_id=m["key_id"],
    )


def _event_rows(
    tenant_id: str, response_id: str, attempt: int, events: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    now = int(time.time())
    return [
        dict(
            tenant_id=tenant_id,
            response_id=response_id,
            sequence_number=e["sequence_number"],
            attempt=attempt,
            type=e["type"],
            data=dumps(e),
            created_at=now,
        )
        for e in events
    ]


# The statements of a step's commit, built once with bound parameters: building SQLAlchemy
# statements afresh on every commit cost more than running them.
_HELD = sa.and_(
    runs.c.tenant_id == sa.bindparam("held_tenant"),
    runs.c.response_id == sa.bindparam("held_response"),
    runs.c.lease_owner == sa.bindparam("held_owner"),
    runs.c.attempts == sa.bindparam("held_attempt"),
    runs.c.status == IN_PROGRESS,
)
_RENEW = (
    runs.update()
    .where(_HELD)
    .values(
        lease_expires_at=sa.bindparam("renew_expires", type_=sa.BigInteger),
        committed_sequence=sa.func.coalesce(
            sa.bindparam("renew_committed", type_=sa.BigInteger), runs.c.committed_sequence
        ),
        steps=sa.func.coalesce(sa.bindparam("renew_cursor", type_=sa.Integer), runs.c.steps),
    )
)
_RENEW_RETURNING = _RENEW.returning(runs.c.cancel_requested)
_CANCEL_REQUESTED = sa.select(runs.c.cancel_requested).where(_HELD).with_for_update()
_DROP_FOREGROUND = runs.delete().where(_HELD, runs.c.background.is_(False))
_END = (
    runs.update()
    .where(_HELD)
    .values(
        status=sa.bindparam("end_status"),
        lease_owner=None,
        lease_expires_at=None,
        updated_at=sa.bindparam("end_at", type_=sa.BigInteger),
    )
)
_DROP_STEPS = run_steps.delete().where(
    run_steps.c.tenant_id == sa.bindparam("of_tenant"), run_steps.c.response_id == sa.bindparam("of_response")
)
_DROP_EVENTS = run_events.delete().where(
    run_events.c.tenant_id == sa.bindparam("of_tenant"),
    run_events.c.response_id == sa.bindparam("of_response"),
)
_PAUSE = runs.update().where(_HELD).values(status=REQUIRES_ACTION)
_RELEASE = runs.update().where(_HELD).values(lease_expires_at=0)
_UPSERT_STEPS: dict[str, Any] = {}


def _held_params(lease: Lease) -> dict[str, Any]:
    return {
        "held_tenant": lease.tenant_id,
        "held_response": lease.response_id,
        "held_owner": lease.owner,
        "held_attempt": lease.attempt,
    }


def _of(lease: Lease) -> dict[str, Any]:
    return {"of_tenant": lease.tenant_id, "of_response": lease.response_id}


def _upsert_steps(dialect: str) -> Any:
    """One statement that inserts journal rows or replaces those with the same key."""
    found = _UPSERT_STEPS.get(dialect)
    if found is None:
        insert = (sa_postgresql.insert if dialect == "postgresql" else sa_sqlite.insert)(run_steps)
        found = insert.on_conflict_do_update(
            index_elements=[
                run_steps.c.tenant_id,
                run_steps.c.response_id,
                run_steps.c.step,
                run_steps.c.call_id,
            ],
            set_={
                "kind": insert.excluded.kind,
                "status": insert.excluded.status,
                "data": insert.excluded.data,
            },
        )
        _UPSERT_STEPS[dialect] = found
    return found


def _this(tenant_id: str, response_id: str) -> sa.ColumnElement[bool]:
    return sa.and_(runs.c.tenant_id == tenant_id, runs.c.response_id == response_id)


def _runnable() -> sa.ColumnElement[bool]:
    """Queued and first in its conversation's line, or in progress under an expired lease."""
    ahead = runs.alias("ahead")
    blocked = sa.exists().where(
        ahead.c.tenant_id == runs.c.tenant_id,
        ahead.c.conversation_id == runs.c.conversation_id,
        ahead.c.status.in_(ACTIVE),
        sa.or_(
            ahead.c.queued_ms < runs.c.queued_ms,
            sa.and_(ahead.c.queued_ms == runs.c.queued_ms, ahead.c.response_id < runs.c.response_id),
        ),
    )
    return sa.or_(
        sa.and_(runs.c.status == QUEUED, sa.or_(runs.c.conversation_id.is_(None), ~blocked)),
        sa.and_(runs.c.status == IN_PROGRESS, runs.c.lease_expires_at < _now_ms()),
    )


def _last_sequence(conn: sa.Connection, tenant_id: str, response_id: str) -> int:
    last = conn.execute(
        sa.select(sa.func.max(run_events.c.sequence_number)).where(
            run_events.c.tenant_id == tenant_id, run_events.c.response_id == response_id
        )
    ).scalar()
    return -1 if last is None else int(last)


def _notify(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")


def append_final(conn: sa.Connection, run: RunRecord, final: dict[str, Any]) -> None:
    """Append `final` (a response.* event without a number) as the run's next event."""
    event = {**final, "sequence_number": _last_sequence(conn, run.tenant_id, run.response_id) + 1}
    conn.execute(run_events.insert(), _event_rows(run.tenant_id, run.response_id, 0, [event]))


def _cancel_approvals(conn: sa.Connection, run: RunRecord) -> None:
    conn.execute(
        approvals.update()
        .where(
            approvals.c.tenant_id == run.tenant_id,
            approvals.c.response_id == run.response_id,
            approvals.c.status == "pending",
        )
        .values(status="cancelled", decided_at=int(time.time()))
    )


def cancel_now(conn: sa.Connection, run: RunRecord) -> None:
    """Inside a caller's transaction: end a run no worker holds (queued, or waiting on an action)."""
    conn.execute(
        runs.update()
        .where(_this(run.tenant_id, run.response_id))
        .values(status=CANCELLED, lease_owner=None, lease_expires_at=None, updated_at=int(time.time()))
    )
    _cancel_approvals(conn, run)
    conn.execute(
        run_steps.delete().where(
            run_steps.c.tenant_id == run.tenant_id, run_steps.c.response_id == run.response_id
        )
    )
    append_final(conn, run, {"type": "response.incomplete", "response": cancelled_object(run)})


def cancelled_object(run: RunRecord) -> dict[str, Any]:
    return {**run.payload.response, "status": CANCELLED}


def finish_run(
    conn: sa.Connection,
    lease: Lease,
    status: str,
    events: Sequence[dict[str, Any]],
    *,
    responded: bool = False,
) -> None:
    """Inside a caller's transaction: end the run with `status`, append its last events and drop its
    journal (its items are committed by now). With `responded` (its response row is written in the
    same transaction), a run the client did not ask to keep in the background goes entirely: its
    events only carried the stream, and the response is the record."""
    held = _held_params(lease)
    if responded and conn.execute(_DROP_FOREGROUND, held).rowcount:
        conn.execute(_DROP_STEPS, _of(lease))
        conn.execute(_DROP_EVENTS, _of(lease))
        return
    ended = conn.execute(_END, {**held, "end_status": status, "end_at": int(time.time())}).rowcount
    if not ended:
        raise LeaseLost(f"run {lease.response_id} is no longer held by {lease.owner}")
    conn.execute(_DROP_STEPS, _of(lease))
    if events:
        conn.execute(
            run_events.insert(), _event_rows(lease.tenant_id, lease.response_id, lease.attempt, events)
        )


def _step_rows(lease: Lease, steps: Sequence[StepRecord]) -> list[dict[str, Any]]:
    now = int(time.time())
    return [
        dict(
            tenant_id=lease.tenant_id,
            response_id=lease.response_id,
            step=s.step,
            call_id=s.call_id,
            kind=s.kind,
            status=s.status,
            data=dumps(s.data.model_dump(mode="json")),
            created_at=now,
        )
        for s in steps
    ]


def put_steps(conn: sa.Connection, tenant_id: str, response_id: str, steps: Sequence[StepRecord]) -> None:
    """Write journal rows, replacing rows with the same key (a `started` call becoming `completed`):
    one upsert for all of them."""
    if not steps:
        return
    lease = Lease(tenant_id=tenant_id, response_id=response_id, owner="", attempt=0, next_sequence=0)
    conn.execute(_upsert_steps(conn.dialect.name), _step_rows(lease, steps))


def pending_actions(conn: sa.Connection, tenant_id: str, response_id: str) -> int:
    """How many decisions and client tool outputs a paused run still waits for."""
    calls = conn.execute(
        sa.select(sa.func.count()).where(
            run_steps.c.tenant_id == tenant_id,
            run_steps.c.response_id == response_id,
            run_steps.c.kind == "client",
            run_steps.c.status == "pending",
        )
    ).scalar_one()
    waiting = conn.execute(
        sa.select(sa.func.count()).where(
            approvals.c.tenant_id == tenant_id,
            approvals.c.response_id == response_id,
            approvals.c.status == "pending",
        )
    ).scalar_one()
    return int(calls) + int(waiting)


def requeue_if_ready(conn: sa.Connection, tenant_id: str, response_id: str) -> bool:
    """Put a paused run back in the queue once nothing is pending; return whether it was."""
    if pending_actions(conn, tenant_id, response_id):
        return False
    done = conn.execute(
        runs.update()
        .where(_this(tenant_id, response_id), runs.c.status == REQUIRES_ACTION)
        .values(status=QUEUED, updated_at=int(time.time()))
    ).rowcount
    if done:
        _notify(conn)
    return bool(done)


_ACTIVE_RUNS = (
    sa.select(runs)
    .where(
        runs.c.tenant_id == sa.bindparam("t"),
        runs.c.conversation_id == sa.bindparam("c"),
        runs.c.status.in_(ACTIVE),
    )
    .order_by(runs.c.queued_ms)
)
_ACTIVE_ON = _ACTIVE_RUNS.limit(1)


def active_run(conn: sa.Connection, tenant_id: str, conversation_id: str) -> RunRecord | None:
    """The oldest queued, running or paused run on a conversation, if any."""
    row = conn.execute(_ACTIVE_ON, {"t": tenant_id, "c": conversation_id}).first()
    return None if row is None else run_from_row(row)


class RunRepository:
    def __init__(self, db: Database, quotas: QuotaRepository | None = None) -> None:
        self.db = db
        self.quotas = quotas

    def enqueue(
        self,
        tenant_id: str,
        response_id: str,
        principal_id: str,
        payload: RunPayload,
        first: dict[str, Any],
        *,
        conversation_id: str | None = None,
        background: bool = True,
        policy: str = "enqueue",
        owner: str | None = None,
        lease_seconds: float = 10.0,
        key_id: str | None = None,
        limits: Sequence[Bound] = (),
    ) -> Lease | None:
        """Queue a run and its first event (`response.queued`) in one transaction.

        On a named conversation with an active run, `policy` decides: `reject` raises `Conflict`,
        `enqueue` queues behind it, `interrupt` cancels the active runs (a running one at its next
        step) and queues behind them. `limits` (concurrent runs) are checked in the same transaction,
        after the conversation's lock (`LimitReached` if one has no place left). With an `owner`, a
        run that can start at once is claimed for it and its `Lease` returned.
        """
        now = int(time.time())
        with self.db.write() as conn:
            startable = True
            if conversation_id is not None:
                if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE serialises them already
                    conn.execute(  # serialise enqueues on one conversation
                        sa.select(conversations.c.id)
                        .where(conversations.c.tenant_id == tenant_id, conversations.c.id == conversation_id)
                        .with_for_update()
                    )
                active = [
                    run_from_row(r)
                    for r in conn.execute(_ACTIVE_RUNS, {"t": tenant_id, "c": conversation_id})
                ]
                if active and policy == "reject":
                    raise Conflict(
                        f"Conversation '{conversation_id}' already has an active response "
                        f"('{active[0].response_id}', {active[0].status}); its agent's concurrency policy "
                        "is 'reject'. Wait for it to finish or cancel it.",
                        param="conversation",
                        code="conversation_busy",
                    )
                for run in active if policy == "interrupt" else []:
                    if run.status == IN_PROGRESS:
                        conn.execute(
                            runs.update()
                            .where(_this(tenant_id, run.response_id))
                            .values(cancel_requested=True)
                        )
                    else:
                        cancel_now(conn, run)
                # Interrupted runs that were not running are gone now; a running one stops at its next step.
                startable = not [r for r in active if policy != "interrupt" or r.status == IN_PROGRESS]
            check_places(conn, tenant_id, limits)
            claim = owner is not None and startable
            conn.execute(
                runs.insert(),
                dict(
                    tenant_id=tenant_id,
                    response_id=response_id,
                    principal_id=principal_id,
                    status=IN_PROGRESS if claim else QUEUED,
                    request=dumps(payload.model_dump(mode="json")),
                    attempts=1 if claim else 0,
                    lease_owner=owner if claim else None,
                    lease_expires_at=_now_ms() + int(lease_seconds * 1000) if claim else None,
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                    conversation_id=conversation_id,
                    queued_ms=_now_ms(),
                    background=background,
                    steps=0,
                    committed_sequence=0,
                    key_id=key_id,
                ),
            )
            conn.execute(run_events.insert(), _event_rows(tenant_id, response_id, 0, [first]))
            if not claim:
                _notify(conn)
        if not claim:
            return None
        assert owner is not None
        return Lease(tenant_id=tenant_id, response_id=response_id, owner=owner, attempt=1, next_sequence=1)

    def get(self, tenant_id: str, response_id: str) -> RunRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(runs).where(
                    runs.c.tenant_id == tenant_id, id_equals(runs.c.response_id, response_id)
                )
            ).first()
        return None if row is None else run_from_row(row)

    def claim_runnable_run(
        self, worker_id: str, lease_seconds: float, *, only: tuple[str, str] | None = None
    ) -> tuple[RunRecord, Lease] | None:
        """Take the oldest runnable run (or, with `only`, that tenant's run) for `worker_id`; None if
        there is none.

        A new attempt drops the events a dead attempt wrote after the last committed step; its own
        events continue the numbering, so a client resuming from an old sequence number sees it whole.
        """
        now = _now_ms()
        runnable = _runnable()
        if only is not None:
            runnable = sa.and_(runnable, _this(*only))
        with self.db.read() as conn:  # idle workers poll: look before taking the write lock
            if conn.execute(sa.select(runs.c.response_id).where(runnable).limit(1)).first() is None:
                return None
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(runs)
                .where(runnable)
                .order_by(runs.c.queued_ms)
                .limit(1)
                .with_for_update(skip_locked=True, of=runs)
            ).first()
            if row is None:
                return None
            run = run_from_row(row)
            attempt = run.attempts + 1
            conn.execute(
                runs.update()
                .where(_this(run.tenant_id, run.response_id))
                .values(
                    status=IN_PROGRESS,
                    attempts=attempt,
                    lease_owner=worker_id,
                    lease_expires_at=now + int(lease_seconds * 1000),
                    updated_at=now // 1000,
                )
            )
            last = _last_sequence(conn, run.tenant_id, run.response_id)
            conn.execute(
                run_events.delete().where(
                    run_events.c.tenant_id == run.tenant_id,
                    run_events.c.response_id == run.response_id,
                    run_events.c.attempt > 0,
                    run_events.c.sequence_number > row._mapping["committed_sequence"],
                )
            )
        lease = Lease(
            tenant_id=run.tenant_id,
            response_id=run.response_id,
            owner=worker_id,
            attempt=attempt,
            next_sequence=last + 1,
        )
        return run, lease

    def _renew(self, conn: sa.Connection, lease: Lease, lease_seconds: float, **values: Any) -> bool:
        """Extend the lease (raising `LeaseLost` if it is gone), moving the cursor to `values`
        (`committed_sequence`, `steps`) where given; return whether cancel was requested. One
        statement where the database returns what it updates."""
        params = {
            **_held_params(lease),
            "renew_expires": _now_ms() + int(lease_seconds * 1000),
            "renew_committed": values.get("committed_sequence"),
            "renew_cursor": values.get("steps"),
        }
        if self.db.returning:
            row = conn.execute(_RENEW_RETURNING, params).first()
        else:
            row = conn.execute(_CANCEL_REQUESTED, params).first()
            if row is not None:
                conn.execute(_RENEW, params)
        if row is None:
            raise LeaseLost(f"run {lease.response_id} is no longer held by {lease.owner}")
        return bool(row.cancel_requested)

    def heartbeat(self, lease: Lease, lease_seconds: float) -> bool:
        with self.db.write() as conn:
            return self._renew(conn, lease, lease_seconds)

    def append_events(self, lease: Lease, events: Sequence[dict[str, Any]], lease_seconds: float) -> bool:
        """Append a batch of the attempt's events and renew its lease; return whether to cancel."""
        with self.db.write() as conn:
            cancel = self._renew(conn, lease, lease_seconds)
            if events:
                conn.execute(
                    run_events.insert(),
                    _event_rows(lease.tenant_id, lease.response_id, lease.attempt, events),
                )
            return cancel

    # -- the step journal -------------------------------------------------------------------------

    def steps(self, tenant_id: str, response_id: str) -> list[StepRecord]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(run_steps)
                .where(run_steps.c.tenant_id == tenant_id, run_steps.c.response_id == response_id)
                .order_by(run_steps.c.step, run_steps.c.created_at)
            )
            return [
                StepRecord(
                    step=r.step,
                    call_id=r.call_id,
                    kind=r.kind,
                    status=r.status,
                    data=step_data_from_stored(r.kind, json.loads(r.data)),
                )
                for r in rows
            ]

    def commit_step(
        self,
        lease: Lease,
        steps: Sequence[StepRecord],
        events: Sequence[dict[str, Any]],
        lease_seconds: float,
        *,
        model_calls: Sequence[ModelCallRecord] = (),
        cursor: int | None = None,
        audit: Sequence[AuditEvent] = (),
    ) -> bool:
        """One transaction: journal rows, the step's events, its model call records, its audit events
        and the run's cursor (the committed step count and last event), renewing the lease; return
        whether to cancel."""
        values: dict[str, Any] = {}
        if events:
            values["committed_sequence"] = events[-1]["sequence_number"]
        if cursor is not None:
            values["steps"] = cursor
        with self.db.write() as conn:
            cancel = self._renew(conn, lease, lease_seconds, **values)
            put_steps(conn, lease.tenant_id, lease.response_id, steps)
            insert_model_calls(conn, lease.tenant_id, model_calls, audit, quotas=self.quotas)
            if events:
                conn.execute(
                    run_events.insert(),
                    _event_rows(lease.tenant_id, lease.response_id, lease.attempt, events),
                )
            return cancel

    def pause(
        self,
        lease: Lease,
        steps: Sequence[StepRecord],
        events: Sequence[dict[str, Any]],
        new_approvals: Sequence[ApprovalRecord],
    ) -> bool:
        """Stop the run in `requires_action`: pending client calls (journal rows) and approvals are
        written with its last events, and the lease is let go. If everything it waits for was already
        decided, it goes back to the queue instead; return whether it paused."""
        with self.db.write() as conn:
            if not conn.execute(_PAUSE, _held_params(lease)).rowcount:
                raise LeaseLost(f"run {lease.response_id} is no longer held by {lease.owner}")
            put_steps(conn, lease.tenant_id, lease.response_id, steps)
            if new_approvals:
                from sre.store.approvals import approval_row  # it imports this module

                conn.execute(approvals.insert(), [approval_row(a) for a in new_approvals])
            values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
            if events:
                conn.execute(
                    run_events.insert(),
                    _event_rows(lease.tenant_id, lease.response_id, lease.attempt, events),
                )
                values["committed_sequence"] = events[-1]["sequence_number"]
            conn.execute(runs.update().where(_this(lease.tenant_id, lease.response_id)).values(**values))
            return not requeue_if_ready(conn, lease.tenant_id, lease.response_id)

    def release(self, lease: Lease) -> None:
        """Give a run back before its lease expires (a worker shutting down): claimable at once."""
        with self.db.write() as conn:
            conn.execute(_RELEASE, _held_params(lease))

    def finish(self, lease: Lease, status: str, events: Sequence[dict[str, Any]]) -> None:
        """End a run that produced no turn to commit (its request could no longer be prepared)."""
        with self.db.write() as conn:
            finish_run(conn, lease, status, events)

    def cancel(self, tenant_id: str, response_id: str) -> RunRecord:
        """Cancel a queued or paused run now, or flag it for a worker to end (a running one, or a
        paused one whose tools ran); `Conflict` for a finished run."""
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(runs)
                .where(runs.c.tenant_id == tenant_id, id_equals(runs.c.response_id, response_id))
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
            run = run_from_row(row)
            if run.status in TERMINAL:
                raise Conflict(
                    f"Response '{response_id}' is already {run.status}; only a queued, in-progress or "
                    "paused response can be cancelled.",
                    code="response_not_cancellable",
                )
            where = _this(run.tenant_id, run.response_id)
            ran_tools = conn.execute(
                sa.select(run_steps.c.call_id)
                .where(
                    run_steps.c.tenant_id == run.tenant_id,
                    run_steps.c.response_id == run.response_id,
                    run_steps.c.kind == "tool",
                )
                .limit(1)
            ).first()
            if run.status in (QUEUED, REQUIRES_ACTION) and ran_tools is None:
                cancel_now(conn, run)
                return run_from_row(conn.execute(sa.select(runs).where(where)).one())
            # A running run stops at its next chunk or step; a paused one whose tools ran goes back
            # to the queue to end there, so that what ran joins the conversation.
            conn.execute(runs.update().where(where).values(cancel_requested=True))
            if run.status == REQUIRES_ACTION:
                _cancel_approvals(conn, run)
                conn.execute(runs.update().where(where).values(status=QUEUED))
                _notify(conn)
            return run_from_row(conn.execute(sa.select(runs).where(where)).one())

    def events_after(
        self, tenant_id: str, response_id: str, after: int, limit: int = 500
    ) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(run_events.c.data)
                .where(
                    run_events.c.tenant_id == tenant_id,
                    run_events.c.response_id == response_id,
                    run_events.c.sequence_number > after,
                )
                .order_by(run_events.c.sequence_number)
                .limit(limit)
            )
            return [json.loads(r.data) for r in rows]

    def active_on(self, tenant_id: str, conversation_id: str) -> RunRecord | None:
        """The oldest queued, running or paused run on a conversation, if any."""
        with self.db.read() as conn:
            return active_run(conn, tenant_id, conversation_id)

    def lease_owners(self, prefix: str) -> list[str]:
        """The owners (all tenants) holding runs whose ids start with `prefix` (one machine's)."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(runs.c.lease_owner)
                .where(runs.c.status == IN_PROGRESS, runs.c.lease_owner.startswith(prefix, autoescape=True))
                .distinct()
            )
            return [r.lease_owner for r in rows]

    def expire_owner(self, owner: str) -> int:
        """End the leases `owner` holds now (it is known to be dead): its runs are claimable at once."""
        with self.db.write() as conn:
            return conn.execute(
                runs.update()
                .where(runs.c.status == IN_PROGRESS, runs.c.lease_owner == owner)
                .values(lease_expires_at=0)
            ).rowcount

    def last_sequence(self, tenant_id: str, response_id: str) -> int:
        with self.db.read() as conn:
            return _last_sequence(conn, tenant_id, response_id)

    def counts(self) -> dict[str, int]:
        """Runs by status (all tenants): for tests, benchmarks and health pages."""
        with self.db.read() as conn:
            rows = conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status))
            return {r[0]: int(r[1]) for r in rows}

    def listener(self) -> RunListener:
        from sre.store.listener import RunListener  # it imports this module

        return RunListener(self.db)
