"""The admin FastAPI app: health, readiness, info, metrics, and each engine's ``/v1`` routes.

Routers from the engines are handed in by the composition root (``app/wiring.py``);
every ``/v1`` route sits behind the bearer-token dependency. Handlers reach the
service layer through ``request.app.state.node`` (see :class:`app.wiring.Node`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.api.http.auth import require_token
from app.errors import HTTP_STATUS, VappError
from app.metrics import HTTP_LATENCY, HTTP_REQUESTS


def error_body(exc: VappError) -> dict[str, Any]:
    return {"error": exc.to_dict()}


class MetricsMiddleware:
    """Counts and times every request by route template (never by raw path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_LATENCY.labels(method, template).observe(time.perf_counter() - start)


def create_admin_app(
    node: Any,
    *,
    admin_token: str,
    routers: Iterable[APIRouter] = (),
    info: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    is_ready: Callable[[], bool] = lambda: True,
) -> FastAPI:
    app = FastAPI(title="vapp-core admin API", version=__version__, docs_url="/docs")
    app.state.node = node
    app.state.admin_token = admin_token
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(VappError)
    async def _vapp_error(_request: Request, exc: VappError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=HTTP_STATUS[exc.kind])

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"key": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg", "")}
            for err in exc.errors()
        ]
        body = {"error": {"kind": "invalid_argument", "category": "Config",
                          "message": "invalid request", "details": {"errors": problems}}}
        return JSONResponse(body, status_code=400)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        ready = is_ready()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["metrics"], include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @v1.get("/info", tags=["node"])
    async def node_info() -> dict[str, Any]:
        return await info() if info else {"version": __version__}

    app.include_router(v1)
    for router in routers:
        app.include_router(router, prefix="/v1", dependencies=[Depends(require_token)])
    return app
