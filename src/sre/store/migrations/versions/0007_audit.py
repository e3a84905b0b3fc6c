"""The audit trail (hash-chained events per tenant, and each chain's head), principals' roles, and
conversations' owners and visibility.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("principals") as batch:  # those made before had every right
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="admin"))
    with op.batch_alter_table("conversations") as batch:  # those made before belong to the tenant
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("visibility", sa.String(16), nullable=False, server_default="private"))
    op.create_table(
        "audit_events",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(200), nullable=True),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("on_behalf_of", sa.String(64), nullable=True),
        sa.Column("agent", sa.String(200), nullable=True),
        sa.Column("agent_version", sa.Integer, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_action", "audit_events", ["tenant_id", "action", "seq"])
    op.create_index("ix_audit_resource", "audit_events", ["tenant_id", "resource_type", "resource_id", "seq"])
    op.create_table(
        "audit_heads",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_heads")
    op.drop_index("ix_audit_resource", table_name="audit_events")
    op.drop_index("ix_audit_action", table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("visibility")
        batch.drop_column("owner")
