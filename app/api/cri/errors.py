"""One wrapper for every CRI RPC: error mapping, logging and metrics.

Servicer methods raise the classes in :mod:`app.errors`; :func:`cri_rpc` turns
them into gRPC status codes through :data:`GRPC_CODE` (the only table) and
records ``vapp_grpc_calls_total{method,code}`` and
``vapp_grpc_call_duration_seconds{method}`` (defined in :mod:`app.metrics`). Anything else is a bug: it is logged with
its traceback and answered ``INTERNAL`` without leaking the exception text.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc

from app.errors import Kind, VappError
from app.metrics import GRPC_CALLS, GRPC_LATENCY

log = logging.getLogger("app.api.cri")

GRPC_CODE: dict[Kind, grpc.StatusCode] = {
    Kind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Kind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Kind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}


class _Metrics(Protocol):
    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None: ...


class CriMetrics:
    """Records into the front-door metrics of :mod:`app.metrics` (one registry)."""

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        GRPC_CALLS.labels(method, code.name).inc()
        GRPC_LATENCY.labels(method).observe(seconds)


_metrics: _Metrics = CriMetrics()


def metrics() -> _Metrics:
    return _metrics


def _status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, VappError):
        code = GRPC_CODE.get(exc.kind, grpc.StatusCode.INTERNAL)
        if code is grpc.StatusCode.INTERNAL:
            log.error("cri %s: %s", method, exc.message)
        else:
            log.debug("cri %s: %s: %s", method, exc.kind.value, exc.message)
        return code, exc.message
    log.exception("cri %s: unexpected error", method)
    return grpc.StatusCode.INTERNAL, f"internal error in {method} ({type(exc).__name__})"


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Unary = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def cri_rpc(fn: Unary[Req, Resp]) -> Unary[Req, Resp]:
    """Wrap a unary servicer method: map ``VappError`` kinds to codes, time and count it."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        start = time.perf_counter()
        try:
            resp = await fn(self, request, context)
        except grpc.aio.AbortError:
            metrics().observe(method, context.code() or grpc.StatusCode.UNKNOWN, time.perf_counter() - start)
            raise
        except Exception as exc:
            code, message = _status_for(exc, method)
            metrics().observe(method, code, time.perf_counter() - start)
            await context.abort(code, message)
        metrics().observe(method, grpc.StatusCode.OK, time.perf_counter() - start)
        return resp

    return wrapper


StreamFn = Callable[[Any, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def cri_stream(fn: StreamFn[Req, Resp]) -> StreamFn[Req, Resp]:
    """The same mapping for server-streaming methods (``GetContainerEvents``)."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            code, message = _status_for(exc, method)
            await context.abort(code, message)
        finally:
            metrics().observe(method, code, time.perf_counter() - start)

    return wrapper
