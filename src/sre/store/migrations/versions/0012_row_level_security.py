"""Row-level security by tenant on PostgreSQL, on every table with a tenant (`sre.store.tenancy`).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

from sre.store.tenancy import POLICY, protect_all

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        protect_all(bind)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for (table,) in bind.exec_driver_sql(
        "SELECT tablename FROM pg_policies WHERE policyname = %(p)s", {"p": POLICY}
    ):
        bind.exec_driver_sql(f"DROP POLICY {POLICY} ON {table}")
        bind.exec_driver_sql(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        bind.exec_driver_sql(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
