"""Tenants, principals and API keys.

Keys are random secrets shown once; only their SHA-256 is stored, so a stolen database yields no
usable key. A key resolves to exactly one principal of one tenant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import time
from typing import Any

import sqlalchemy as sa

from sre.store.audit import SYSTEM_TENANT, append_audit
from sre.store.database import Database, id_equals
from sre.store.directory import check_kind, check_name, check_role, parse_grants, principal_from_row
from sre.store.schema import api_keys, principals, tenants
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, NotFound
from sre.types.ids import new_id
from sre.types.records import ApiKey, Caller, Principal

KEY_PREFIX = "sre-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        tenant_id=m["tenant_id"],
        id=m["id"],
        principal_id=m["principal_id"],
        name=m["name"],
        prefix=m["prefix"],
        created_at=m["created_at"],
        revoked_at=m["revoked_at"],
        expires_at=m["expires_at"],
        scopes=None if m["scopes"] is None else tuple(json.loads(m["scopes"])),
        rotated_from=m["rotated_from"],
    )


_BY_HASH = (
    sa.select(
        api_keys.c.tenant_id,
        api_keys.c.id,
        api_keys.c.principal_id,
        api_keys.c.revoked_at,
        api_keys.c.expires_at,
        api_keys.c.scopes,
        principals.c.role,
        principals.c.grants,
        principals.c.disabled_at,
    )
    .join(
        principals,
        sa.and_(principals.c.tenant_id == api_keys.c.tenant_id, principals.c.id == api_keys.c.principal_id),
    )
    .where(api_keys.c.key_hash == sa.bindparam("h"))
)


def _refusal(row: Any) -> str | None:
    """Why a key's row is refused (None: it is not)."""
    if row is None:
        return "unknown_key"
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= time.time():
        return "expired"
    if row.disabled_at is not None:
        return "principal_disabled"
    return None


def _key_event(action: str, key: ApiKey, actor: str | None) -> AuditEvent:
    return AuditEvent(
        action=action,
        resource_type="api_key",
        resource_id=key.id,
        actor=actor,
        details={"principal_id": key.principal_id, "name": key.name, "prefix": key.prefix},
    )


class KeyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def ensure_tenant(self, name: str) -> str:
        """The id of the tenant called `name`, creating it if needed."""
        name = check_name(name, "tenant")
        with self.db.write() as conn:
            found = conn.execute(sa.select(tenants.c.id).where(tenants.c.name == name)).scalar()
            if found is not None:
                return str(found)
            tenant_id = new_id("ten")
            conn.execute(tenants.insert().values(id=tenant_id, name=name, created_at=int(time.time())))
            return tenant_id

    def find_tenant(self, name: str) -> str | None:
        with self.db.read() as conn:
            found = conn.execute(sa.select(tenants.c.id).where(tenants.c.name == name)).scalar()
        return None if found is None else str(found)

    def ensure_principal(
        self, tenant_id: str, name: str, kind: str = "user", role: str = "member"
    ) -> Principal:
        """The principal called `name`, created with `kind` and `role` if new (an existing one keeps
        its own)."""
        name = check_name(name, "principal")
        check_kind(kind)
        check_role(role)
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(principals).where(principals.c.tenant_id == tenant_id, principals.c.name == name)
            ).first()
            if row is not None:
                return principal_from_row(row)
            now = int(time.time())
            principal = Principal(tenant_id, new_id("prn"), name, kind, role, created_at=now)
            conn.execute(
                principals.insert().values(
                    tenant_id=tenant_id, id=principal.id, name=name, kind=kind, role=role, created_at=now
                )
            )
            event = AuditEvent(
                "principal.create",
                "principal",
                principal.id,
                actor=None,
                details={"name": name, "kind": kind, "role": role},
            )
            append_audit(conn, tenant_id, [event])
            return principal

    def set_role(
        self, tenant_id: str, principal_id: str, role: str, *, actor: str | None = None
    ) -> Principal:
        check_role(role)
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(principals)
                .where(principals.c.tenant_id == tenant_id, principals.c.id == principal_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"No principal with id '{principal_id}'.")
            before = principal_from_row(row)
            if before.role == role:
                return before
            conn.execute(
                principals.update()
                .where(principals.c.tenant_id == tenant_id, principals.c.id == principal_id)
                .values(role=role)
            )
            event = AuditEvent(
                action="principal.update",
                resource_type="principal",
                resource_id=principal_id,
                actor=actor,
                details={"role": role, "was": before.role},
            )
            append_audit(conn, tenant_id, [event])
        return dataclasses.replace(before, role=role)

    def get_principal(self, tenant_id: str, principal_id: str) -> Principal:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(principals).where(
                    principals.c.tenant_id == tenant_id, principals.c.id == principal_id
                )
            ).first()
        if row is None:
            raise NotFound(f"No principal with id '{principal_id}'.")
        return principal_from_row(row)

    def create_key(
        self,
        tenant_id: str,
        principal_id: str,
        name: str = "default",
        *,
        actor: str | None = None,
        expires_at: int | None = None,
        scopes: tuple[str, ...] | None = None,
        rotated_from: str | None = None,
        conn: sa.Connection | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key (refused from `expires_at` on, when given; holding only `scopes`, when
        given); return its record and the secret, which is never retrievable again."""
        name = check_name(name, "name")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            tenant_id=tenant_id,
            id=new_id("key"),
            principal_id=principal_id,
            name=name,
            prefix=secret[:12],
            created_at=int(time.time()),
            revoked_at=None,
            expires_at=expires_at,
            scopes=scopes,
            rotated_from=rotated_from,
        )
        values = {
            "tenant_id": tenant_id,
            "id": key.id,
            "principal_id": principal_id,
            "name": name,
            "prefix": key.prefix,
            "key_hash": hash_key(secret),
            "created_at": key.created_at,
            "revoked_at": None,
            "expires_at": expires_at,
            "scopes": None if scopes is None else json.dumps(list(scopes)),
            "rotated_from": rotated_from,
        }
        if conn is not None:
            conn.execute(api_keys.insert().values(**values))
            append_audit(conn, tenant_id, [_key_event("key.create", key, actor)])
            return key, secret
        with self.db.write() as conn:
            found = conn.execute(
                sa.select(principals.c.id).where(
                    principals.c.tenant_id == tenant_id, principals.c.id == principal_id
                )
            ).first()
            if found is None:
                raise NotFound(f"No principal '{principal_id}'.", param="principal")
            conn.execute(api_keys.insert().values(**values))
            append_audit(conn, tenant_id, [_key_event("key.create", key, actor)])
        return key, secret

    def authenticate(self, secret: str) -> Caller | None:
        """The caller a live key belongs to, or None for an unknown, revoked or expired key or a
        disabled principal's (a refusal is audited: in the key's tenant for a known key, in the
        system chain for an unknown one)."""
        with self.db.read() as conn:
            row = conn.execute(_BY_HASH, {"h": hash_key(secret)}).first()
        reason = _refusal(row)
        if row is not None and reason is None:
            return Caller(
                tenant_id=row.tenant_id,
                principal_id=row.principal_id,
                key_id=row.id,
                role=row.role,
                scopes=None if row.scopes is None else tuple(json.loads(row.scopes)),
                grants=parse_grants(row.grants),
            )
        tenant_id = SYSTEM_TENANT if row is None else row.tenant_id
        event = AuditEvent(
            action="auth.failure",
            resource_type="api_key",
            resource_id=None if row is None else row.id,
            actor=None if row is None else row.principal_id,
            outcome="denied",
            details={"reason": reason},
        )
        with self.db.write() as conn:
            append_audit(conn, tenant_id, [event])
        return None

    def get_key(self, tenant_id: str, key_id: str) -> ApiKey:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(api_keys).where(api_keys.c.tenant_id == tenant_id, id_equals(api_keys.c.id, key_id))
            ).first()
        if row is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
        return _key(row)

    def list_keys(
        self,
        tenant_id: str | None = None,
        *,
        principal_id: str | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.tenant_id, api_keys.c.id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        if principal_id is not None:
            query = query.where(id_equals(api_keys.c.principal_id, principal_id))
        if after is not None:
            query = query.where(api_keys.c.id > after)
        if limit is not None:
            query = query.limit(limit)
        with self.db.read() as conn:
            return [_key(row) for row in conn.execute(query)]

    def revoke_key(self, key_id: str, *, actor: str | None = None, tenant_id: str | None = None) -> ApiKey:
        """Revoke a key (of `tenant_id` only, when given): refused by every process from the next
        request on, since each request reads its key."""
        with self.db.write() as conn:
            query = sa.select(api_keys).where(id_equals(api_keys.c.id, key_id))
            if tenant_id is not None:
                query = query.where(api_keys.c.tenant_id == tenant_id)
            row = conn.execute(query.with_for_update()).first()
            if row is None:
                raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
            key = _key(row)
            if key.revoked_at is None:
                now = int(time.time())
                conn.execute(
                    api_keys.update()
                    .where(api_keys.c.tenant_id == key.tenant_id, api_keys.c.id == key.id)
                    .values(revoked_at=now)
                )
                key = dataclasses.replace(key, revoked_at=now)
                append_audit(conn, key.tenant_id, [_key_event("key.revoke", key, actor)])
            return key

    def rotate_key(
        self, tenant_id: str, key_id: str, *, grace_seconds: int = 0, actor: str | None = None
    ) -> tuple[ApiKey, str, ApiKey]:
        """A new key for the same principal, name, scopes and remaining lifetime; the old one is
        revoked now, or expires `grace_seconds` from now so that deployments can switch over.
        Returns the new key, its secret and the old key as it is now."""
        now = int(time.time())
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(api_keys)
                .where(api_keys.c.tenant_id == tenant_id, id_equals(api_keys.c.id, key_id))
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
            old = _key(row)
            if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
                raise Conflict(f"API key '{key_id}' is revoked or expired: create a new one.", param="key_id")
            key, secret = self.create_key(
                tenant_id,
                old.principal_id,
                old.name,
                actor=actor,
                expires_at=old.expires_at,
                scopes=old.scopes,
                rotated_from=old.id,
                conn=conn,
            )
            if grace_seconds:
                ends = now + grace_seconds
                if old.expires_at is None or ends < old.expires_at:
                    conn.execute(
                        api_keys.update()
                        .where(api_keys.c.tenant_id == tenant_id, api_keys.c.id == old.id)
                        .values(expires_at=ends)
                    )
                    old = dataclasses.replace(old, expires_at=ends)
            else:
                conn.execute(
                    api_keys.update()
                    .where(api_keys.c.tenant_id == tenant_id, api_keys.c.id == old.id)
                    .values(revoked_at=now)
                )
                old = dataclasses.replace(old, revoked_at=now)
            event = _key_event("key.rotate", old, actor)
            append_audit(
                conn, tenant_id, [dataclasses.replace(event, details={**event.details, "new_key": key.id})]
            )
        return key, secret, old

    def tenant_names(self) -> dict[str, str]:
        with self.db.read() as conn:
            return {row.id: row.name for row in conn.execute(sa.select(tenants.c.id, tenants.c.name))}

    def principal_names(self) -> dict[tuple[str, str], str]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(principals.c.tenant_id, principals.c.id, principals.c.name))
            return {(row.tenant_id, row.id): row.name for row in rows}

    def find_principal(self, tenant_id: str, name: str) -> Principal | None:
        """The principal called `name`, or None (one indexed read; `ensure_principal` writes)."""
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(principals).where(principals.c.tenant_id == tenant_id, principals.c.name == name)
            ).first()
        return None if row is None else principal_from_row(row)
