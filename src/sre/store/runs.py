"""Background runs: the queue, the workers' leases, and the run's persisted stream events.

A run is enqueued with its first event in one transaction (on PostgreSQL the commit also sends a
`NOTIFY` so idle workers wake at once). `claim_runnable_run` hands a queued run, or one whose
lease expired, to one worker: PostgreSQL picks it with `FOR UPDATE SKIP LOCKED`, SQLite inside a
`BEGIN IMMEDIATE` transaction. Every later write of a worker (events, heartbeat, the final commit)
checks that the run still names its lease, so a worker that lost its lease can never write again,
and a new attempt deletes the events of the dead one. Nothing here knows about models or HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from sre.store.conversations import dumps, id_equals
from sre.store.database import Database
from sre.store.schema import run_events, runs
from sre.types.errors import Conflict, NotFound
from sre.types.records import Lease, RunRecord

TERMINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})
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
        request=json.loads(m["request"]),
        attempts=m["attempts"],
        lease_owner=m["lease_owner"],
        lease_expires_at=m["lease_expires_at"],
        cancel_requested=bool(m["cancel_requested"]),
        created_at=m["created_at"],
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


def _held(lease: Lease) -> sa.ColumnElement[bool]:
    return sa.and_(
        runs.c.tenant_id == lease.tenant_id,
        runs.c.response_id == lease.response_id,
        runs.c.lease_owner == lease.owner,
        runs.c.attempts == lease.attempt,
        runs.c.status == "in_progress",
    )


def finish_run(conn: sa.Connection, lease: Lease, status: str, events: Sequence[dict[str, Any]]) -> None:
    """Inside a caller's transaction: end the run with `status` and append its last events."""
    done = conn.execute(
        runs.update()
        .where(_held(lease))
        .values(status=status, lease_owner=None, lease_expires_at=None, updated_at=int(time.time()))
    ).rowcount
    if not done:
        raise LeaseLost(f"run {lease.response_id} is no longer held by {lease.owner}")
    if events:
        conn.execute(
            run_events.insert(), _event_rows(lease.tenant_id, lease.response_id, lease.attempt, events)
        )


class RunRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def enqueue(
        self,
        tenant_id: str,
        response_id: str,
        principal_id: str,
        request: dict[str, Any],
        first: dict[str, Any],
    ) -> None:
        """Queue a run and its first event (`response.queued`) in one transaction."""
        now = int(time.time())
        with self.db.write() as conn:
            conn.execute(
                runs.insert(),
                dict(
                    tenant_id=tenant_id,
                    response_id=response_id,
                    principal_id=principal_id,
                    status="queued",
                    request=dumps(request),
                    attempts=0,
                    lease_owner=None,
                    lease_expires_at=None,
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                ),
            )
            conn.execute(run_events.insert(), _event_rows(tenant_id, response_id, 0, [first]))
            if self.db.dialect == "postgresql":
                conn.exec_driver_sql(f"NOTIFY {NOTIFY_CHANNEL}")

    def get(self, tenant_id: str, response_id: str) -> RunRecord | None:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(runs).where(
                    runs.c.tenant_id == tenant_id, id_equals(runs.c.response_id, response_id)
                )
            ).first()
        return None if row is None else run_from_row(row)

    def claim_runnable_run(self, worker_id: str, lease_seconds: float) -> tuple[RunRecord, Lease] | None:
        """Take the oldest queued run, or one whose lease expired, for `worker_id`; None if there is none.

        A new attempt drops the events a dead attempt had written; its own events continue the
        numbering, so a client resuming from an old sequence number sees the new attempt whole.
        """
        now = _now_ms()
        runnable = sa.or_(
            runs.c.status == "queued",
            sa.and_(runs.c.status == "in_progress", runs.c.lease_expires_at < now),
        )
        with self.db.read() as conn:  # idle workers poll: look before taking the write lock
            if conn.execute(sa.select(runs.c.response_id).where(runnable).limit(1)).first() is None:
                return None
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(runs)
                .where(runnable)
                .order_by(runs.c.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            run = run_from_row(row)
            attempt = run.attempts + 1
            conn.execute(
                runs.update()
                .where(runs.c.tenant_id == run.tenant_id, runs.c.response_id == run.response_id)
                .values(
                    status="in_progress",
                    attempts=attempt,
                    lease_owner=worker_id,
                    lease_expires_at=now + int(lease_seconds * 1000),
                    updated_at=now // 1000,
                )
            )
            last = conn.execute(
                sa.select(sa.func.max(run_events.c.sequence_number)).where(
                    run_events.c.tenant_id == run.tenant_id, run_events.c.response_id == run.response_id
                )
            ).scalar()
            conn.execute(
                run_events.delete().where(
                    run_events.c.tenant_id == run.tenant_id,
                    run_events.c.response_id == run.response_id,
                    run_events.c.attempt > 0,
                )
            )
        lease = Lease(
            tenant_id=run.tenant_id,
            response_id=run.response_id,
            owner=worker_id,
            attempt=attempt,
            next_sequence=(-1 if last is None else int(last)) + 1,
        )
        return run, lease

    def _renew(self, conn: sa.Connection, lease: Lease, lease_seconds: float) -> bool:
        """Extend the lease (raising `LeaseLost` if it is gone); return whether cancel was requested."""
        row = conn.execute(sa.select(runs.c.cancel_requested).where(_held(lease)).with_for_update()).first()
        if row is None:
            raise LeaseLost(f"run {lease.response_id} is no longer held by {lease.owner}")
        conn.execute(
            runs.update().where(_held(lease)).values(lease_expires_at=_now_ms() + int(lease_seconds * 1000))
        )
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

    def release(self, lease: Lease) -> None:
        """Give a run back before its lease expires (a worker shutting down): claimable at once."""
        with self.db.write() as conn:
            conn.execute(runs.update().where(_held(lease)).values(lease_expires_at=0))

    def finish(self, lease: Lease, status: str, events: Sequence[dict[str, Any]]) -> None:
        """End a run that produced no turn to commit (its request could no longer be prepared)."""
        with self.db.write() as conn:
            finish_run(conn, lease, status, events)

    def cancel(self, tenant_id: str, response_id: str, final: dict[str, Any]) -> RunRecord:
        """Cancel a queued run now (appending `final` as its last event), or flag a running one for its
        worker; `Conflict` for a finished run. `final` gets the next sequence number."""
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
                    f"Response '{response_id}' is already {run.status}; only a queued or in-progress "
                    "background response can be cancelled.",
                    code="response_not_cancellable",
                )
            where = sa.and_(runs.c.tenant_id == run.tenant_id, runs.c.response_id == run.response_id)
            if run.status == "queued":
                conn.execute(
                    runs.update().where(where).values(status="cancelled", updated_at=int(time.time()))
                )
                last = conn.execute(
                    sa.select(sa.func.max(run_events.c.sequence_number)).where(
                        run_events.c.tenant_id == run.tenant_id, run_events.c.response_id == run.response_id
                    )
                ).scalar()
                event = {**final, "sequence_number": (-1 if last is None else int(last)) + 1}
                conn.execute(run_events.insert(), _event_rows(run.tenant_id, run.response_id, 0, [event]))
                return run_from_row(conn.execute(sa.select(runs).where(where)).one())
            conn.execute(runs.update().where(where).values(cancel_requested=True))
            return run

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

    def listener(self) -> RunListener:
        return RunListener(self.db)


class RunListener:
    """Wake-ups for one worker: PostgreSQL `LISTEN` on a connection of its own, SQLite a plain wait.

    The listening connection stays open, so a `NOTIFY` sent between two waits is not lost.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: Any = None

    def wait(self, timeout: float) -> None:
        """Block until a run may have been enqueued or `timeout` passes (the polling fallback)."""
        if self.db.dialect != "postgresql":
            time.sleep(timeout)
            return
        import psycopg

        if self._conn is None:
            url = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._conn = psycopg.connect(url, autocommit=True)
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                break
        except Exception:  # a lost connection, or closed at shutdown
            self._conn = None  # reconnect on the next wait
            time.sleep(timeout)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
