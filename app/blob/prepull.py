"""Prepull jobs: images pulled into the cache in the background for the node's platform.

Job states (persisted in ``cache_prepull``; a job found ``queued``/``running`` at start
is queued again, since its blobs already on disk are skipped quickly)::

    queued ──worker──> running ──all blobs verified──> done
                          └──────error────────────────> failed

Concurrency: at most ``prepull_concurrency`` blob downloads across all jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from app.blob import metrics
from app.blob.cache import BlobCache
from app.errors import Category, InvalidArgument, NotFound, VappError
from app.oci.manifest import Descriptor, ImageManifest, Index, Platform, parse_manifest, select_platform
from app.oci.reference import Reference
from app.state.models.blob import CachePrepull

log = logging.getLogger(__name__)
PROGRESS_PERSIST_SECONDS = 1.0


class Prepuller:
    def __init__(self, cache: BlobCache, platform: Platform, concurrency: int = 2) -> None:
        self.cache = cache
        self.platform = platform
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._jobs: dict[str, CachePrepull] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, configured: list[str]) -> None:
        for job in await asyncio.to_thread(self.cache.meta.jobs):
            self._jobs[job.id] = job
            if job.state in ("queued", "running"):
                self._launch(job)
        known = {j.reference for j in self._jobs.values() if j.state in ("queued", "running")}
        for ref in configured:
            if ref not in known:
                self.submit(ref)

    def submit(self, reference: str, platform: str | None = None) -> dict[str, Any]:
        ref = Reference.parse(reference)  # refuse bad input before queuing anything
        plat = Platform.parse(platform) if platform else self.platform
        now = time.time()
        job = CachePrepull(id=uuid.uuid4().hex[:16], reference=ref.canonical, platform=str(plat), state="queued",
                           created_at=now, updated_at=now)  # fmt: skip
        self._jobs[job.id] = job
        self._launch(job)
        return self.describe(job)

    def _launch(self, job: CachePrepull) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"prepull-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._update_gauges()

    def get(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no prepull job {job_id!r}", category=Category.IMAGE)
        return self.describe(job)

    def jobs(self) -> list[dict[str, Any]]:
        return [self.describe(j) for j in sorted(self._jobs.values(), key=lambda j: j.created_at)]

    @staticmethod
    def describe(job: CachePrepull) -> dict[str, Any]:
        return job.model_dump()

    def _update_gauges(self) -> None:
        for state in ("queued", "running", "done", "failed"):
            metrics.PREPULL_JOBS.labels(state=state).set(sum(1 for j in self._jobs.values() if j.state == state))

    async def _persist(self, job: CachePrepull) -> None:
        job.updated_at = time.time()
        await self.cache._db(self.cache.meta.put_job, job.model_copy())
        self._update_gauges()

    async def _run(self, job: CachePrepull) -> None:
        try:
            await self._persist(job)
            job.state = "running"
            await self._persist(job)
            blobs = await self._resolve(job)
            job.blobs_total = len(blobs)
            job.bytes_total = sum(d.size for d in blobs)
            await self._persist(job)
            progress: dict[str, int] = {}
            await asyncio.gather(*(self._pull_blob(job, d, progress) for d in blobs))
            job.state = "done"
        except VappError as exc:
            job.state, job.error = "failed", exc.message
            log.warning("prepull %s failed: %s", job.reference, exc.message)
        except Exception as exc:
            job.state, job.error = "failed", repr(exc)
            log.exception("prepull %s failed", job.reference)
        await self._persist(job)

    async def _resolve(self, job: CachePrepull) -> list[Descriptor]:
        ref = Reference.parse(job.reference)
        want = Platform.parse(job.platform)
        m = await self.cache.get_manifest(ref.registry, ref.repository, ref.object, [])
        parsed = parse_manifest(m.body, m.media_type)
        if isinstance(parsed, Index):
            desc = select_platform(parsed, want.os, want.architecture, want.variant)
            m = await self.cache.get_manifest(ref.registry, ref.repository, desc.digest, [])
            parsed = parse_manifest(m.body, m.media_type)
        if not isinstance(parsed, ImageManifest):
            raise InvalidArgument(f"{job.reference} is not an image", category=Category.IMAGE)
        return [parsed.config, *parsed.layers]

    async def _pull_blob(self, job: CachePrepull, desc: Descriptor, progress: dict[str, int]) -> None:
        """Pull one blob; ``progress`` (digest -> bytes) is shared by the job's concurrent pulls."""
        ref = Reference.parse(job.reference)

        def update(done: int, _total: int | None) -> None:
            metrics.PREPULL_BYTES.inc(max(0, done - progress.get(desc.digest, 0)))
            progress[desc.digest] = done
            job.bytes_done = sum(progress.values())

        async with self._slots:
            handle = await self.cache.open_blob(ref.registry, ref.repository, desc.digest)
            try:
                if handle.flight is not None:
                    await handle.flight.wait_done(update)
            finally:
                handle.release()
        progress[desc.digest] = desc.size
        job.bytes_done = sum(progress.values())
        job.blobs_done += 1
        await self._persist(job)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except BaseException:
                continue
