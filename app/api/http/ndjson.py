"""Streaming a long job (pull, app start) to an HTTP client as NDJSON lines.

    {"msg":"Progress", ...}*   then exactly one   {"msg":"Ok", ...} | {"msg":"Error", ...}

The job runs as its own task: a client that disconnects stops receiving lines
but never cancels a half-done pull or start (other clients may be waiting on it,
and a cancelled start would leave the node half-changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from app.errors import Internal, VappError

Emit = Callable[[dict[str, Any]], None]


def ndjson_line(obj: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in obj.items() if v is not None}, separators=(",", ":")).encode() + b"\n"


def error_line(exc: VappError) -> bytes:
    return ndjson_line({"msg": "Error", **exc.to_dict(), "is_retryable": exc.retryable})


async def stream_job(job: Callable[[Emit], Awaitable[dict[str, Any]]]) -> AsyncIterator[bytes]:
    """Run ``job(emit)``; yield each emitted progress dict, then ``{"msg": "Ok", **result}`` or an Error."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def emit(progress: dict[str, Any]) -> None:
        queue.put_nowait(ndjson_line({"msg": "Progress", **progress}))

    async def run() -> None:
        try:
            queue.put_nowait(ndjson_line({"msg": "Ok", **await job(emit)}))
        except VappError as exc:
            queue.put_nowait(error_line(exc))
        except Exception as exc:
            queue.put_nowait(error_line(Internal(f"internal error: {type(exc).__name__}")))
        finally:
            queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(run())
    try:
        while (item := await queue.get()) is not None:
            yield item
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(task)
