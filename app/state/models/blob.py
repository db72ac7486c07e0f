"""Registry cache metadata: which blobs the cache holds, who references them, tags, prepull jobs.

Schema::

    cache_blob       digest PK │ size │ media_type │ kind (blob|manifest) │ upstream (registry host)
                     created_at │ last_access (LRU clock, flushed in batches)
    cache_blob_repo  (digest, upstream, repository) PK          which repositories reference a blob
    cache_tag        (upstream, repository, tag) PK │ digest │ media_type │ validated_at
    cache_prepull    id PK │ reference │ platform │ state (queued|running|done|failed)
                     blobs_done │ blobs_total │ bytes_done │ bytes_total │ error │ created_at │ updated_at

The bytes live in the content store (``content/sha256/<hex>``); a row here without a
file, or a cached file without a row, is repaired at start-up (files win: a verified
file gets a row, a row without its file is dropped).
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class CacheBlob(SQLModel, table=True):
    __tablename__ = "cache_blob"

    digest: str = Field(primary_key=True, max_length=200)
    size: int = 0
    media_type: str | None = None
    kind: str = "blob"
    upstream: str = ""
    created_at: float = 0.0
    last_access: float = 0.0


class CacheBlobRepo(SQLModel, table=True):
    __tablename__ = "cache_blob_repo"

    digest: str = Field(primary_key=True, max_length=200)
    upstream: str = Field(primary_key=True, max_length=255)
    repository: str = Field(primary_key=True, max_length=255)


class CacheTag(SQLModel, table=True):
    __tablename__ = "cache_tag"

    upstream: str = Field(primary_key=True, max_length=255)
    repository: str = Field(primary_key=True, max_length=255)
    tag: str = Field(primary_key=True, max_length=128)
    digest: str
    media_type: str
    validated_at: float = 0.0


class CachePrepull(SQLModel, table=True):
    __tablename__ = "cache_prepull"

    id: str = Field(primary_key=True, max_length=64)
    reference: str
    platform: str
    state: str = "queued"
    blobs_done: int = 0
    blobs_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
