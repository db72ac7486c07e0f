"""An in-memory index of CRI containers, so ``ListContainers`` answers without touching the database.

kubelet relists every second; the container service's ``list()`` reads every row and
checks every process. The index holds one ready-made ``pb.Container`` per CRI
container and is kept current by:

* the CRI verbs themselves (``refresh(id)`` after create/start/stop, ``drop(id)`` after remove);
* a task reading the container service's event stream (exits happen on their own);
* a full resync from ``list()`` on first use and then every ``RESYNC`` seconds in the
  background (it repairs anything an overflowing event queue dropped, and picks up
  the state after a daemon restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from cri_api.v1 import api_pb2 as pb

from app.api.cri import container_convert as cc
from app.errors import NotFound

log = logging.getLogger(__name__)
RESYNC = 30.0


def matches(c: pb.Container, f: pb.ContainerFilter) -> bool:
    """``ContainerFilter`` on an indexed message (pure)."""
    if f.id and not c.id.startswith(f.id):
        return False
    if f.pod_sandbox_id and not c.pod_sandbox_id.startswith(f.pod_sandbox_id):
        return False
    if f.HasField("state") and c.state != f.state.state:
        return False
    return all(c.labels.get(k) == v for k, v in f.label_selector.items())


class ContainerIndex:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.items: dict[str, pb.Container] = {}
        self._synced = 0.0
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._all: pb.ListContainersResponse | None = None  # the unfiltered answer, until a change

    async def response(self, f: pb.ContainerFilter) -> pb.ListContainersResponse:
        """The ``ListContainers`` answer; the unfiltered one is built once per change (kubelet's relist)."""
        await self._maintain()
        if f.ByteSize() != 0:
            return pb.ListContainersResponse(containers=self._select(f))
        if self._all is None:
            self._all = pb.ListContainersResponse(containers=list(self.items.values()))
        return self._all

    async def matching(self, f: pb.ContainerFilter) -> list[pb.Container]:
        await self._maintain()
        return self._select(f)

    async def _maintain(self) -> None:
        """First use: load; later: resync in the background now and then; keep following events."""
        if not self._synced:
            await self.resync()
        elif time.monotonic() - self._synced > RESYNC and (self._resync_task is None or self._resync_task.done()):
            self._resync_task = asyncio.create_task(self.resync())
        self._ensure_watch()

    def _select(self, f: pb.ContainerFilter) -> list[pb.Container]:
        if f.id and f.id in self.items:
            c = self.items[f.id]
            return [c] if matches(c, f) else []
        return [c for c in self.items.values() if matches(c, f)]

    async def resync(self) -> None:
        async with self._lock:
            infos = await self.node.containers.list()
            self.items = {i.id: cc.container(i) for i in infos if cc.is_cri(i)}
            self._synced = time.monotonic()
            self._all = None

    async def refresh(self, container_id: str) -> None:
        if self.node.containers is None:
            return
        try:
            info = await self.node.containers.inspect(container_id)
        except NotFound:
            self.drop(container_id)
            return
        if cc.is_cri(info):
            fresh = cc.container(info)
            if self.items.get(info.id) != fresh:
                self.items[info.id] = fresh
                self._all = None

    def drop(self, container_id: str) -> None:
        if self.items.pop(container_id, None) is not None:
            self._all = None

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        try:
            async for ev in self.node.containers.events():
                if ev.type == "deleted":
                    self.drop(ev.container_id)
                elif ev.container_id in self.items or ev.type == "created":
                    await self.refresh(ev.container_id)
        except Exception:  # a broken stream must not kill the door: the resync repairs
            log.exception("container index: event stream ended")
            self._synced = 0.0

    async def close(self) -> None:
        for task in (self._watch, self._resync_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
