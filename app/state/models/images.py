"""Image store: pulled images by ID (config digest) and the names that point at them.

Schema::

    image        id PK (config digest, as containerd and CRI use) │ manifest_digest
                 index_digest (the index a tag resolved to, if any) │ platform │ size
                 config (image config JSON) │ layers (JSON [{digest,size,mediaType}])
                 diff_ids, chain_ids, repo_digests (JSON lists) │ created_at │ last_used_at
    image_tag    name PK ("registry/repository:tag", canonical) │ image_id │ updated_at

A name points at one image; an image without names stays until removed by ID
or collected. Layer snapshots (``snapshots/layers/<chain>``) and blobs are not
rows: they are referenced through ``chain_ids`` / ``layers`` and collected by
the image service's GC when no image refers to them.
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class Image(SQLModel, table=True):
    __tablename__ = "image"

    id: str = Field(primary_key=True, max_length=200)
    manifest_digest: str
    index_digest: str | None = None
    platform: str
    size: int = 0
    config: str
    layers: str
    diff_ids: str
    chain_ids: str
    repo_digests: str
    created_at: float = 0.0
    last_used_at: float = 0.0


class ImageTag(SQLModel, table=True):
    __tablename__ = "image_tag"

    name: str = Field(primary_key=True, max_length=400)
    image_id: str = Field(max_length=200)
    updated_at: float = 0.0
