"""``/v1/intents``, ``/v1/bootstrap/*`` and ``/v1/certs``: the bootstrap service on the admin REST API.

==========================================  ===========================================
``GET    /v1/intents``                      every intent (with source and generation)
``PUT    /v1/intents/{name}``  (IntentDoc)  create or replace; ``changed`` says if it did
``POST   /v1/intents``         (IntentDoc)  same, name in the body
``DELETE /v1/intents/{name}``               delete (its components are pruned)
``GET    /v1/bootstrap/plan``               what a pass would do, nothing changed
``POST   /v1/bootstrap/apply?timeout=S``    converge now; returns the status
``GET    /v1/bootstrap/status``             components, phases, errors, recent events
``GET    /v1/bootstrap/events``             NDJSON stream of progress events
``GET    /v1/certs``                        certificates with expiry
``POST   /v1/certs/renew`` {names?, force?} renew (default: those inside the window)
==========================================  ===========================================

Mounted under /v1 behind the admin token by the composition root.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import StreamingResponse

from app.errors import InvalidArgument, Unavailable

router = APIRouter(tags=["bootstrap"])


def _svc(request: Request) -> Any:
    svc = getattr(request.app.state.node, "bootstrap", None)
    if svc is None:
        raise Unavailable("the bootstrap service is not running on this node")
    return svc


@router.get("/intents")
async def list_intents(request: Request) -> list[dict[str, Any]]:
    return await asyncio.to_thread(_svc(request).list_intents)


@router.post("/intents")
async def post_intent(request: Request, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    return _svc(request).put_intent(body)  # a short DB write; wakes the loop (not thread-safe)


@router.put("/intents/{name}")
async def put_intent(request: Request, name: str, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    if body.setdefault("name", name) != name:
        raise InvalidArgument(f"name in the body ({body['name']!r}) differs from the path ({name!r})")
    return _svc(request).put_intent(body)


@router.delete("/intents/{name}")
async def delete_intent(request: Request, name: str) -> dict[str, Any]:
    _svc(request).delete_intent(name)
    return {"deleted": name}


@router.get("/bootstrap/plan")
async def plan(request: Request) -> dict[str, Any]:
    result: dict[str, Any] = await _svc(request).plan()
    return result


@router.post("/bootstrap/apply")
async def apply(request: Request, timeout: float = Query(300.0, gt=0, le=3600)) -> dict[str, Any]:
    result: dict[str, Any] = await _svc(request).apply(timeout=timeout)
    return result


@router.get("/bootstrap/status")
async def status(request: Request) -> dict[str, Any]:
    result: dict[str, Any] = await _svc(request).status()
    return result


@router.get("/bootstrap/events")
async def events(request: Request) -> StreamingResponse:
    svc = _svc(request)
    queue = svc.events.subscribe()

    async def lines() -> AsyncIterator[bytes]:
        try:
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    yield b"\n"  # keep-alive
                    continue
                yield json.dumps(event).encode() + b"\n"
        finally:
            svc.events.unsubscribe(queue)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get("/certs")
async def certs(request: Request) -> list[dict[str, Any]]:
    return await asyncio.to_thread(_svc(request).certs_list)


@router.post("/certs/renew")
async def renew(request: Request, body: dict[str, Any] = Body(default_factory=dict)) -> dict[str, Any]:
    names = body.get("names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument("names: must be a list of certificate names")
    renewed = _svc(request).certs_renew(names, force=bool(body.get("force")))
    return {"renewed": renewed}
