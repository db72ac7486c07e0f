"""The cache service: the verbs every front door calls (the /v2 app, the admin API, vappc).

Construction (``app/wiring.py``)::

    store   = LocalContentStore(settings.content_dir)
    cache   = BlobCache(settings.blob, store, db, in_use=None)       # app.blob.cache
    service = CacheService(cache, platform=Platform.host())           # then: await service.start()
    fetcher = service.fetcher                                         # for the runtime's image pulls
    app     = create_registry_app(service)                            # /v2 ASGI app, settings.blob.listen
    router  = create_admin_router(service)                            # /v1/cache/... on the admin app

Names arrive as the client wrote them (``/v2/<name>/...`` plus ``?ns=``); the service
resolves them to (upstream, repository) once, with Docker Hub rules, and returns plain
data (no HTTP types).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.blob.cache import BlobCache, BlobHandle, ManifestResult
from app.blob.fetcher import CacheFetcher
from app.blob.prepull import Prepuller
from app.blob.tags import list_tags
from app.oci.manifest import Platform


class CacheService:
    def __init__(self, cache: BlobCache, *, platform: Platform | None = None) -> None:
        self.cache = cache
        self.prepuller = Prepuller(cache, platform or Platform.host(), cache.settings.prepull_concurrency)
        self.fetcher = CacheFetcher(cache)  # what the runtime's image pull uses in-process

    def set_in_use(self, in_use: Callable[[str], bool]) -> None:
        """The runtime's "is this blob part of an image a container uses" check (never evicted)."""
        self.cache.in_use = in_use

    async def start(self) -> None:
        await self.cache.start()
        await self.prepuller.start(list(self.cache.settings.prepull))

    async def close(self) -> None:
        await self.prepuller.close()
        await self.cache.close()

    # --- pull side ---------------------------------------------------------------------
    async def get_manifest(self, name: str, reference: str, accept: list[str], ns: str | None = None
                           ) -> ManifestResult:  # fmt: skip
        registry, repo = self.cache.resolve_name(name, ns)
        return await self.cache.get_manifest(registry, repo, reference, accept)

    async def open_blob(self, name: str, digest: str, ns: str | None = None, *, head: bool = False) -> BlobHandle:
        registry, repo = self.cache.resolve_name(name, ns)
        return await self.cache.open_blob(registry, repo, digest, head=head)

    async def list_tags(self, name: str, ns: str | None, n: int | None, last: str | None
                        ) -> tuple[bytes, str | None]:  # fmt: skip
        registry, repo = self.cache.resolve_name(name, ns)
        return await list_tags(self.cache.upstream(registry), repo, n, last)

    # --- admin -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return self.cache.stats()

    def health(self) -> dict[str, Any]:
        return self.cache.health()

    def prepull(self, reference: str, platform: str | None = None) -> dict[str, Any]:
        return self.prepuller.submit(reference, platform)

    def prepull_jobs(self) -> list[dict[str, Any]]:
        return self.prepuller.jobs()

    def prepull_job(self, job_id: str) -> dict[str, Any]:
        return self.prepuller.get(job_id)

    async def evict(self, *, digest: str | None = None, repository: str | None = None) -> list[str]:
        return await self.cache.evict(digest=digest, repository=repository)

    async def evict_to_quota(self) -> list[tuple[str, str]]:
        return await self.cache.evict_now()

    def pin(self, digest: str) -> None:
        self.cache.pin(digest)

    def unpin(self, digest: str) -> None:
        self.cache.unpin(digest)
