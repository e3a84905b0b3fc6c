"""Compaction items: each conversation counts its own, and a partial index finds the newest in one probe.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("compactions", sa.Integer, nullable=False, server_default="0"))
    op.create_index(
        "ix_items_compaction",
        "items",
        ["tenant_id", "conversation_id", "seq"],
        sqlite_where=sa.text("type = 'compaction'"),
        postgresql_where=sa.text("type = 'compaction'"),
    )


def downgrade() -> None:
    op.drop_index("ix_items_compaction", table_name="items")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("compactions")
