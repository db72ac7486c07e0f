"""runtime: containers

Revision ID: 0501_containers
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0501_containers"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "rt_container",
        sa.Column("id", s(length=200), nullable=False),
        sa.Column("name", s(length=253), nullable=False),
        sa.Column("runtime", s(), nullable=False),
        sa.Column("bundle", s(), nullable=False),
        sa.Column("rootfs", s(), nullable=False),
        sa.Column("log_path", s(), nullable=False),
        sa.Column("image", s(), nullable=False),
        sa.Column("status", s(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_start", sa.Integer(), nullable=True),
        sa.Column("shim_pid", sa.Integer(), nullable=True),
        sa.Column("shim_start", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("network", s(), nullable=False),
        sa.Column("stop_signal", s(), nullable=False),
        sa.Column("labels", s(), nullable=False),
        sa.Column("annotations", s(), nullable=False),
        sa.Column("spec", s(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rt_container_name", "rt_container", ["name"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_rt_container_name", table_name="rt_container")
    op.drop_table("rt_container")
