"""apps: vappc app lifecycle records

Revision ID: 0701_apps
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0701_apps"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "vappc_app",
        sa.Column("app_id", s(length=128), nullable=False),
        sa.Column("name", s(), nullable=False),
        sa.Column("spec", s(), nullable=False),
        sa.Column("fingerprint", s(length=64), nullable=False),
        sa.Column("container_id", s(length=200), nullable=True),
        sa.Column("group_name", s(), nullable=True),
        sa.Column("state", s(length=16), nullable=False),
        sa.Column("reason", s(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("app_id"),
    )


def downgrade() -> None:
    op.drop_table("vappc_app")
