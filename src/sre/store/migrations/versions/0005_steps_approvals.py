"""Durable runs: each run's conversation, queue order and committed cursor; the step journal; approvals.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("conversation_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("queued_ms", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("background", sa.Boolean, nullable=False, server_default=sa.true()))
        batch.add_column(sa.Column("steps", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("committed_sequence", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_runs_conversation", "runs", ["tenant_id", "conversation_id", "status"])
    op.create_table(
        "run_steps",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("call_id", sa.String(256), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("call_id", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("arguments", sa.Text, nullable=False),
        sa.Column("approvers", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("decided_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("decided_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_approvals_status", "approvals", ["tenant_id", "status", "created_at"])
    op.create_index("ix_approvals_response", "approvals", ["tenant_id", "response_id"])


def downgrade() -> None:
    op.drop_index("ix_approvals_response", table_name="approvals")
    op.drop_index("ix_approvals_status", table_name="approvals")
    op.drop_table("approvals")
    op.drop_table("run_steps")
    op.drop_index("ix_runs_conversation", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        for column in ("committed_sequence", "steps", "background", "queued_ms", "conversation_id"):
            batch.drop_column(column)
