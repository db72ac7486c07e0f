"""bootstrap: intents and reconcile records

Revision ID: 0901_bootstrap
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0901_bootstrap"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "bootstrap_intent",
        sa.Column("name", s(length=63), nullable=False),
        sa.Column("profile", s(length=200), nullable=False),
        sa.Column("values", s(), nullable=False),
        sa.Column("roles", s(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("source", s(length=1000), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "bootstrap_component",
        sa.Column("key", s(length=200), nullable=False),
        sa.Column("intent", s(length=63), nullable=False),
        sa.Column("phase", s(length=32), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("last_error", s(), nullable=True),
        sa.Column("last_probe_at", sa.Float(), nullable=False),
        sa.Column("probe_failures", sa.Integer(), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=True),
        sa.Column("done_execs", s(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_bootstrap_component_intent", "bootstrap_component", ["intent"])


def downgrade() -> None:
    op.drop_index("ix_bootstrap_component_intent", table_name="bootstrap_component")
    op.drop_table("bootstrap_component")
    op.drop_table("bootstrap_intent")
