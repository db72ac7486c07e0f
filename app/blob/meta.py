"""The cache's metadata repository: the only code that reads or writes the ``cache_*`` tables.

Calls are synchronous (short transactions); the cache runs writes in a worker thread.
In memory the cache keeps :class:`BlobEntry`/:class:`TagEntry` indexes loaded by
:meth:`MetaStore.load`, so serving a warm request never touches the database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from sqlmodel import col, delete, select

from app.state.db import Database
from app.state.models.blob import CacheBlob, CacheBlobRepo, CachePrepull, CacheTag


@dataclasses.dataclass
class BlobEntry:
    digest: str
    size: int
    media_type: str | None
    kind: str  # "blob" | "manifest"
    upstream: str
    created_at: float
    last_access: float
    repos: set[tuple[str, str]] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class TagEntry:
    upstream: str
    repository: str
    tag: str
    digest: str
    media_type: str
    validated_at: float


class MetaStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self) -> tuple[dict[str, BlobEntry], dict[tuple[str, str, str], TagEntry]]:
        with self.db.session() as s:
            blobs = {
                b.digest: BlobEntry(b.digest, b.size, b.media_type, b.kind, b.upstream, b.created_at, b.last_access)
                for b in s.exec(select(CacheBlob))
            }
            for r in s.exec(select(CacheBlobRepo)):
                if r.digest in blobs:
                    blobs[r.digest].repos.add((r.upstream, r.repository))
            tags = {
                (t.upstream, t.repository, t.tag): TagEntry(
                    t.upstream, t.repository, t.tag, t.digest, t.media_type, t.validated_at
                )
                for t in s.exec(select(CacheTag))
            }
        return blobs, tags

    def put_blob(self, e: BlobEntry) -> None:
        with self.db.session() as s:
            s.merge(
                CacheBlob(
                    digest=e.digest,
                    size=e.size,
                    media_type=e.media_type,
                    kind=e.kind,
                    upstream=e.upstream,
                    created_at=e.created_at,
                    last_access=e.last_access,
                )
            )
            for up, repo in e.repos:
                s.merge(CacheBlobRepo(digest=e.digest, upstream=up, repository=repo))
            s.commit()

    def add_repo(self, digest: str, upstream: str, repository: str) -> None:
        with self.db.session() as s:
            s.merge(CacheBlobRepo(digest=digest, upstream=upstream, repository=repository))
            s.commit()

    def put_tag(self, t: TagEntry) -> None:
        with self.db.session() as s:
            s.merge(
                CacheTag(
                    upstream=t.upstream,
                    repository=t.repository,
                    tag=t.tag,
                    digest=t.digest,
                    media_type=t.media_type,
                    validated_at=t.validated_at,
                )
            )
            s.commit()

    def delete_tag(self, upstream: str, repository: str, tag: str) -> None:
        with self.db.session() as s:
            s.exec(
                delete(CacheTag).where(
                    col(CacheTag.upstream) == upstream,  # type: ignore[call-overload]
                    col(CacheTag.repository) == repository,
                    col(CacheTag.tag) == tag,
                )
            )
            s.commit()

    def delete_blobs(self, digests: Iterable[str]) -> None:
        ds = list(digests)
        if not ds:
            return
        with self.db.session() as s:
            s.exec(delete(CacheBlobRepo).where(col(CacheBlobRepo.digest).in_(ds)))  # type: ignore[call-overload]
            s.exec(delete(CacheTag).where(col(CacheTag.digest).in_(ds)))  # type: ignore[call-overload]
            s.exec(delete(CacheBlob).where(col(CacheBlob.digest).in_(ds)))  # type: ignore[call-overload]
            s.commit()

    def touch(self, accesses: dict[str, float]) -> None:
        if not accesses:
            return
        with self.db.session() as s:
            for digest, ts in accesses.items():
                row = s.get(CacheBlob, digest)
                if row is not None and row.last_access < ts:
                    row.last_access = ts
                    s.add(row)
            s.commit()

    # --- prepull jobs -------------------------------------------------------------------
    def put_job(self, job: CachePrepull) -> None:
        with self.db.session() as s:
            s.merge(job)
            s.commit()

    def jobs(self) -> list[CachePrepull]:
        with self.db.session() as s:
            return list(s.exec(select(CachePrepull).order_by(col(CachePrepull.created_at))))
