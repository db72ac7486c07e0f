"""cri: pod sandboxes

Revision ID: 0801_cri
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0801_cri"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "cri_pod",
        sa.Column("id", s(length=64), nullable=False),
        sa.Column("name_key", s(length=1024), nullable=False),
        sa.Column("name", s(), nullable=False),
        sa.Column("namespace", s(), nullable=False),
        sa.Column("uid", s(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("state", s(length=16), nullable=False),
        sa.Column("created_ns", sa.Integer(), nullable=False),
        sa.Column("runtime_handler", s(), nullable=False),
        sa.Column("spec_json", s(), nullable=False),
        sa.Column("network", s(length=16), nullable=False),
        sa.Column("ip", s(), nullable=False),
        sa.Column("additional_ips", s(), nullable=False),
        sa.Column("holder_pid", sa.Integer(), nullable=False),
        sa.Column("holder_start", sa.Integer(), nullable=False),
        sa.Column("netns_path", s(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name_key"),
    )


def downgrade() -> None:
    op.drop_table("cri_pod")
