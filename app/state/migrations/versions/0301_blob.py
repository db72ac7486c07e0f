"""blob: registry cache metadata (blobs, repository references, tags, prepull jobs)

Revision ID: 0301_blob
Revises: 0001_base
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0301_blob"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = AutoString
    op.create_table(
        "cache_blob",
        sa.Column("digest", s(length=200), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("media_type", s(), nullable=True),
        sa.Column("kind", s(), nullable=False),
        sa.Column("upstream", s(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_access", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "cache_blob_repo",
        sa.Column("digest", s(length=200), nullable=False),
        sa.Column("upstream", s(length=255), nullable=False),
        sa.Column("repository", s(length=255), nullable=False),
        sa.PrimaryKeyConstraint("digest", "upstream", "repository"),
    )
    op.create_table(
        "cache_tag",
        sa.Column("upstream", s(length=255), nullable=False),
        sa.Column("repository", s(length=255), nullable=False),
        sa.Column("tag", s(length=128), nullable=False),
        sa.Column("digest", s(), nullable=False),
        sa.Column("media_type", s(), nullable=False),
        sa.Column("validated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("upstream", "repository", "tag"),
    )
    op.create_table(
        "cache_prepull",
        sa.Column("id", s(length=64), nullable=False),
        sa.Column("reference", s(), nullable=False),
        sa.Column("platform", s(), nullable=False),
        sa.Column("state", s(), nullable=False),
        sa.Column("blobs_done", sa.Integer(), nullable=False),
        sa.Column("blobs_total", sa.Integer(), nullable=False),
        sa.Column("bytes_done", sa.Integer(), nullable=False),
        sa.Column("bytes_total", sa.Integer(), nullable=False),
        sa.Column("error", s(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("cache_prepull")
    op.drop_table("cache_tag")
    op.drop_table("cache_blob_repo")
    op.drop_table("cache_blob")
