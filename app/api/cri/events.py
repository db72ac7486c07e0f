"""Fan-out of CRI container events (``GetContainerEvents``) to every subscribed stream.

Sources: pod sandbox transitions (published by the servicer, with the sandbox id as
``container_id`` as containerd does) and container transitions (a task reading the
container service's event stream, started on the first subscription). Each
subscriber has a bounded queue; a subscriber that falls 1000 events behind is
dropped (its stream ends) rather than slowing the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from cri_api.v1 import api_pb2 as pb

from app.api.cri import convert
from app.services.pod_types import Pod

QUEUE = 1000


class EventHub:
    def __init__(self) -> None:
        self._subs: set[asyncio.Queue[pb.ContainerEventResponse | None]] = set()
        self._feeder: asyncio.Task[None] | None = None
        self.feed_factory: Callable[[EventHub], Coroutine[Any, Any, None]] | None = None

    def publish(self, event: pb.ContainerEventResponse) -> None:
        for q in list(self._subs):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                self._subs.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)

    def sandbox(self, pod: Pod, kind: Any) -> None:
        if not self._subs:
            return
        self.publish(pb.ContainerEventResponse(
            container_id=pod.id, container_event_type=kind, created_at=time.time_ns(),
            pod_sandbox_status=convert.sandbox_status(pod)))

    async def subscribe(self) -> AsyncIterator[pb.ContainerEventResponse]:
        q: asyncio.Queue[pb.ContainerEventResponse | None] = asyncio.Queue(QUEUE)
        self._subs.add(q)
        if self.feed_factory is not None and (self._feeder is None or self._feeder.done()):
            self._feeder = asyncio.create_task(self.feed_factory(self))
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._subs.discard(q)

    async def close(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._feeder
