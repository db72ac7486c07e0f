"""The runtime's in-process way to pull through the cache (the ``Fetcher`` the image store uses).

::

    fetcher.resolve(ref)                    -> Resolved(body, media_type, digest)   tag or digest
    fetcher.fetch_manifest(ref, digest)     -> Resolved                             child of an index
    fetcher.ensure_blob(ref, digest, size, progress=cb(done, total)) -> Path        verified file
    fetcher.pin(digest) / unpin(digest)     keep an in-use image's blobs from eviction

Every byte returned comes from the content store after verification, so the image
store can unpack ``ensure_blob``'s path directly (one copy of every layer on the node).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from app.blob.cache import BlobCache
from app.errors import Category, Unavailable
from app.oci.reference import Reference

Progress = Callable[[int, int | None], None]


@dataclasses.dataclass(frozen=True)
class Resolved:
    body: bytes
    media_type: str
    digest: str


def _monotonic(progress: Progress) -> Progress:
    """A download that restarts from 0 (upstream without Range) must not move a progress bar back."""
    best = [0]

    def report(done: int, total: int | None) -> None:
        best[0] = max(best[0], done)
        progress(best[0], total)

    return report


class CacheFetcher:
    """Implements ``app.runtime.images.fetch.Fetcher`` over the node's cache (wiring joins them)."""

    def __init__(self, cache: BlobCache) -> None:
        self.cache = cache

    async def resolve(self, ref: Reference) -> Resolved:
        m = await self.cache.get_manifest(ref.registry, ref.repository, ref.object, [])
        return Resolved(m.body, m.media_type, m.digest)

    async def fetch_manifest(self, ref: Reference, digest: str) -> Resolved:
        m = await self.cache.get_manifest(ref.registry, ref.repository, digest, [])
        return Resolved(m.body, m.media_type, m.digest)

    async def ensure_blob(
        self, ref: Reference, digest: str, size: int | None = None, progress: Progress | None = None
    ) -> Path:
        handle = await self.cache.open_blob(ref.registry, ref.repository, digest)
        try:
            if handle.flight is not None:
                await handle.flight.wait_done(_monotonic(progress) if progress else None)
            elif progress is not None:
                progress(handle.size or 0, handle.size)
        finally:
            handle.release()
        path = self.cache.store.path(digest)
        if not path.exists():
            raise Unavailable(f"blob {digest} vanished after download", category=Category.IMAGE)
        if size is not None and path.stat().st_size != size:
            raise Unavailable(f"blob {digest} has size {path.stat().st_size}, descriptor says {size}",
                              category=Category.IMAGE)  # fmt: skip
        return path

    def blob_path(self, digest: str) -> Path:
        return self.cache.store.path(digest)

    def pin(self, digest: str) -> None:
        self.cache.pin(digest)

    def unpin(self, digest: str) -> None:
        self.cache.unpin(digest)
