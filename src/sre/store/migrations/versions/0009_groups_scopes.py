"""Groups of principals, principals' grants and disabling, API keys' scopes and rotation.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("principals") as batch:
        batch.add_column(sa.Column("grants", sa.Text, nullable=True))
        batch.add_column(sa.Column("disabled_at", sa.BigInteger, nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("scopes", sa.Text, nullable=True))
        batch.add_column(sa.Column("rotated_from", sa.String(64), nullable=True))
    op.create_table(
        "groups",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("grants", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant_id", "name", name="uq_groups_name"),
    )
    op.create_table(
        "group_members",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("group_id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_group_members_member", "group_members", ["tenant_id", "member_id"])


def downgrade() -> None:
    op.drop_index("ix_group_members_member", table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rotated_from")
        batch.drop_column("scopes")
    with op.batch_alter_table("principals") as batch:
        batch.drop_column("disabled_at")
        batch.drop_column("grants")
