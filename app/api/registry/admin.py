"""Admin routes of the cache, mounted by the lead into the admin app (which applies auth)::

    GET    /v1/cache/stats                 sizes, quota, pins, live downloads
    GET    /v1/cache/upstreams             per-registry endpoint health and scores
    GET    /v1/cache/prepull               prepull jobs            POST {"reference", "platform"?} -> job
    GET    /v1/cache/prepull/{job_id}      one job's progress
    POST   /v1/cache/evict                 {"digest"} | {"repository"} | {} (run quota/TTL eviction now)

Errors are VappErrors; the admin app's handler maps them.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from app.services.cache import CacheService


class PrepullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: str
    platform: str | None = None


class EvictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    digest: str | None = None
    repository: str | None = None


def create_admin_router(service: CacheService) -> APIRouter:
    router = APIRouter(prefix="/v1/cache", tags=["cache"])

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return service.stats()

    @router.get("/upstreams")
    async def upstreams() -> dict[str, Any]:
        return service.health()

    @router.get("/prepull")
    async def prepull_jobs() -> list[dict[str, Any]]:
        return service.prepull_jobs()

    @router.post("/prepull", status_code=202)
    async def prepull(req: PrepullRequest) -> dict[str, Any]:
        return service.prepull(req.reference, req.platform)

    @router.get("/prepull/{job_id}")
    async def prepull_job(job_id: str) -> dict[str, Any]:
        return service.prepull_job(job_id)

    @router.post("/evict")
    async def evict(req: EvictRequest) -> dict[str, Any]:
        if req.digest or req.repository:
            return {"evicted": await service.evict(digest=req.digest, repository=req.repository)}
        plan = await service.evict_to_quota()
        return {"evicted": [d for d, _ in plan], "reasons": {d: r for d, r in plan}}

    return router
