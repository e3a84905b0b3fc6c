"""Quotas' storage: subjects' own limits and the counters limits are checked against (the places
under concurrency limits are `sre.store.places`').

Requests are counted in fixed one-minute windows, one row per subject and window, each by one atomic
statement, an upsert that counts only below the limit (`INSERT … ON CONFLICT DO UPDATE SET n = n + 1
WHERE n < limit`; a row count of 0: over); a request bound by several limits is counted against each
in one transaction, rolled back when one is over, so a refused request counts against none and
exactly `limit` requests of a window get through, however many processes count them. Tokens are
counted per UTC day: a subject's counter of the day is made from the model call records when a check
first needs it, then moved by each model call recorded while a limit applies, in the transaction that
records the call (`add_tokens`; `meter` says which subjects, and without one nothing is done). A
refusal leaves a mark per subject, limit and window, so that it is audited once. Old windows are
pruned once a minute per tenant and process. On PostgreSQL, the commits of counts do not wait for
the disk (`synchronous_commit` off for them): a crash of the database may lose their last moments,
nothing else. Which limits apply is not decided here (`sre.governance.quotas`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as sa_postgresql
from sqlalchemy.dialects import sqlite as sa_sqlite

from sre.store.audit import append_audit
from sre.store.database import Database, id_equals
from sre.store.places import LimitReached, commit_alone, ordered, places_held, relaxed
from sre.store.schema import (
    api_keys,
    model_calls,
    principals,
    quota_counters,
    quota_limits,
    tenants,
)
from sre.types.audit import AuditEvent
from sre.types.quotas import DAY, LIMITS, MINUTE, SUBJECTS, Bound, QuotaOverride, Subject
from sre.types.records import ModelCallRecord

REQUESTS = "requests"
TOKENS = "tokens"
_MINUTE_COUNTERS = (REQUESTS, "refused:requests_per_minute", "refused:concurrent_runs")
_KEY = (
    quota_counters.c.tenant_id,
    quota_counters.c.counter,
    quota_counters.c.subject,
    quota_counters.c.subject_id,
    quota_counters.c.window_start,
)
_BUMP: dict[str, Any] = {}
_ADD_TOKENS = (
    quota_counters.update()
    .where(
        quota_counters.c.tenant_id == sa.bindparam("t"),
        quota_counters.c.counter == TOKENS,
        quota_counters.c.subject == sa.bindparam("s"),
        quota_counters.c.subject_id == sa.bindparam("i"),
        quota_counters.c.window_start == sa.bindparam("w"),
    )
    .values(n=quota_counters.c.n + sa.bindparam("add", type_=sa.BigInteger))
)

TokenMeter = Callable[[str, str, str | None], Sequence[Subject]]


def _insert(dialect: str) -> Any:
    return sa_postgresql.insert if dialect == "postgresql" else sa_sqlite.insert


def _bump(dialect: str) -> Any:
    """Add one to a counter still under `limit` (made at 1 if new); a row count of 0: it was not."""
    found = _BUMP.get(dialect)
    if found is None:
        insert = _insert(dialect)(quota_counters).values(
            tenant_id=sa.bindparam("t"),
            counter=sa.bindparam("c"),
            subject=sa.bindparam("s"),
            subject_id=sa.bindparam("i"),
            window_start=sa.bindparam("w"),
            n=1,
        )
        found = _BUMP[dialect] = insert.on_conflict_do_update(
            index_elements=list(_KEY),
            set_={"n": quota_counters.c.n + 1},
            where=quota_counters.c.n < sa.bindparam("limit", type_=sa.BigInteger),
        ).execution_options(preserve_rowcount=True)  # an INSERT's row count is kept only when asked
    return found


def _of(kind: str, principal: sa.ColumnElement[Any], key: sa.ColumnElement[Any], value: Any) -> Any:
    """The rows of a subject of `kind` in a table that names a principal and a key (a tenant: all)."""
    if kind == "principal":
        return principal == value
    if kind == "key":
        return key == value
    return sa.true()


# Statements of the paths every request or turn may take, built once with bound parameters (building
# SQLAlchemy statements afresh cost more than running them).
_COUNTERS: dict[int, Any] = {}


def _counter_rows(count: int) -> Any:
    """The counters of `count` subjects in one window (parameters: `_counter_params`)."""
    found = _COUNTERS.get(count)
    if found is None:
        found = _COUNTERS[count] = sa.select(
            quota_counters.c.subject, quota_counters.c.subject_id, quota_counters.c.n
        ).where(
            quota_counters.c.tenant_id == sa.bindparam("t"),
            quota_counters.c.counter == sa.bindparam("c"),
            quota_counters.c.window_start == sa.bindparam("w"),
            sa.or_(
                *(
                    sa.and_(
                        quota_counters.c.subject == sa.bindparam(f"s{k}"),
                        quota_counters.c.subject_id == sa.bindparam(f"i{k}"),
                    )
                    for k in range(count)
                )
            ),
        )
    return found


def _counter_params(tenant_id: str, counter: str, window: int, subjects: Sequence[Subject]) -> dict[str, Any]:
    params: dict[str, Any] = {"t": tenant_id, "c": counter, "w": window}
    for k, subject in enumerate(subjects):
        params[f"s{k}"], params[f"i{k}"] = subject.kind, subject.id
    return params


def _counters(
    conn: sa.Connection, tenant_id: str, counter: str, window: int, subjects: Sequence[Subject]
) -> Any:
    return conn.execute(_counter_rows(len(subjects)), _counter_params(tenant_id, counter, window, subjects))


def _day_sum(conn: sa.Connection, tenant_id: str, subject: Subject, day: int) -> int:
    total = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(model_calls.c.input_tokens + model_calls.c.output_tokens), 0)
        ).where(
            model_calls.c.tenant_id == tenant_id,
            model_calls.c.created_at >= day,
            model_calls.c.created_at < day + DAY,
            _of(subject.kind, model_calls.c.principal_id, model_calls.c.key_id, subject.id),
        )
    ).scalar_one()
    return int(total)


def _override(row: Any) -> QuotaOverride:
    return QuotaOverride(
        tenant_id=row.tenant_id,
        subject=Subject(row.subject, row.subject_id),
        requests_per_minute=row.requests_per_minute,
        tokens_per_day=row.tokens_per_day,
        concurrent_runs=row.concurrent_runs,
        updated_at=row.updated_at,
    )


def _this(tenant_id: str, subject: Subject) -> sa.ColumnElement[bool]:
    return sa.and_(
        quota_limits.c.tenant_id == tenant_id,
        quota_limits.c.subject == subject.kind,
        quota_limits.c.subject_id == subject.id,
    )


class QuotaRepository:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.meter: TokenMeter | None = None  # which subjects a recorded model call's tokens count for
        self._pruned: dict[str, int] = {}

    # -- counting ------------------------------------------------------------------------------

    def count_request(self, tenant_id: str, bounds: Sequence[Bound], window: int) -> None:
        """Count one request of the minute starting at `window` against each bound's subject (each
        limit at least 1); on `LimitReached` none is counted."""
        bump = _bump(self.db.dialect)
        ordered = sorted(bounds, key=lambda b: SUBJECTS.index(b.subject.kind))
        params = [
            {
                "t": tenant_id,
                "c": REQUESTS,
                "s": b.subject.kind,
                "i": b.subject.id,
                "w": window,
                "limit": b.value,
            }
            for b in ordered
        ]
        if len(ordered) == 1:
            if commit_alone(self.db, bump, params[0]) == 0:
                raise LimitReached(ordered[0])
        else:
            with self.db.write() as conn:
                relaxed(conn)
                for bound, one in zip(ordered, params, strict=True):
                    if conn.execute(bump, one).rowcount == 0:
                        raise LimitReached(bound)  # and the counts before it roll back
        self._prune(tenant_id, window)

    def tokens_used(self, tenant_id: str, subjects: Sequence[Subject], day: int) -> dict[Subject, int]:
        """The subjects' tokens of the UTC day starting at `day`; a counter not made yet is made from
        the model call records."""
        with self.db.read() as conn:
            rows = _counters(conn, tenant_id, TOKENS, day, subjects).all()
        found = {Subject(r.subject, r.subject_id): int(r.n) for r in rows}
        missing = [s for s in subjects if s not in found]
        if missing:
            with self.db.write() as conn:
                relaxed(conn)
                for subject in missing:
                    conn.execute(
                        _insert(self.db.dialect)(quota_counters)
                        .values(
                            tenant_id=tenant_id,
                            counter=TOKENS,
                            subject=subject.kind,
                            subject_id=subject.id,
                            window_start=day,
                            n=_day_sum(conn, tenant_id, subject, day),
                        )
                        .on_conflict_do_nothing()
                    )
                rows = _counters(conn, tenant_id, TOKENS, day, missing).all()
            found.update({Subject(r.subject, r.subject_id): int(r.n) for r in rows})
        return found

    def add_tokens(self, conn: sa.Connection, tenant_id: str, calls: Sequence[ModelCallRecord]) -> None:
        """In the transaction recording `calls`: add their tokens to the day's counters of the subjects
        the meter names (a counter not made yet is left to be made from the records)."""
        meter = self.meter
        if meter is None:
            return
        for call in calls:
            tokens = call.input_tokens + call.output_tokens
            subjects = meter(tenant_id, call.principal_id, call.key_id) if tokens > 0 else ()
            at = call.created_at or int(time.time())
            for subject in ordered(subjects):
                params = {"t": tenant_id, "s": subject.kind, "i": subject.id, "w": at - at % DAY}
                conn.execute(_ADD_TOKENS, {**params, "add": tokens})

    def note_refusal(self, tenant_id: str, bound: Bound, window: int, event: AuditEvent) -> bool:
        """Record `event` unless a refusal by the same bound was recorded in this window already."""
        with self.db.write() as conn:
            marked = conn.execute(
                _insert(self.db.dialect)(quota_counters)
                .values(
                    tenant_id=tenant_id,
                    counter=f"refused:{bound.limit}",
                    subject=bound.subject.kind,
                    subject_id=bound.subject.id,
                    window_start=window,
                    n=1,
                )
                .on_conflict_do_nothing()
                .execution_options(preserve_rowcount=True)
            ).rowcount
            if marked:
                append_audit(conn, tenant_id, [event])
        return bool(marked)

    def usage(self, tenant_id: str, subject: Subject, minute: int, day: int) -> dict[str, int]:
        """What the subject has used of each limit: requests this minute, tokens today, places now."""
        with self.db.read() as conn:
            requests = _counters(conn, tenant_id, REQUESTS, minute, [subject]).first()
            tokens = _counters(conn, tenant_id, TOKENS, day, [subject]).first()
            return {
                "requests_per_minute": 0 if requests is None else int(requests.n),
                "tokens_per_day": _day_sum(conn, tenant_id, subject, day)
                if tokens is None
                else int(tokens.n),
                "concurrent_runs": places_held(conn, tenant_id, subject, int(time.time() * 1000)),
            }

    def _prune(self, tenant_id: str, window: int) -> None:
        if window - self._pruned.get(tenant_id, 0) < MINUTE:
            return
        self._pruned[tenant_id] = window
        with self.db.write() as conn:
            conn.execute(
                quota_counters.delete().where(
                    quota_counters.c.tenant_id == tenant_id,
                    sa.or_(
                        quota_counters.c.window_start < window - 2 * DAY,
                        sa.and_(
                            quota_counters.c.counter.in_(_MINUTE_COUNTERS),
                            quota_counters.c.window_start < window - 2 * MINUTE,
                        ),
                    ),
                )
            )

    # -- overrides -----------------------------------------------------------------------------

    def overrides(self, tenant_id: str) -> list[QuotaOverride]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(quota_limits).where(quota_limits.c.tenant_id == tenant_id))
            return [_override(r) for r in rows]

    def set_override(
        self, tenant_id: str, subject: Subject, changes: dict[str, int | None], *, actor: str | None, day: int
    ) -> QuotaOverride | None:
        """Set the limits `changes` names (None: back to the default), audited as `quota.update`; the
        override, or None when nothing of it is left. The subject's token counter of `day` is made
        again from the records at its next check (tokens recorded while no limit applied count too)."""
        now = int(time.time())
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(quota_limits).where(_this(tenant_id, subject)).with_for_update()
            ).first()
            before = {limit: None if row is None else row._mapping[limit] for limit in LIMITS}
            after = {**before, **changes}
            if row is not None:
                conn.execute(quota_limits.delete().where(_this(tenant_id, subject)))
            if any(v is not None for v in after.values()):
                conn.execute(
                    quota_limits.insert().values(
                        tenant_id=tenant_id,
                        subject=subject.kind,
                        subject_id=subject.id,
                        updated_at=now,
                        **after,
                    )
                )
            conn.execute(
                quota_counters.delete().where(
                    quota_counters.c.tenant_id == tenant_id,
                    quota_counters.c.counter == TOKENS,
                    quota_counters.c.subject == subject.kind,
                    quota_counters.c.subject_id == subject.id,
                    quota_counters.c.window_start == day,
                )
            )
            event = AuditEvent(
                action="quota.update",
                resource_type="quota",
                resource_id=f"{subject.kind}:{subject.id}",
                actor=actor,
                details={"subject": subject.kind, "subject_id": subject.id, **after, "was": before},
            )
            append_audit(conn, tenant_id, [event])
        if all(v is None for v in after.values()):
            return None
        return QuotaOverride(tenant_id, subject, updated_at=now, **after)

    # -- subjects ------------------------------------------------------------------------------

    def find_subject(self, tenant_id: str, kind: str, ref: str | None) -> Subject | None:
        """The tenant's subject that `ref` names (a principal by id or name, a key by id; the tenant by
        its id or name, or None); None when the tenant has no such one."""
        with self.db.read() as conn:
            if kind == "tenant":
                if ref is None or ref == tenant_id:
                    return Subject("tenant", tenant_id)
                name = conn.execute(sa.select(tenants.c.name).where(tenants.c.id == tenant_id)).scalar()
                return Subject("tenant", tenant_id) if ref == name else None
            if ref is None:
                return None
            if kind == "principal":
                found = conn.execute(
                    sa.select(principals.c.id).where(
                        principals.c.tenant_id == tenant_id,
                        sa.or_(id_equals(principals.c.id, ref), id_equals(principals.c.name, ref)),
                    )
                ).scalar()
            else:
                found = conn.execute(
                    sa.select(api_keys.c.id).where(
                        api_keys.c.tenant_id == tenant_id, id_equals(api_keys.c.id, ref)
                    )
                ).scalar()
        return None if found is None else Subject(kind, str(found))

    def subject_name(self, tenant_id: str, subject: Subject) -> str:
        """How a refusal names the subject: a tenant's or principal's name, a key's id."""
        if subject.kind == "key":
            return subject.id
        with self.db.read() as conn:
            if subject.kind == "tenant":
                name = conn.execute(sa.select(tenants.c.name).where(tenants.c.id == subject.id)).scalar()
            else:
                name = conn.execute(
                    sa.select(principals.c.name).where(
                        principals.c.tenant_id == tenant_id, principals.c.id == subject.id
                    )
                ).scalar()
        return subject.id if name is None else str(name)
