"""Quotas: subjects' own limits, request and token counters, plain turns' places; the API key of each
run and model call, and an index of the runs that hold a place under a concurrency limit.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

RUN_HOLDS_PLACE = "status IN ('queued', 'in_progress', 'requires_action')"


def upgrade() -> None:
    op.create_table(
        "quota_limits",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("subject", sa.String(16), primary_key=True),
        sa.Column("subject_id", sa.String(64), primary_key=True),
        sa.Column("requests_per_minute", sa.BigInteger, nullable=True),
        sa.Column("tokens_per_day", sa.BigInteger, nullable=True),
        sa.Column("concurrent_runs", sa.BigInteger, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "quota_counters",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("counter", sa.String(32), primary_key=True),
        sa.Column("subject", sa.String(16), primary_key=True),
        sa.Column("subject_id", sa.String(64), primary_key=True),
        sa.Column("window_start", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "quota_slots",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("principal_id", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("expires_ms", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("key_id", sa.String(64), nullable=True))
    with op.batch_alter_table("model_calls") as batch:
        batch.add_column(sa.Column("key_id", sa.String(64), nullable=True))
    op.create_index(
        "ix_runs_active",
        "runs",
        ["tenant_id", "principal_id", "key_id"],
        sqlite_where=sa.text(RUN_HOLDS_PLACE),
        postgresql_where=sa.text(RUN_HOLDS_PLACE),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_active", table_name="runs")
    with op.batch_alter_table("model_calls") as batch:
        batch.drop_column("key_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("key_id")
    op.drop_table("quota_slots")
    op.drop_table("quota_counters")
    op.drop_table("quota_limits")
