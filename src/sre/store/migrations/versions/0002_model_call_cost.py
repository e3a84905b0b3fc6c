"""Model calls record cached tokens, whether counts are exact, and cost; usage is read by day.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_calls") as batch:
        batch.add_column(sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("tokens_exact", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("cost_usd", sa.Float, nullable=True))
    op.create_index("ix_model_calls_created", "model_calls", ["tenant_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_model_calls_created", "model_calls")
    with op.batch_alter_table("model_calls") as batch:
        batch.drop_column("cost_usd")
        batch.drop_column("tokens_exact")
        batch.drop_column("cached_tokens")
