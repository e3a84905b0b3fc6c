"""The audit trail's storage: each tenant's events as one hash chain, extended in the writer's transaction.

`append_audit` is called by the repositories inside the transaction that writes what the events
record, so an event exists exactly when its change does. It locks the tenant's head row
(`audit_heads`; on SQLite the write transaction holds the database lock already), chains the events
after it (`sre.types.audit.chain_hash`) and moves the head. `AuditRepository` lists events with
filters and a cursor, streams them for export, and verifies a chain: every event's hash against its
fields, every link against the event before, the sequence for gaps and duplicates, and the last
event against the head; it reports each problem and the first bad position.
"""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from sre.store.database import Database, id_equals
from sre.store.schema import audit_events, audit_heads
from sre.types.audit import (
    ACTING,
    GENESIS,
    REQUEST_ID,
    AuditEvent,
    AuditRecord,
    VerifyProblem,
    VerifyReport,
    chain_hash,
    details_json,
)
from sre.types.errors import NotFound
from sre.types.ids import new_id
from sre.types.records import Page

SYSTEM_TENANT = "_system"
_RECENT = 50_000  # hashes verification keeps to recognise a moved or renumbered event  # the chain of events that belong to no tenant (an unknown key)

_HEAD = sa.select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.tenant_id == sa.bindparam("t"))
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_NEW_HEAD = audit_heads.insert().values(tenant_id=sa.bindparam("t"), seq=0, hash=GENESIS)
_MOVE_HEAD = (
    audit_heads.update()
    .where(audit_heads.c.tenant_id == sa.bindparam("t"))
    .values(seq=sa.bindparam("s"), hash=sa.bindparam("h"))
)
_INSERT = audit_events.insert()
_COLUMNS = (
    audit_events.c.tenant_id,
    audit_events.c.seq,
    audit_events.c.id,
    audit_events.c.created_ms,
    audit_events.c.action,
    audit_events.c.resource_type,
    audit_events.c.resource_id,
    audit_events.c.actor,
    audit_events.c.on_behalf_of,
    audit_events.c.agent,
    audit_events.c.agent_version,
    audit_events.c.outcome,
    audit_events.c.request_id,
    audit_events.c.details,
    audit_events.c.prev_hash,
    audit_events.c.hash,
)


def _head(conn: sa.Connection, tenant_id: str) -> tuple[int, str]:
    postgres = conn.dialect.name == "postgresql"
    query = _HEAD_FOR_UPDATE if postgres else _HEAD
    row = conn.execute(query, {"t": tenant_id}).first()
    if row is None:
        if postgres:  # two first writers: one inserts, the other waits on its row, then reads it
            conn.execute(
                postgresql.insert(audit_heads)
                .values(tenant_id=tenant_id, seq=0, hash=GENESIS)
                .on_conflict_do_nothing()
            )
            row = conn.execute(query, {"t": tenant_id}).first()
            assert row is not None
            return int(row.seq), str(row.hash)
        conn.execute(_NEW_HEAD, {"t": tenant_id})
        return 0, GENESIS
    return int(row.seq), str(row.hash)


def append_audit(conn: sa.Connection, tenant_id: str, events: Sequence[AuditEvent]) -> list[AuditRecord]:
    """Chain `events` onto the tenant's trail inside the caller's (write) transaction."""
    if not events:
        return []
    seq, prev = _head(conn, tenant_id)
    now = int(time.time() * 1000)
    current_request = REQUEST_ID.get()
    acting = ACTING.get()
    records: list[AuditRecord] = []
    for event in events:
        if acting is not None and event.on_behalf_of is None and event.actor not in (None, acting):
            event = dataclasses.replace(event, actor=acting, on_behalf_of=event.actor)
        seq += 1
        event_id = new_id("aud")
        details = details_json(event.details)
        request_id = event.request_id if event.request_id is not None else current_request
        digest = chain_hash(
            prev,
            tenant_id,
            seq,
            event_id,
            now,
            event.action,
            event.resource_type,
            event.resource_id,
            event.actor,
            event.on_behalf_of,
            event.agent,
            event.agent_version,
            event.outcome,
            request_id,
            details,
        )
        records.append(
            AuditRecord(
                tenant_id=tenant_id,
                seq=seq,
                id=event_id,
                created_ms=now,
                action=event.action,
                resource_type=event.resource_type,
                resource_id=event.resource_id,
                actor=event.actor,
                on_behalf_of=event.on_behalf_of,
                agent=event.agent,
                agent_version=event.agent_version,
                outcome=event.outcome,
                request_id=request_id,
                details=details,
                prev_hash=prev,
                hash=digest,
            )
        )
        prev = digest
    conn.execute(
        _INSERT,
        [
            {
                "tenant_id": r.tenant_id,
                "seq": r.seq,
                "id": r.id,
                "created_ms": r.created_ms,
                "action": r.action,
                "resource_type": r.resource_type,
                "resource_id": r.resource_id,
                "actor": r.actor,
                "on_behalf_of": r.on_behalf_of,
                "agent": r.agent,
                "agent_version": r.agent_version,
                "outcome": r.outcome,
                "request_id": r.request_id,
                "details": r.details,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            for r in records
        ],
    )
    conn.execute(_MOVE_HEAD, {"t": tenant_id, "s": seq, "h": prev})
    return records


def _record(row: Any) -> AuditRecord:
    return AuditRecord(*row)


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def append(self, tenant_id: str, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Record events that go with no other write (a refused login), in a transaction of their own."""
        with self.db.write() as conn:
            return append_audit(conn, tenant_id, events)

    def list(
        self,
        tenant_id: str,
        *,
        filters: dict[str, Any] | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after: str | None = None,
        order: str = "desc",
        limit: int = 20,
    ) -> Page:
        """A page of the tenant's events; `filters` match columns exactly (action, actor, outcome,
        resource_type, resource_id, agent, on_behalf_of, request_id); `after` is the id of the
        last event of the previous page."""
        query = sa.select(*_COLUMNS).where(audit_events.c.tenant_id == tenant_id)
        for name, value in (filters or {}).items():
            query = query.where(id_equals(audit_events.c[name], str(value)))
        if since_ms is not None:
            query = query.where(audit_events.c.created_ms >= since_ms)
        if until_ms is not None:
            query = query.where(audit_events.c.created_ms < until_ms)
        with self.db.read() as conn:
            if after is not None:
                cursor = conn.execute(
                    sa.select(audit_events.c.seq).where(
                        audit_events.c.tenant_id == tenant_id, id_equals(audit_events.c.id, after)
                    )
                ).scalar()
                if cursor is None:
                    raise NotFound(f"Audit event with id '{after}' not found.", param="after")
                query = query.where(
                    audit_events.c.seq < cursor if order == "desc" else audit_events.c.seq > cursor
                )
            column = audit_events.c.seq.desc() if order == "desc" else audit_events.c.seq
            rows = conn.execute(query.order_by(column).limit(limit + 1)).all()
        return Page(data=[_record(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def tenants(self) -> builtins.list[str]:
        """Every tenant id that has a trail (the system chain included)."""
        with self.db.read() as conn:
            return [str(t) for t in conn.execute(sa.select(audit_heads.c.tenant_id).order_by("tenant_id"))]

    def stream(self, tenant_id: str) -> Iterator[AuditRecord]:
        """Every event of the tenant in chain order (for export)."""
        for row in self._rows(tenant_id):
            yield _record(row)

    def _rows(self, tenant_id: str) -> Iterator[tuple[Any, ...]]:
        """Every row of the chain in order, duplicates of a seq included, read with one cursor."""
        with self.db.read() as conn:
            result = conn.execution_options(yield_per=10_000).execute(
                sa.select(*_COLUMNS)
                .where(audit_events.c.tenant_id == tenant_id)
                .order_by(audit_events.c.seq, audit_events.c.id)
            )
            for part in result.partitions():
                yield from part

    def _has_hash(self, tenant_id: str, digest: str) -> bool:
        """Whether some event of the chain carries this hash (a diagnosis, only after a failure)."""
        with self.db.read() as conn:
            return (
                conn.execute(
                    sa.select(audit_events.c.seq)
                    .where(audit_events.c.tenant_id == tenant_id, audit_events.c.hash == digest)
                    .limit(1)
                ).first()
                is not None
            )

    def verify(self, tenant_id: str) -> VerifyReport:
        """Check the tenant's chain in one pass; report every problem at the first position it shows,
        and say what it looks like: a `changed` event (its fields no longer give its hash), a
        `missing` one (a gap, or the rest renumbered down), an `inserted` one (a position that was
        not there, the rest renumbered up, or events past the head), a `reordered` one (an event
        that verifies at another position), or a chain that ends before its head (`truncated`)."""
        report = VerifyReport(tenant_id=tenant_id)
        problems = report.problems
        with self.db.read() as conn:
            head = conn.execute(_HEAD, {"t": tenant_id}).first()
        head_seq, head_hash = (int(head.seq), str(head.hash)) if head is not None else (0, GENESIS)
        report.head_seq = head_seq
        expected, prev = 1, GENESIS
        origin: dict[str, int] = {}  # hash -> the position its event was recorded at (recent ones)
        shift = 0  # positions added (+) or taken (-) before here by a renumbering
        reordered: list[int] = []  # positions where an event from elsewhere stands
        last_seq = 0

        def add(seq: int, kind: Any, message: str) -> None:
            problems.append(VerifyProblem(seq, kind, message))

        for row in self._rows(tenant_id):
            (t, seq, event_id, created, action, rtype, rid, actor, obo, agent, version, outcome, req,
             details, prev_hash, digest) = row  # fmt: skip
            report.events += 1
            if seq < expected:  # a second row at a position already taken
                add(seq, "inserted", f"event {seq} appears more than once (id {event_id})")
                continue
            if seq > expected:
                gone = f"event {expected}" if seq == expected + 1 else f"events {expected} to {seq - 1}"
                add(expected, "missing", f"{gone} missing (removed)")
                prev = prev_hash  # go on from here, to find later problems too
            fields = (created, action, rtype, rid, actor, obo, agent, version, outcome, req, details)
            recorded_at = seq
            if chain_hash(prev_hash, t, seq, event_id, *fields) != digest:  # the rare path

                def verifies(position: int) -> bool:
                    return bool(chain_hash(prev_hash, t, position, event_id, *fields) == digest)  # noqa: B023

                found = origin.get(prev_hash)
                if found is not None and verifies(found + 1):
                    recorded_at = found + 1
                else:  # look nearby: an event moved a few places
                    recorded_at = next(
                        (p for p in range(max(1, seq - 16), seq + 17) if p != seq and verifies(p)), 0
                    )
                if not recorded_at:
                    recorded_at = seq
                    add(seq, "changed", f"event {seq} does not match its hash (changed)")
                elif found is None and self._has_hash(tenant_id, prev_hash):
                    reordered.append(seq)
                    add(seq, "reordered", f"event {seq} is event {recorded_at}, moved (reordered)")
                elif seq - recorded_at != shift and not any(recorded_at <= r < seq for r in reordered):
                    if recorded_at < seq:
                        add(
                            recorded_at,
                            "inserted",
                            f"event {recorded_at} was not in the chain (inserted; the events from "
                            "there on renumbered)",
                        )
                    else:
                        add(
                            seq,
                            "missing",
                            f"events {seq} to {recorded_at - 1} missing (removed, the rest renumbered)",
                        )
                    shift = seq - recorded_at
                elif seq - recorded_at != shift:
                    add(seq, "reordered", f"event {seq} is event {recorded_at}, moved (reordered)")
            elif prev_hash != prev and not problems:
                if prev_hash in origin or not self._has_hash(tenant_id, prev_hash):
                    add(seq, "inserted", f"event {seq} does not follow event {seq - 1} (inserted before it)")
                else:
                    add(seq, "reordered", f"event {seq} does not follow event {seq - 1} (reordered)")
            origin[digest] = recorded_at
            if len(origin) > 2 * _RECENT:  # a renumbering points back a few places: keep the last ones
                origin = dict(list(origin.items())[-_RECENT:])
            prev, expected, last_seq = digest, seq + 1, seq
        last = last_seq - shift
        if last < head_seq:
            add(
                last_seq + 1,
                "truncated",
                f"the chain ends at event {last_seq} but its head says {head_seq} (events removed from "
                "the end)",
            )
        elif last > head_seq:
            add(head_seq + 1, "inserted", f"events after the head ({head_seq}) were added outside SRE")
        elif prev != head_hash and not problems:
            add(last_seq, "head", f"event {last_seq} is not the event the head recorded")
        return report
