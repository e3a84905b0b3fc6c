"""Tenants, principals and API keys.

Keys are random secrets shown once; only their SHA-256 is stored, so a stolen database yields no
usable key. A key resolves to exactly one principal of one tenant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from typing import Any

import sqlalchemy as sa

from sre.store.audit import SYSTEM_TENANT, append_audit
from sre.store.database import Database
from sre.store.schema import api_keys, principals, tenants
from sre.types.audit import AuditEvent
from sre.types.errors import InvalidRequest, NotFound
from sre.types.ids import new_id
from sre.types.records import ROLES, ApiKey, Caller, Principal

KEY_PREFIX = "sre-"
PRINCIPAL_KINDS = ("user", "service", "agent")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise InvalidRequest(f"{what} must be 1 to 200 characters", param=what)
    return value


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
    )


_BY_HASH = (
    sa.select(
        api_keys.c.tenant_id,
        api_keys.c.id,
        api_keys.c.principal_id,
        api_keys.c.revoked_at,
        api_keys.c.expires_at,
        principals.c.role,
    )
    .join(
        principals,
        sa.and_(principals.c.tenant_id == api_keys.c.tenant_id, principals.c.id == api_keys.c.principal_id),
    )
    .where(api_keys.c.key_hash == sa.bindparam("h"))
)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}", param="role")


def _principal(row: sa.Row[Any]) -> Principal:
    m = row._mapping
    return Principal(tenant_id=m["tenant_id"], id=m["id"], name=m["name"], kind=m["kind"], role=m["role"])


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
        name = _check_name(name, "tenant")
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
        name = _check_name(name, "principal")
        if kind not in PRINCIPAL_KINDS:
            raise InvalidRequest(f"principal kind must be one of {', '.join(PRINCIPAL_KINDS)}", param="kind")
        _check_role(role)
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(principals).where(principals.c.tenant_id == tenant_id, principals.c.name == name)
            ).first()
            if row is not None:
                return _principal(row)
            principal = Principal(tenant_id=tenant_id, id=new_id("prn"), name=name, kind=kind, role=role)
            conn.execute(
                principals.insert().values(
                    tenant_id=tenant_id,
                    id=principal.id,
                    name=name,
                    kind=kind,
                    role=role,
                    created_at=int(time.time()),
                )
            )
            return principal

    def set_role(
        self, tenant_id: str, principal_id: str, role: str, *, actor: str | None = None
    ) -> Principal:
        _check_role(role)
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(principals)
                .where(principals.c.tenant_id == tenant_id, principals.c.id == principal_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"No principal with id '{principal_id}'.")
            before = _principal(row)
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
        return _principal(row)

    def create_key(
        self,
        tenant_id: str,
        principal_id: str,
        name: str = "default",
        *,
        actor: str | None = None,
        expires_at: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key (refused from `expires_at` on, when given); return its record and the secret,
        which is never retrievable again."""
        name = _check_name(name, "name")
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
        )
        with self.db.write() as conn:
            conn.execute(
                api_keys.insert().values(
                    tenant_id=tenant_id,
                    id=key.id,
                    principal_id=principal_id,
                    name=name,
                    prefix=key.prefix,
                    key_hash=hash_key(secret),
                    created_at=key.created_at,
                    revoked_at=None,
                    expires_at=expires_at,
                )
            )
            append_audit(conn, tenant_id, [_key_event("key.create", key, actor)])
        return key, secret

    def authenticate(self, secret: str) -> Caller | None:
        """The caller a live key belongs to, or None for an unknown or revoked key (a refusal is
        audited: in the key's tenant for a revoked key, in the system chain for an unknown one)."""
        with self.db.read() as conn:
            row = conn.execute(_BY_HASH, {"h": hash_key(secret)}).first()
        expired = row is not None and row.expires_at is not None and row.expires_at <= time.time()
        if row is not None and row.revoked_at is None and not expired:
            return Caller(
                tenant_id=row.tenant_id, principal_id=row.principal_id, key_id=row.id, role=row.role
            )
        tenant_id = SYSTEM_TENANT if row is None else row.tenant_id
        event = AuditEvent(
            action="auth.failure",
            resource_type="api_key",
            resource_id=None if row is None else row.id,
            actor=None if row is None else row.principal_id,
            outcome="denied",
            details={
                "reason": "unknown_key"
                if row is None
                else "revoked"
                if row.revoked_at is not None
                else "expired"
            },
        )
        with self.db.write() as conn:
            append_audit(conn, tenant_id, [event])
        return None

    def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.tenant_id, api_keys.c.id)
        if tenant_id is not None:
            query = query.where(api_keys.c.tenant_id == tenant_id)
        with self.db.read() as conn:
            return [_key(row) for row in conn.execute(query)]

    def revoke_key(self, key_id: str, *, actor: str | None = None) -> ApiKey:
        with self.db.write() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
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
        return None if row is None else _principal(row)
