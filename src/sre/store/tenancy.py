"""Row-level security on PostgreSQL: the database itself keeps tenants apart.

Every table with a `tenant_id` (and `tenants` by its `id`) has row-level security enabled and
forced (so the tables' owner is subject to it too) with one policy: a transaction bound to a tenant
(`SELECT set_config('sre.tenant_id', …, true)`) sees and writes that tenant's rows only; an unbound
one — authentication by key hash, workers claiming runs across tenants, migrations — sees all.
The store binds every transaction made on behalf of a tenant: the API binds the tenant of the
authenticated caller for the rest of the request (`bound_to`), a worker the tenant of the run it
executes. So a query that forgot its tenant filter still returns nothing of another tenant, as long
as SRE connects as a role that is subject to row-level security (not a superuser, not BYPASSRLS).
SQLite has no row-level security; there the filters in every query are the only fence.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import sqlalchemy as sa

SETTING = "sre.tenant_id"
POLICY = "sre_tenant_isolation"
# The tenant the current request or run works for (None: not bound, as in system work).
BOUND_TENANT: ContextVar[str | None] = ContextVar("sre_bound_tenant", default=None)


def policy_sql(table: str, column: str = "tenant_id") -> list[str]:
    """The statements that put `table` under the tenant policy (idempotent)."""
    visible = f"coalesce(current_setting('{SETTING}', true), '') IN ('', {column})"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"DROP POLICY IF EXISTS {POLICY} ON {table}",
        f"CREATE POLICY {POLICY} ON {table} USING ({visible}) WITH CHECK ({visible})",
    ]


def protect_all(conn: sa.Connection) -> list[str]:
    """Put every table with a tenant column under the policy; return their names."""
    inspector = sa.inspect(conn)
    done = []
    for table in inspector.get_table_names():
        columns = {c["name"] for c in inspector.get_columns(table)}
        column = "tenant_id" if "tenant_id" in columns else "id" if table == "tenants" else None
        if column is None:
            continue
        for statement in policy_sql(table, column):
            conn.exec_driver_sql(statement)
        done.append(table)
    return done


def bind(conn: sa.Connection, tenant_id: str) -> None:
    """Bind the transaction `conn` is in to `tenant_id` (until it ends)."""
    conn.exec_driver_sql("SELECT set_config(%(s)s, %(t)s, true)", {"s": SETTING, "t": tenant_id})


@contextmanager
def bound_to(tenant_id: str | None) -> Iterator[None]:
    """Bind the store's transactions in this context (and the tasks and threads it starts) to a
    tenant."""
    token = BOUND_TENANT.set(tenant_id)
    try:
        yield
    finally:
        BOUND_TENANT.reset(token)


def subject_to_rls(conn: sa.Connection) -> bool:
    """Whether the connected role is subject to row-level security (not a superuser, no BYPASSRLS)."""
    row = conn.exec_driver_sql(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).first()
    return row is not None and not row[0] and not row[1]
