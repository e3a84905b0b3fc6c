"""The storage of a tenant's secrets: names, descriptions and ciphertexts, never a plaintext.

This repository knows nothing of keys or ciphers: it is handed ciphertexts made above it
(`sre.governance.secrets`) and, to re-encrypt, a function that turns an old ciphertext into a new
one. Each change is one transaction with its audit event, which names the secret and never carries
its value or ciphertext. A secret is found by id or by name (an id wins), within its tenant only.
Re-encryption works a tenant at a time, a batch per transaction, on the rows whose `key_id` is not
the newest key's, so it can stop anywhere and run again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from sre.store.audit import append_audit
from sre.store.database import Database, id_equals
from sre.store.schema import secrets
from sre.types.audit import AuditEvent
from sre.types.errors import Conflict, NotFound
from sre.types.secrets import SecretRecord

# What a batch re-encrypts with: (the secret, its ciphertext, the key id it carries) -> the new
# ciphertext, or None to leave that secret as it is (it could not be decrypted).
Reseal = Callable[[SecretRecord, str, str], str | None]


@dataclass(frozen=True, slots=True)
class Sealed:
    """A secret with its ciphertext and the fingerprint of the key that made it."""

    record: SecretRecord
    ciphertext: str
    key_id: str


def _record(row: Any) -> SecretRecord:
    return SecretRecord(
        tenant_id=row.tenant_id,
        id=row.id,
        name=row.name,
        description=row.description,
        created_at=row.created_at,
        updated_at=row.updated_at,
        created_by=row.created_by,
    )


def _event(action: str, record: SecretRecord, actor: str | None, **details: Any) -> AuditEvent:
    return AuditEvent(action, "secret", record.id, actor=actor, details={"name": record.name, **details})


class SecretRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _row(conn: sa.Connection, tenant_id: str, ref: str, *, lock: bool = False) -> Any:
        query = sa.select(secrets).where(
            secrets.c.tenant_id == tenant_id,
            sa.or_(id_equals(secrets.c.id, ref), id_equals(secrets.c.name, ref)),
        )
        rows = conn.execute(query.with_for_update() if lock else query).all()
        if not rows:
            raise NotFound(f"No secret '{ref}'.", param="secret")
        return min(rows, key=lambda r: r.id != ref)  # an id wins over a name

    def listing(
        self, tenant_id: str, *, after: str | None = None, limit: int = 20
    ) -> tuple[list[SecretRecord], bool]:
        query = sa.select(secrets).where(secrets.c.tenant_id == tenant_id)
        if after is not None:
            query = query.where(secrets.c.id > after)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(secrets.c.id).limit(limit + 1)).all()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    def get(self, tenant_id: str, ref: str) -> SecretRecord:
        with self.db.read() as conn:
            return _record(self._row(conn, tenant_id, ref))

    def sealed(self, tenant_id: str, ref: str) -> Sealed:
        """The secret `ref` with its ciphertext (for the one who will decrypt it)."""
        with self.db.read() as conn:
            row = self._row(conn, tenant_id, ref)
        return Sealed(_record(row), row.ciphertext, row.key_id)

    def create(
        self,
        record: SecretRecord,
        ciphertext: str,
        key_id: str,
        *,
        actor: str | None = None,
    ) -> SecretRecord:
        """Store a new secret (`Conflict` when its name is taken in the tenant)."""
        with self.db.write() as conn:
            taken = conn.execute(
                sa.select(secrets.c.id).where(
                    secrets.c.tenant_id == record.tenant_id, secrets.c.name == record.name
                )
            ).first()
            if taken is not None:
                raise Conflict(f"A secret named '{record.name}' already exists.", param="name")
            try:
                conn.execute(
                    secrets.insert().values(
                        tenant_id=record.tenant_id,
                        id=record.id,
                        name=record.name,
                        description=record.description,
                        ciphertext=ciphertext,
                        key_id=key_id,
                        created_at=record.created_at,
                        updated_at=record.updated_at,
                        created_by=record.created_by,
                    )
                )
            except sa.exc.IntegrityError:  # made at the same moment by another process
                raise Conflict(f"A secret named '{record.name}' already exists.", param="name") from None
            append_audit(conn, record.tenant_id, [_event("secret.create", record, actor)])
        return record

    def replace(
        self,
        tenant_id: str,
        secret_id: str,
        ciphertext: str,
        key_id: str,
        *,
        description: str | None = None,
        actor: str | None = None,
    ) -> SecretRecord:
        """Give the secret `secret_id` a new ciphertext (and description, when given)."""
        now = int(time.time())
        with self.db.write() as conn:
            row = self._row(conn, tenant_id, secret_id, lock=True)
            if row.id != secret_id:
                raise NotFound(f"No secret '{secret_id}'.", param="secret")
            values: dict[str, Any] = {"ciphertext": ciphertext, "key_id": key_id, "updated_at": now}
            if description is not None:
                values["description"] = description
            conn.execute(
                secrets.update()
                .where(secrets.c.tenant_id == tenant_id, secrets.c.id == secret_id)
                .values(**values)
            )
            after = dataclasses.replace(
                _record(row), updated_at=now, description=values.get("description", row.description)
            )
            details = {"description_changed": True} if description not in (None, row.description) else {}
            append_audit(conn, tenant_id, [_event("secret.update", after, actor, **details)])
        return after

    def delete(self, tenant_id: str, ref: str, *, actor: str | None = None) -> SecretRecord:
        with self.db.write() as conn:
            row = self._row(conn, tenant_id, ref, lock=True)
            conn.execute(secrets.delete().where(secrets.c.tenant_id == tenant_id, secrets.c.id == row.id))
            gone = _record(row)
            append_audit(conn, tenant_id, [_event("secret.delete", gone, actor)])
        return gone

    # -- re-encryption -------------------------------------------------------------------------

    def tenants_to_rekey(self, key_id: str) -> list[str]:
        """The tenants that have secrets not encrypted with the key `key_id`."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(secrets.c.tenant_id)
                .where(secrets.c.key_id != key_id)
                .distinct()
                .order_by(secrets.c.tenant_id)
            )
            return [r.tenant_id for r in rows]

    def rekey_batch(
        self, tenant_id: str, key_id: str, reseal: Reseal, *, after: str | None = None, limit: int = 100
    ) -> tuple[int, int, str | None]:
        """In one transaction, re-encrypt with `reseal` up to `limit` of the tenant's secrets (with
        ids after `after`) that the key `key_id` did not encrypt, with one `secret.rekey` event (a
        count). Returns how many it re-encrypted, how many it looked at, and the last one's id (the
        `after` of the next batch)."""
        query = (
            sa.select(secrets)
            .where(secrets.c.tenant_id == tenant_id, secrets.c.key_id != key_id)
            .order_by(secrets.c.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(secrets.c.id > after)
        done = 0
        with self.db.write() as conn:
            rows = conn.execute(query.with_for_update()).all()
            for row in rows:
                ciphertext = reseal(_record(row), row.ciphertext, row.key_id)
                if ciphertext is None:
                    continue
                conn.execute(
                    secrets.update()
                    .where(secrets.c.tenant_id == tenant_id, secrets.c.id == row.id)
                    .values(ciphertext=ciphertext, key_id=key_id)
                )
                done += 1
            if done:
                event = AuditEvent(
                    "secret.rekey", "secret", None, actor=None, details={"count": done, "key_id": key_id}
                )
                append_audit(conn, tenant_id, [event])
        return done, len(rows), (rows[-1].id if rows else None)
