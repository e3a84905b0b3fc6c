"""The directory of a tenant: its principals (their roles, grants and disabling) and groups of them.

A group's members are principals or other groups whose members are principals (nested one level:
a group inside a group that is itself inside one is refused). Every change is an audit event in the
same transaction. `grants_of` is what a run's every step checks; it is cached in this process for at
most `GRANTS_TTL` seconds, so a narrowed grant holds everywhere within that time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.database import Database, id_equals
from sre.store.schema import group_members, groups, principals
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, InvalidRequest, NotFound
from sre.types.ids import new_id
from sre.types.records import ANY, ROLES, Grants, Group, Principal

PRINCIPAL_KINDS = ("user", "service", "agent")
GRANTS_TTL = 1.0  # seconds a principal's grants are kept in a process before being read again


def check_name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise InvalidRequest(f"{what} must be 1 to 200 characters", param=what)
    return value


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")


def check_kind(kind: str) -> None:
    if kind not in PRINCIPAL_KINDS:
        raise InvalidRequest(f"principal kind must be one of {', '.join(PRINCIPAL_KINDS)}", param="kind")


def grants_json(grants: Grants) -> str | None:
    return None if grants == ANY else json.dumps(grants.as_dict(), separators=(",", ":"))


def parse_grants(raw: str | None) -> Grants:
    if raw is None:
        return ANY
    data = json.loads(raw)
    tools, models = data.get("tools"), data.get("models")
    return Grants(
        tools=None if tools is None else tuple(tools), models=None if models is None else tuple(models)
    )


def principal_from_row(row: sa.Row[Any]) -> Principal:
    m = row._mapping
    return Principal(
        tenant_id=m["tenant_id"],
        id=m["id"],
        name=m["name"],
        kind=m["kind"],
        role=m["role"],
        grants=parse_grants(m["grants"]),
        created_at=m["created_at"],
        disabled_at=m["disabled_at"],
    )


def _event(action: str, resource: str, resource_id: str, actor: str | None, **details: Any) -> AuditEvent:
    return AuditEvent(action, resource, resource_id, actor=actor, details=details)


class DirectoryRepository:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._grants: dict[tuple[str, str], tuple[float, Grants]] = {}
        self._lock = threading.Lock()

    # -- principals ------------------------------------------------------------------------------

    def principals(
        self, tenant_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[Principal], bool]:
        query = sa.select(principals).where(principals.c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(principals.c.id > after)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(principals.c.id).limit(limit + 1)).all()
        return [principal_from_row(r) for r in rows[:limit]], len(rows) > limit

    def principal(self, tenant_id: str, id_or_name: str) -> Principal:
        """A principal by id, or by name; `NotFound` (never another tenant's)."""
        with self.db.read() as conn:
            row = self._principal_row(conn, tenant_id, id_or_name)
        if row is None:
            raise NotFound(f"No principal '{id_or_name}'.", param="principal")
        return principal_from_row(row)

    @staticmethod
    def _principal_row(conn: sa.Connection, tenant_id: str, id_or_name: str, lock: bool = False) -> Any:
        query = sa.select(principals).where(
            principals.c.tenant_id == tenant_id,
            sa.or_(id_equals(principals.c.id, id_or_name), id_equals(principals.c.name, id_or_name)),
        )
        rows = conn.execute(query.with_for_update() if lock else query).all()
        return min(rows, key=lambda r: r.id != id_or_name) if rows else None  # an id wins over a name

    def create_principal(
        self,
        tenant_id: str,
        name: str,
        *,
        kind: str = "user",
        role: str = "member",
        grants: Grants = ANY,
        actor: str | None = None,
    ) -> Principal:
        name = check_name(name, "name")
        check_kind(kind)
        check_role(role)
        principal = Principal(
            tenant_id, new_id("prn"), name, kind, role, grants=grants, created_at=int(time.time())
        )
        with self.db.write() as conn:
            taken = conn.execute(
                sa.select(principals.c.id).where(
                    principals.c.tenant_id == tenant_id, principals.c.name == name
                )
            ).first()
            if taken is not None:
                raise Conflict(f"A principal named '{name}' already exists.", param="name")
            conn.execute(
                principals.insert().values(
                    tenant_id=tenant_id,
                    id=principal.id,
                    name=name,
                    kind=kind,
                    role=role,
                    grants=grants_json(grants),
                    created_at=principal.created_at,
                )
            )
            event = _event(
                "principal.create",
                "principal",
                principal.id,
                actor,
                name=name,
                kind=kind,
                role=role,
                grants=grants.as_dict(),
            )
            append_audit(conn, tenant_id, [event])
        return principal

    def update_principal(
        self,
        tenant_id: str,
        id_or_name: str,
        *,
        role: str | None = None,
        grants: Grants | None = None,
        disabled: bool | None = None,
        actor: str | None = None,
    ) -> Principal:
        """Change a principal's role, grants or disabling; audited with what it was."""
        if role is not None:
            check_role(role)
        with self.db.write() as conn:
            row = self._principal_row(conn, tenant_id, id_or_name, lock=True)
            if row is None:
                raise NotFound(f"No principal '{id_or_name}'.", param="principal")
            before = principal_from_row(row)
            values: dict[str, Any] = {}
            details: dict[str, Any] = {}
            if role is not None and role != before.role:
                values["role"], details["role"], details["was_role"] = role, role, before.role
            if grants is not None and grants != before.grants:
                values["grants"], details["grants"] = grants_json(grants), grants.as_dict()
                details["was_grants"] = before.grants.as_dict()
            if disabled is not None and disabled != (before.disabled_at is not None):
                values["disabled_at"] = int(time.time()) if disabled else None
                details["disabled"] = disabled
            if not values:
                return before
            conn.execute(
                principals.update()
                .where(principals.c.tenant_id == tenant_id, principals.c.id == before.id)
                .values(**values)
            )
            append_audit(
                conn, tenant_id, [_event("principal.update", "principal", before.id, actor, **details)]
            )
            after = conn.execute(
                sa.select(principals).where(principals.c.tenant_id == tenant_id, principals.c.id == before.id)
            ).one()
        with self._lock:
            self._grants.pop((tenant_id, before.id), None)
        return principal_from_row(after)

    def cached_grants(self, tenant_id: str, principal_id: str) -> Grants | None:
        """The principal's grants if this process read them less than `GRANTS_TTL` seconds ago."""
        cached = self._grants.get((tenant_id, principal_id))
        if cached is not None and time.monotonic() - cached[0] < GRANTS_TTL:
            return cached[1]
        return None

    def grants_of(self, tenant_id: str, principal_id: str) -> Grants:
        """The principal's grants as of at most `GRANTS_TTL` seconds ago (a disabled or unknown
        principal: nothing at all)."""
        now = time.monotonic()
        cached = self._grants.get((tenant_id, principal_id))
        if cached is not None and now - cached[0] < GRANTS_TTL:
            return cached[1]
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(principals.c.grants, principals.c.disabled_at).where(
                    principals.c.tenant_id == tenant_id, principals.c.id == principal_id
                )
            ).first()
        found = NOTHING if row is None or row.disabled_at is not None else parse_grants(row.grants)
        with self._lock:
            self._grants[(tenant_id, principal_id)] = (now, found)
        return found

    # -- groups ----------------------------------------------------------------------------------

    def groups(
        self, tenant_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[Group], bool]:
        query = sa.select(groups).where(groups.c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(groups.c.id > after)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(groups.c.id).limit(limit + 1)).all()
            found = [self._group(conn, r) for r in rows[:limit]]
        return found, len(rows) > limit

    def group(self, tenant_id: str, id_or_name: str) -> Group:
        with self.db.read() as conn:
            row = self._group_row(conn, tenant_id, id_or_name)
            if row is None:
                raise NotFound(f"No group '{id_or_name}'.", param="group")
            return self._group(conn, row)

    @staticmethod
    def _group_row(conn: sa.Connection, tenant_id: str, id_or_name: str) -> Any:
        rows = conn.execute(
            sa.select(groups).where(
                groups.c.tenant_id == tenant_id,
                sa.or_(id_equals(groups.c.id, id_or_name), id_equals(groups.c.name, id_or_name)),
            )
        ).all()
        return min(rows, key=lambda r: r.id != id_or_name) if rows else None

    @staticmethod
    def _group(conn: sa.Connection, row: Any) -> Group:
        members = conn.execute(
            sa.select(group_members.c.member_id)
            .where(group_members.c.tenant_id == row.tenant_id, group_members.c.group_id == row.id)
            .order_by(group_members.c.member_id)
        ).scalars()
        return Group(row.tenant_id, row.id, row.name, row.created_at, tuple(members))

    def create_group(
        self, tenant_id: str, name: str, *, members: Sequence[str] = (), actor: str | None = None
    ) -> Group:
        """A group with `members` (principals or groups, by id or name): all of it or nothing."""
        name = check_name(name, "name")
        group_id, now = new_id("grp"), int(time.time())
        with self.db.write() as conn:
            if self._group_row(conn, tenant_id, name) is not None:
                raise Conflict(f"A group named '{name}' already exists.", param="name")
            conn.execute(groups.insert().values(tenant_id=tenant_id, id=group_id, name=name, created_at=now))
            append_audit(conn, tenant_id, [_event("group.create", "group", group_id, actor, name=name)])
            row = self._group_row(conn, tenant_id, group_id)
            for member in members:
                self._add(conn, tenant_id, row, member, actor)
            return self._group(conn, row)

    def delete_group(self, tenant_id: str, id_or_name: str, *, actor: str | None = None) -> Group:
        with self.db.write() as conn:
            row = self._group_row(conn, tenant_id, id_or_name)
            if row is None:
                raise NotFound(f"No group '{id_or_name}'.", param="group")
            group = self._group(conn, row)
            conn.execute(
                group_members.delete().where(
                    group_members.c.tenant_id == tenant_id,
                    sa.or_(group_members.c.group_id == row.id, group_members.c.member_id == row.id),
                )
            )
            conn.execute(groups.delete().where(groups.c.tenant_id == tenant_id, groups.c.id == row.id))
            append_audit(conn, tenant_id, [_event("group.delete", "group", row.id, actor, name=row.name)])
        return group

    def add_member(self, tenant_id: str, group: str, member: str, *, actor: str | None = None) -> Group:
        """Add a principal or a group (by id or name) to `group`, nesting at most one level."""
        with self.db.write() as conn:
            row = self._group_row(conn, tenant_id, group)
            if row is None:
                raise NotFound(f"No group '{group}'.", param="group")
            self._add(conn, tenant_id, row, member, actor)
            return self._group(conn, row)

    def _add(self, conn: sa.Connection, tenant_id: str, row: Any, member: str, actor: str | None) -> None:
        member_row = self._principal_row(conn, tenant_id, member)
        is_group = False
        if member_row is None:
            member_row, is_group = self._group_row(conn, tenant_id, member), True
        if member_row is None:
            raise NotFound(f"No principal or group '{member}'.", param="member")
        if is_group:
            self._check_nesting(conn, tenant_id, row.id, member_row.id)
        exists = conn.execute(
            sa.select(group_members.c.member_id).where(
                group_members.c.tenant_id == tenant_id,
                group_members.c.group_id == row.id,
                group_members.c.member_id == member_row.id,
            )
        ).first()
        if exists is None:
            conn.execute(
                group_members.insert().values(
                    tenant_id=tenant_id, group_id=row.id, member_id=member_row.id, created_at=int(time.time())
                )
            )
            append_audit(
                conn, tenant_id, [_event("group.member.add", "group", row.id, actor, member=member_row.id)]
            )

    @staticmethod
    def _check_nesting(conn: sa.Connection, tenant_id: str, parent: str, child: str) -> None:
        if parent == child:
            raise InvalidRequest("A group cannot be a member of itself.", param="member")

        def has(where: sa.ColumnElement[bool]) -> bool:
            query = sa.select(group_members.c.member_id).where(group_members.c.tenant_id == tenant_id, where)
            return conn.execute(query.limit(1)).first() is not None

        parent_is_nested = has(group_members.c.member_id == parent)
        child_has_groups = has(
            sa.and_(
                group_members.c.group_id == child,
                group_members.c.member_id.in_(sa.select(groups.c.id).where(groups.c.tenant_id == tenant_id)),
            )
        )
        if parent_is_nested or child_has_groups:
            raise InvalidRequest(
                "Groups nest one level only: a group inside a group cannot contain or be put in another.",
                param="member",
            )

    def remove_member(self, tenant_id: str, group: str, member_id: str, *, actor: str | None = None) -> Group:
        with self.db.write() as conn:
            row = self._group_row(conn, tenant_id, group)
            if row is None:
                raise NotFound(f"No group '{group}'.", param="group")
            gone = conn.execute(
                group_members.delete().where(
                    group_members.c.tenant_id == tenant_id,
                    group_members.c.group_id == row.id,
                    id_equals(group_members.c.member_id, member_id),
                )
            ).rowcount
            if not gone:
                raise NotFound(f"'{member_id}' is not a member of group '{row.name}'.", param="member")
            append_audit(
                conn, tenant_id, [_event("group.member.remove", "group", row.id, actor, member=member_id)]
            )
            return self._group(conn, row)

    def group_names_of(self, tenant_id: str, principal_id: str) -> tuple[str, ...]:
        """The names of the groups the principal is in, directly or through a nested group."""
        direct = sa.select(group_members.c.group_id).where(
            group_members.c.tenant_id == tenant_id, group_members.c.member_id == principal_id
        )
        through = sa.select(group_members.c.group_id).where(
            group_members.c.tenant_id == tenant_id, group_members.c.member_id.in_(direct)
        )
        with self.db.read() as conn:
            names = conn.execute(
                sa.select(groups.c.name)
                .where(groups.c.tenant_id == tenant_id, groups.c.id.in_(direct.union(through)))
                .order_by(groups.c.name)
            ).scalars()
            return tuple(names)


NOTHING = Grants(tools=(), models=())
