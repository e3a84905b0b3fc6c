"""Row-level security on PostgreSQL: the database itself keeps tenants apart.

Every table with a `tenant_id` (and `tenants` by its `id`) has row-level security enabled and
forced (so the tables' owner is subject to it too) with one policy: a transaction bound to a tenant
(the session setting `sre.tenant_id`, see `bind`) sees and writes that tenant's rows only; an unbound
one — authentication by key hash, workers claiming runs across tenants, migrations — sees all.
The store binds every transaction made on behalf of a tenant: the API binds the tenant of the
authenticated caller for the rest of the request (`bound_to`), a worker the tenant of the run it
executes. So a query that forgot its tenant filter still returns nothing of another tenant, as long
as SRE connects as a role that is subject to row-level security (not a superuser, not BYPASSRLS).
SQLite has no row-level security; there the filters in every query are the only fence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

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


_KNOWN = "sre_tenant"  # in a pooled connection's info: the tenant its session is bound to ("": none)


def bind(conn: sa.Connection, tenant_id: str | None) -> None:
    """Bind `conn`'s session to `tenant_id` (None: to no tenant) for what it runs next.

    The binding is the session's (`set_config(…, false)`) and remembered with the pooled connection,
    so a transaction for the tenant the connection was last bound to costs no statement at all; one
    for another tenant, or for none, costs one. A rolled-back transaction may have undone a binding
    made in it: the connection's binding is then unknown and set again next time (`install`)."""
    info = conn.connection.info
    wanted = tenant_id or ""
    if info.get(_KNOWN) != wanted:
        conn.exec_driver_sql("SELECT set_config(%(s)s, %(t)s, false)", {"s": SETTING, "t": wanted})
        info[_KNOWN] = wanted


def install(engine: sa.Engine) -> None:
    """Keep each pooled connection's remembered binding true: a new session has none, and after a
    rollback it is unknown."""

    @sa.event.listens_for(engine, "connect")
    def _fresh(_dbapi_connection: Any, record: Any) -> None:
        record.info[_KNOWN] = ""

    @sa.event.listens_for(engine, "rollback")
    def _undone(conn: sa.Connection) -> None:
        with contextlib.suppress(Exception):  # an invalidated connection starts again at "connect"
            conn.connection.info[_KNOWN] = None


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
