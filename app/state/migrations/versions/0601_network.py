"""network: container attachments and bridge IP leases

Revision ID: 0601_network
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0601_network"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "net_attachment",
        sa.Column("container_id", s(length=200), nullable=False),
        sa.Column("mode", s(), nullable=False),
        sa.Column("driver", s(), nullable=False),
        sa.Column("network", s(), nullable=False),
        sa.Column("netns", s(), nullable=True),
        sa.Column("netns_ino", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("addresses", s(), nullable=False),
        sa.Column("gateway", s(), nullable=True),
        sa.Column("ports", s(), nullable=False),
        sa.Column("helper_pids", s(), nullable=False),
        sa.Column("shared_with", s(), nullable=True),
        sa.Column("hostname", s(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("container_id"),
    )
    op.create_table(
        "net_lease",
        sa.Column("network", s(length=64), nullable=False),
        sa.Column("address", s(length=64), nullable=False),
        sa.Column("container_id", s(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("network", "address"),
    )
    op.create_index("ix_net_lease_container_id", "net_lease", ["container_id"])


def downgrade() -> None:
    op.drop_index("ix_net_lease_container_id", table_name="net_lease")
    op.drop_table("net_lease")
    op.drop_table("net_attachment")
