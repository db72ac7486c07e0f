"""``/v1/images``: the image store on the admin REST API, through ``ImageService``.

==============================================  ============================================
``GET    /v1/images``                           list of image records
``GET    /v1/images/{name}``                    inspect (ID, ID prefix, tag, repo digest;
                                                names with ``/`` are fine: ``{name:path}``)
``POST   /v1/images/pull`` ``{"reference"}``    pull; the record. With ``?stream=true``:
                                                NDJSON, one ``{"msg":"Progress", ...}`` line
                                                per layer event (bytes done/total), then
                                                ``{"msg":"Ok","image":{...}}`` or
                                                ``{"msg":"Error", ...}``
``POST   /v1/images/tag`` ``{"source","target"}``  add a name
``DELETE /v1/images/{name}?force=``             remove a tag, or the image when it is the
                                                last name / an ID; 409 while a container
                                                uses it
``POST   /v1/images/gc``                        collect unreferenced snapshots (and blobs)
==============================================  ============================================

The composition root mounts ``router`` under ``/v1`` behind the admin token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from app.api.http.ndjson import Emit, stream_job
from app.errors import Unavailable

router = APIRouter(prefix="/images", tags=["images"])


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reference: str


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    target: str


def _service(request: Request) -> Any:
    images = getattr(request.app.state.node, "images", None)
    if images is None:
        raise Unavailable("the image service is not running on this node")
    return images


@router.get("")
async def list_images(request: Request) -> list[dict[str, Any]]:
    return [r.to_dict() for r in _service(request).list_images()]


@router.post("/pull", response_model=None)
async def pull(request: Request, body: PullRequest, stream: bool = Query(False)) -> Response | dict[str, Any]:
    service = _service(request)
    if not stream:
        rec = await service.pull(body.reference)
        return dict(rec.to_dict())
    return StreamingResponse(_stream_pull(service, body.reference), media_type="application/x-ndjson")


def _stream_pull(service: Any, reference: str) -> AsyncIterator[bytes]:
    """Progress lines as they happen, then the terminal line; the pull outlives the client."""

    async def job(emit: Emit) -> dict[str, Any]:
        rec = await service.pull(reference, lambda ev: emit(ev.to_dict()))
        return {"image": rec.to_dict()}

    return stream_job(job)


@router.post("/tag")
async def tag(request: Request, body: TagRequest) -> dict[str, Any]:
    return dict(_service(request).tag(body.source, body.target).to_dict())


@router.post("/gc")
async def gc(request: Request) -> dict[str, Any]:
    report = _service(request).gc()
    return {"snapshots": report.snapshots, "blobs": report.blobs}


@router.get("/{name:path}")
async def inspect(request: Request, name: str) -> dict[str, Any]:
    rec = _service(request).get(name)
    out = dict(rec.to_dict())
    out["config"] = rec.config
    return out


@router.delete("/{name:path}")
async def remove(request: Request, name: str, force: bool = Query(False)) -> dict[str, Any]:
    return {"removed": _service(request).remove(name, force=force)}
