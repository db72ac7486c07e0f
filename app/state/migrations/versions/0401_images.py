"""images: image store (images by config digest, tags)

Revision ID: 0401_images
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0401_images"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "image",
        sa.Column("id", s(length=200), nullable=False),
        sa.Column("manifest_digest", s(), nullable=False),
        sa.Column("index_digest", s(), nullable=True),
        sa.Column("platform", s(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("config", s(), nullable=False),
        sa.Column("layers", s(), nullable=False),
        sa.Column("diff_ids", s(), nullable=False),
        sa.Column("chain_ids", s(), nullable=False),
        sa.Column("repo_digests", s(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_used_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "image_tag",
        sa.Column("name", s(length=400), nullable=False),
        sa.Column("image_id", s(length=200), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("image_tag")
    op.drop_table("image")
