"""Places under concurrency limits: how many runs and plain turns a subject has going, and the place a
plain turn holds while it runs.

A durable run holds its place by its row in `runs` (queued, in progress or paused); a plain turn,
which keeps no row of its own, by a row in `quota_slots` that it renews while it runs and that lapses
when its process dies. `check_places` counts both for each bound subject in the transaction that
adds a run or a place, under a lock per subject (PostgreSQL: a transaction-level advisory lock, taken
after the conversation's row when a run is enqueued; SQLite: the write transaction's database lock),
so two processes cannot both take the last place. Which limits apply is not decided here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from sre.store.database import Database
from sre.store.schema import RUN_HOLDS_PLACE, quota_slots
from sre.store.tenancy import BOUND_TENANT, bind
from sre.types.ids import new_id
from sre.types.quotas import SUBJECTS, Bound, Subject

_LOCK_CLASS = 7215  # advisory locks of quota subjects (two-key form: apart from the migrations' lock)
# Statements built once with bound parameters (building SQLAlchemy statements afresh on every turn
# cost more than running them).
_HOLDING: dict[tuple[str, str], sa.TextClause] = {}
_NEW_PLACE = quota_slots.insert()
_PLACE = sa.and_(quota_slots.c.tenant_id == sa.bindparam("t"), quota_slots.c.id == sa.bindparam("p"))
_FREE_PLACE = quota_slots.delete().where(_PLACE)
_RENEW_PLACE = (
    quota_slots.update().where(_PLACE).values(expires_ms=sa.bindparam("until", type_=sa.BigInteger))
)
_LOCK = sa.text("SELECT pg_advisory_xact_lock(:c, hashtext(:k))")
_SWEEP_PLACES = quota_slots.delete().where(
    quota_slots.c.tenant_id == sa.bindparam("t"), quota_slots.c.expires_ms < sa.bindparam("before")
)


class LimitReached(Exception):
    """A count would go over `bound`; the transaction that counted it was rolled back."""

    def __init__(self, bound: Bound) -> None:
        super().__init__(f"{bound.limit} of {bound.subject.kind} {bound.subject.id}")
        self.bound = bound


def relaxed(conn: sa.Connection) -> None:
    """Counts and places may lose their last moments to a crash of PostgreSQL (a few requests counted
    less, a place that lapses in a minute): their commits do not wait for the disk."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def commit_alone(db: Database, statement: Any, params: dict[str, Any]) -> int:
    """Run one statement in a transaction of its own; its row count. On PostgreSQL, committed by
    itself: one round trip to the server instead of four."""
    if db.dialect == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if db.row_security:
                bind(conn, BOUND_TENANT.get())
            return int(conn.execute(statement, params).rowcount)
    with db.write() as conn:
        return int(conn.execute(statement, params).rowcount)


def ordered(subjects: Iterable[Subject]) -> list[Subject]:
    return sorted(set(subjects), key=lambda s: (SUBJECTS.index(s.kind), s.id))


def _holding(dialect: str, kind: str) -> sa.TextClause:
    """One count of a subject of `kind` (parameters t, i, now): its runs that hold a place, and plain
    turns' unexpired places. Text, for SQLite's `INDEXED BY`: without statistics it would count a
    tenant's runs through `ix_runs_conversation`, every finished background run of the tenant
    included."""
    found = _HOLDING.get((dialect, kind))
    if found is None:
        hint = " INDEXED BY ix_runs_active" if dialect == "sqlite" else ""
        runs = {"principal": " AND principal_id = :i", "key": " AND key_id = :i"}.get(kind, "")
        found = _HOLDING[(dialect, kind)] = sa.text(
            f"SELECT (SELECT count(*) FROM runs{hint} WHERE tenant_id = :t AND {RUN_HOLDS_PLACE}{runs})"
            f" + (SELECT count(*) FROM quota_slots WHERE tenant_id = :t AND expires_ms > :now{runs})"
        )
    return found


def places_held(conn: sa.Connection, tenant_id: str, subject: Subject, now_ms: int) -> int:
    """The subject's runs that hold a place (queued, running or paused) and plain turns' places."""
    params: dict[str, Any] = {"t": tenant_id, "now": now_ms}
    if subject.kind != "tenant":
        params["i"] = subject.id
    return int(conn.execute(_holding(conn.dialect.name, subject.kind), params).scalar_one())


def check_places(conn: sa.Connection, tenant_id: str, bounds: Sequence[Bound]) -> None:
    """In the transaction that adds a run or a place: lock the bounds' subjects, then `LimitReached`
    for the first that has no place left."""
    if not bounds:
        return
    if conn.dialect.name == "postgresql":
        for subject in ordered(b.subject for b in bounds):
            conn.execute(_LOCK, {"c": _LOCK_CLASS, "k": f"{tenant_id}/{subject.kind}/{subject.id}"})
    now_ms = int(time.time() * 1000)
    for bound in sorted(bounds, key=lambda b: SUBJECTS.index(b.subject.kind)):
        if bound.value == 0 or places_held(conn, tenant_id, bound.subject, now_ms) >= bound.value:
            raise LimitReached(bound)


class PlaceRepository:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._swept: dict[str, int] = {}

    def take_place(
        self, tenant_id: str, principal_id: str, key_id: str | None, bounds: Sequence[Bound], lifetime: float
    ) -> str:
        """A plain turn's place under the bounds (`LimitReached` if one has none left), held for
        `lifetime` seconds unless renewed; its id."""
        place = new_id("qp")
        now_ms = int(time.time() * 1000)
        row = {"tenant_id": tenant_id, "id": place, "principal_id": principal_id, "key_id": key_id}
        with self.db.write() as conn:
            relaxed(conn)
            check_places(conn, tenant_id, bounds)
            if now_ms - self._swept.get(tenant_id, 0) > 60_000:  # places of processes that died
                self._swept[tenant_id] = now_ms
                conn.execute(_SWEEP_PLACES, {"t": tenant_id, "before": now_ms - 60_000})
            conn.execute(
                _NEW_PLACE, {**row, "expires_ms": now_ms + int(lifetime * 1000), "created_at": now_ms // 1000}
            )
        return place

    def renew_place(self, tenant_id: str, place: str, lifetime: float) -> None:
        commit_alone(
            self.db, _RENEW_PLACE, {"t": tenant_id, "p": place, "until": int((time.time() + lifetime) * 1000)}
        )

    def free_place(self, tenant_id: str, place: str) -> None:
        commit_alone(self.db, _FREE_PLACE, {"t": tenant_id, "p": place})
