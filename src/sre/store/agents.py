"""Agents: versioned definitions per tenant and name, appended and never rewritten.

Creating a name writes version 1; an update writes the next version; a delete marks every version
deleted, and creating the name again continues the numbering. The definition is opaque JSON here:
validating it, and the model it names, is the runtime's business. Writers of one name queue behind
each other: on SQLite on the database lock (`BEGIN IMMEDIATE`), on PostgreSQL on a row lock of the
name's first version, which is never removed; two first creations at once meet at the primary key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.conversations import dumps
from sre.store.database import Database, id_equals
from sre.store.schema import agents
from sre.types.agents import MAX_AGENT_VERSION as MAX_VERSION
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, NotFound
from sre.types.records import AgentVersion, Page

Revise = Callable[[AgentVersion], dict[str, Any]]


def _version_from_row(row: sa.Row[Any]) -> AgentVersion:
    m = row._mapping
    return AgentVersion(
        tenant_id=m["tenant_id"],
        name=m["name"],
        version=m["version"],
        definition=json.loads(m["definition"]),
        created_at=m["created_at"],
    )


def _missing(name: str) -> NotFound:
    return NotFound(f"Agent '{name}' not found.", param="name")


def _of(tenant_id: str, name: str) -> sa.ColumnElement[bool]:
    return sa.and_(agents.c.tenant_id == tenant_id, id_equals(agents.c.name, name))


def _name_order(conn: sa.Connection) -> sa.ColumnElement[str]:
    """Names in byte order on both stores (PostgreSQL's default collation would ignore `-` and `_`)."""
    return agents.c.name.collate("C") if conn.dialect.name == "postgresql" else agents.c.name


def _agent_event(action: str, version: AgentVersion, actor: str | None) -> AuditEvent:
    return AuditEvent(
        action=action,
        resource_type="agent",
        resource_id=version.name,
        actor=actor,
        agent=version.name,
        agent_version=version.version,
    )


class AgentRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writes: each locks the name, then reads its newest version --------------------------------

    @staticmethod
    def _lock_latest(conn: sa.Connection, tenant_id: str, name: str) -> sa.Row[Any] | None:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.select(agents.c.version)
                .where(_of(tenant_id, name))
                .order_by(agents.c.version)
                .limit(1)
                .with_for_update()
            )
        # A statement of its own, after the lock: it sees what the writer before us committed.
        return conn.execute(
            sa.select(agents).where(_of(tenant_id, name)).order_by(agents.c.version.desc()).limit(1)
        ).first()

    @staticmethod
    def _insert(
        conn: sa.Connection, tenant_id: str, name: str, version: int, definition: dict[str, Any]
    ) -> AgentVersion:
        if version > MAX_VERSION:
            raise Conflict(f"Agent '{name}' has run out of version numbers.", param="name")
        record = AgentVersion(
            tenant_id=tenant_id,
            name=name,
            version=version,
            definition=definition,
            created_at=int(time.time()),
        )
        conn.execute(
            agents.insert(),
            dict(
                tenant_id=tenant_id,
                name=name,
                version=version,
                definition=dumps(definition),
                created_at=record.created_at,
                deleted_at=None,
            ),
        )
        return record

    def create(
        self, tenant_id: str, name: str, definition: dict[str, Any], *, actor: str | None = None
    ) -> AgentVersion:
        """Version 1 of a new name, or the next version of a deleted one; 409 if the name is live."""
        exists = Conflict(
            f"An agent named '{name}' already exists; update it with POST /v1/agents/{name}.",
            param="name",
            code="agent_exists",
        )
        try:
            with self.db.write() as conn:
                latest = self._lock_latest(conn, tenant_id, name)
                if latest is not None and latest.deleted_at is None:
                    raise exists
                version = 1 if latest is None else latest.version + 1
                created = self._insert(conn, tenant_id, name, version, definition)
                append_audit(conn, tenant_id, [_agent_event("agent.create", created, actor)])
                return created
        except sa.exc.IntegrityError:  # another writer created the same name at the same moment
            raise exists from None

    def update(self, tenant_id: str, name: str, revise: Revise, *, actor: str | None = None) -> AgentVersion:
        """Append the next version, computed by `revise` from the newest one while the name is locked
        (so two concurrent updates never build on the same version)."""
        try:
            with self.db.write() as conn:
                latest = self._lock_latest(conn, tenant_id, name)
                if latest is None or latest.deleted_at is not None:
                    raise _missing(name)
                current = _version_from_row(latest)
                updated = self._insert(conn, tenant_id, name, current.version + 1, revise(current))
                append_audit(conn, tenant_id, [_agent_event("agent.update", updated, actor)])
                return updated
        except sa.exc.IntegrityError:  # pragma: no cover - the lock above makes this unreachable
            raise Conflict(f"Agent '{name}' was changed concurrently; try again.", param="name") from None

    def delete(self, tenant_id: str, name: str, *, actor: str | None = None) -> None:
        with self.db.write() as conn:
            latest = self._lock_latest(conn, tenant_id, name)
            if latest is None or latest.deleted_at is not None:
                raise _missing(name)
            conn.execute(
                agents.update()
                .where(_of(tenant_id, name), agents.c.deleted_at.is_(None))
                .values(deleted_at=int(time.time()))
            )
            event = AuditEvent(
                action="agent.delete",
                resource_type="agent",
                resource_id=name,
                actor=actor,
                agent=name,
                agent_version=int(latest.version),
            )
            append_audit(conn, tenant_id, [event])

    # -- reads ------------------------------------------------------------------------------------

    def get(self, tenant_id: str, name: str, version: int | None = None) -> AgentVersion:
        """The newest version, or the given one; deleted versions are not found."""
        with self.db.read() as conn:
            latest = conn.execute(
                sa.select(agents).where(_of(tenant_id, name)).order_by(agents.c.version.desc()).limit(1)
            ).first()
            if latest is None or latest.deleted_at is not None:
                raise _missing(name)
            if version is None or version == latest.version:
                return _version_from_row(latest)
            row = None
            if 1 <= version <= MAX_VERSION:
                row = conn.execute(
                    sa.select(agents).where(
                        _of(tenant_id, name), agents.c.version == version, agents.c.deleted_at.is_(None)
                    )
                ).first()
        if row is None:
            raise NotFound(f"Agent '{name}' has no version {version}.", param="version")
        return _version_from_row(row)

    def list(self, tenant_id: str, *, after: str | None = None, limit: int = 20, order: str = "asc") -> Page:
        """The newest version of each live agent, by name, after the name `after`."""
        newer = agents.alias("newer")
        with self.db.read() as conn:
            key = _name_order(conn)
            query = sa.select(agents).where(
                agents.c.tenant_id == tenant_id,
                agents.c.deleted_at.is_(None),
                ~sa.exists().where(
                    newer.c.tenant_id == agents.c.tenant_id,
                    newer.c.name == agents.c.name,
                    newer.c.version > agents.c.version,
                ),
            )
            if after is not None:
                query = query.where(key > after if order == "asc" else key < after)
            query = query.order_by(key if order == "asc" else key.desc()).limit(limit + 1)
            rows = [_version_from_row(row) for row in conn.execute(query)]
        return Page(data=rows[:limit], has_more=len(rows) > limit)

    def versions(
        self, tenant_id: str, name: str, *, after: int | None = None, limit: int = 20, order: str = "desc"
    ) -> Page:
        """The live versions of an agent, newest first by default, after version `after`."""
        with self.db.read() as conn:
            latest = conn.execute(
                sa.select(agents.c.deleted_at)
                .where(_of(tenant_id, name))
                .order_by(agents.c.version.desc())
                .limit(1)
            ).first()
            if latest is None or latest.deleted_at is not None:
                raise _missing(name)
            query = sa.select(agents).where(_of(tenant_id, name), agents.c.deleted_at.is_(None))
            if after is not None:
                bound = max(0, min(after, MAX_VERSION + 1))
                query = query.where(agents.c.version < bound if order == "desc" else agents.c.version > bound)
            column = agents.c.version
            query = query.order_by(column.desc() if order == "desc" else column).limit(limit + 1)
            rows = [_version_from_row(row) for row in conn.execute(query)]
        return Page(data=rows[:limit], has_more=len(rows) > limit)
