"""``/v1/apps``: the vappc app operations on the admin REST API, through the same ``AppService``.

==========================================  ===========================================
``GET    /v1/apps``                         list: ``[{app_id, name, state}]``
``GET    /v1/apps/{app_id}``                one app's state
``POST   /v1/apps``  (AppSpec)              start; 201 ``{app_id, name}``; with
                                            ``?stream=true`` 200 and an NDJSON stream of
                                            ``Progress`` lines, then ``Ok`` or ``Error``
                                            (the outcome is in the last line)
``POST   /v1/apps/{app_id}/stop``           stop (graceful, ``?grace=SECONDS``)
``DELETE /v1/apps/{app_id}``                same as stop
``POST   /v1/apps/groups`` (ContainerGroup) start a group; partial result with ``error``
==========================================  ===========================================

``state`` uses the vappc encoding (``"Running"`` or ``{"Failed": {"reason": ...}}``).
Errors are the admin API's usual ``{"error": {...}}`` with the status of their kind.
The router is mounted behind the admin token by the composition root.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.api.http.ndjson import Emit, stream_job
from app.errors import Unavailable
from app.services.app_types import AppSpec, AppStatus, ContainerGroup, Progress

# Mounted under /v1 (behind the admin token) by create_admin_app.
router = APIRouter(prefix="/apps", tags=["apps"])


def _service(request: Request) -> Any:
    apps = getattr(request.app.state.node, "apps", None)
    if apps is None:
        raise Unavailable("the app service is not running on this node")
    return apps


def _state(status: AppStatus) -> Any:
    return {"Failed": {"reason": status.reason}} if status.phase == "Failed" else status.phase


@router.get("")
async def list_apps(request: Request) -> list[dict[str, Any]]:
    apps = await _service(request).list_apps()
    return [{"app_id": a.app_id, "name": a.name, "state": _state(a.status)} for a in apps]


@router.get("/{app_id}")
async def get_app(request: Request, app_id: str) -> dict[str, Any]:
    status = await _service(request).app_state(app_id)
    out = {"app_id": app_id, "state": _state(status)}
    if status.exit_code is not None:
        out["exit_code"] = status.exit_code
    return out


@router.post("", status_code=201, response_model=None)
async def start_app(request: Request, spec: AppSpec, stream: bool = Query(False)) -> Response | dict[str, str]:
    service = _service(request)
    if not stream:
        handle = await service.start_app(spec, lambda _ev: None)
        return {"app_id": handle.app_id, "name": handle.name}
    return StreamingResponse(_stream_start(service, spec), media_type="application/x-ndjson")


def _stream_start(service: Any, spec: AppSpec) -> AsyncIterator[bytes]:
    """Progress lines as they happen, then the terminal line; the start outlives the client."""

    async def job(emit: Emit) -> dict[str, Any]:
        def progress(ev: Progress) -> None:
            emit({"percentage": ev.percentage, "message": ev.message, "phase": ev.phase,
                  "instance_name": ev.instance_name, "task_name": ev.task_name})

        handle = await service.start_app(spec, progress)
        return {"type": "AppHandle", "data": {"app_id": handle.app_id, "name": handle.name}}

    return stream_job(job)


@router.post("/groups", response_model=None)
async def start_group(request: Request, group: ContainerGroup) -> JSONResponse:
    result = await _service(request).start_group(group, lambda _ev: None)
    body: dict[str, Any] = {"group_name": result.group_name,
                            "handles": [{"app_id": h.app_id, "name": h.name} for h in result.handles]}
    if result.error is not None:
        body["error"] = result.error.to_dict()
    return JSONResponse(body, status_code=200 if result.error is None else 207)


@router.post("/{app_id}/stop")
async def stop_app(request: Request, app_id: str, grace: float | None = Query(None, ge=0)) -> dict[str, Any]:
    service = _service(request)
    await service.stop_app(app_id, grace)
    return {"app_id": app_id, "state": _state(await service.app_state(app_id))}


@router.delete("/{app_id}", status_code=204, response_model=None)
async def delete_app(request: Request, app_id: str, grace: float | None = Query(None, ge=0)) -> Response:
    await _service(request).stop_app(app_id, grace)
    return Response(status_code=204)
