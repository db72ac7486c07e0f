"""Pull: reference → manifest → platform → config → layer snapshots.

::

    parse ref ─► resolve(tag|digest) ─► index? ─► select_platform (never another arch)
                                               ─► fetch_manifest(platform digest)
            ─► ensure_blob(config) ─► parse config (diff_ids, os/arch checked)
            ─► per layer, at most ``concurrency`` at once, in any order:
                   snapshot for chain ID committed? ─► "cached" (nothing fetched)
                   ensure_blob(layer)   progress "downloading" done/total
                   unpack into a tmp dir ─► diff ID checked ─► commit   "extracting" → "done"
            ─► PullResult (image id = config digest, as containerd/CRI use)

Every layer snapshot is independent of its parent (overlay format), so layers
download and unpack in parallel. Concurrent pulls share work per layer: the
first starts a job, later ones attach as listeners and await the same task.
Transient failures (:class:`Unavailable`) are retried with capped exponential
backoff until ``retry_deadline``; an interrupted pull leaves verified blobs and
committed snapshots behind, so the next pull only fetches what is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from app.content.store import ContentStore
from app.errors import Category, InvalidArgument, NotFound, Unavailable, VappError
from app.oci.credentials import RegistryCredentials
from app.oci.credentials import using as using_credentials
from app.oci.manifest import (
    Descriptor,
    ImageManifest,
    Index,
    Platform,
    parse_manifest,
    platform_matches,
    select_platform,
)
from app.oci.reference import Reference
from app.runtime.images.fetch import Fetcher
from app.runtime.images.unpack import UnpackResult
from app.runtime.snapshots import chain_ids
from app.runtime.snapshots.layers import LayerSnapshots

log = logging.getLogger(__name__)
T = TypeVar("T")
Status = Literal["resolving", "waiting", "downloading", "extracting", "done", "cached"]
Unpacker = Callable[[Path, str, Path], UnpackResult]  # (blob, media type, dest) — blocking


@dataclass(frozen=True)
class PullEvent:
    """Progress of one blob of one pull (vappc stream, CLI bar, NDJSON over REST)."""

    ref: str
    digest: str
    status: Status
    done: int = 0
    total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest, "status": self.status, "done": self.done, "total": self.total}


@dataclass
class PullResult:
    ref: Reference
    image_id: str  # config digest
    manifest_digest: str  # of the platform manifest
    index_digest: str | None
    config: dict[str, Any]
    layers: list[Descriptor]
    diff_ids: list[str]
    chain_ids: list[str]
    size: int
    downloaded: list[str] = field(default_factory=list)  # layer digests fetched by this pull


@dataclass
class _Job:
    """One layer's download+unpack, shared by every pull that needs it meanwhile."""

    listeners: list[Callable[[PullEvent], None]] = field(default_factory=list)
    last: dict[str, PullEvent] = field(default_factory=dict)  # replayed to late listeners
    task: asyncio.Future[bool] | None = None


class Puller:
    def __init__(
        self,
        fetcher: Fetcher,
        store: ContentStore,
        layers: LayerSnapshots,
        unpacker: Unpacker,
        *,
        platform: Platform | None = None,
        concurrency: int = 3,
        retry_deadline: float = 90.0,
        max_backoff: float = 8.0,
    ) -> None:
        self.fetcher = fetcher
        self.store = store
        self.layers = layers
        self.unpacker = unpacker
        self.platform = platform or Platform.host()
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self.retry_deadline = retry_deadline
        self.max_backoff = max_backoff
        self._jobs: dict[str, _Job] = {}
        self._blobs: dict[str, asyncio.Future[Path | None]] = {}

    # --- retries -------------------------------------------------------------------------
    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.retry_deadline
        delay = 0.25
        while True:
            try:
                return await fn()
            except Unavailable as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                wait = min(delay, self.max_backoff, left)
                log.info("%s: %s; retrying in %.2fs", what, exc.message, wait)
                await asyncio.sleep(wait)
                delay *= 2

    # --- manifest and config ---------------------------------------------------------------
    async def resolve(self, ref: Reference) -> tuple[ImageManifest, str, str | None]:
        got = await self._retry(f"manifest {ref}", lambda: self.fetcher.resolve(ref))
        if ref.digest and got.digest != ref.digest:
            raise InvalidArgument("manifest does not match the pinned digest", category=Category.IMAGE)
        parsed = parse_manifest(got.body, got.media_type)
        digest, index_digest = got.digest, None
        if isinstance(parsed, Index):
            index_digest = digest
            p = self.platform
            desc = select_platform(parsed, p.os, p.architecture, p.variant)
            child = await self._retry(f"manifest {desc.digest}", lambda: self.fetcher.fetch_manifest(ref, desc.digest))
            if child.digest != desc.digest:
                raise InvalidArgument("platform manifest does not match its digest", category=Category.IMAGE)
            parsed = parse_manifest(child.body, child.media_type)
            digest = child.digest
            if isinstance(parsed, Index):
                raise InvalidArgument("nested image index is not supported", category=Category.IMAGE)
        return parsed, digest, index_digest

    async def _config(self, ref: Reference, manifest: ImageManifest) -> dict[str, Any]:
        cfg = manifest.config
        task = self._blobs.get(cfg.digest)
        if task is None:  # one download per blob, whoever else wants it waits for it
            task = asyncio.ensure_future(
                self._retry(f"config {cfg.digest}", lambda: self.fetcher.ensure_blob(ref, cfg.digest, cfg.size))
            )
            self._blobs[cfg.digest] = task
            task.add_done_callback(lambda _t: self._blobs.pop(cfg.digest, None))
        await asyncio.shield(task)
        try:
            doc = json.loads(self.store.read(cfg.digest))
        except ValueError as exc:
            raise InvalidArgument("image config is not JSON", category=Category.IMAGE) from exc
        diff_ids = (doc.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
            raise InvalidArgument("image config diff_ids do not match the manifest's layers", category=Category.IMAGE)
        have = Platform(
            os=str(doc.get("os", "")), architecture=str(doc.get("architecture", "")), variant=doc.get("variant")
        )
        if doc.get("architecture") and not platform_matches(have, self.platform):
            raise NotFound(
                f"image is for {have}, not for this node ({self.platform})",
                category=Category.IMAGE,
                details={"platform": str(self.platform), "offered": [str(have)]},
            )
        return doc

    # --- pull ------------------------------------------------------------------------------
    async def pull(self, text: str, on_event: Callable[[PullEvent], None] | None = None, *,
                   credentials: RegistryCredentials | None = None) -> PullResult:
        """``credentials``: this pull's own (CRI AuthConfig), used by the fetcher for this pull only."""
        with using_credentials(credentials):  # the layer tasks started below inherit them
            return await self._pull(text, on_event)

    async def _pull(self, text: str, on_event: Callable[[PullEvent], None] | None) -> PullResult:
        ref = Reference.parse(text)
        emit = on_event or (lambda _e: None)
        emit(PullEvent(str(ref), "", "resolving"))
        try:
            manifest, digest, index_digest = await self.resolve(ref)
            config = await self._config(ref, manifest)
        except VappError as exc:
            exc.with_phase("pull")
            raise
        diff_ids = [str(d) for d in config["rootfs"]["diff_ids"]]
        chains = chain_ids(diff_ids)
        for desc in manifest.layers:
            emit(PullEvent(str(ref), desc.digest, "waiting", 0, desc.size))
        results = await asyncio.gather(
            *(
                self._layer(ref, desc, chains[i], chains[i - 1] if i else None, diff_ids[i], emit)
                for i, desc in enumerate(manifest.layers)
            )
        )
        return PullResult(
            ref=ref,
            image_id=manifest.config.digest,
            manifest_digest=digest,
            index_digest=index_digest,
            config=config,
            layers=list(manifest.layers),
            diff_ids=diff_ids,
            chain_ids=chains,
            size=sum(d.size for d in manifest.layers) + manifest.config.size,
            downloaded=[d.digest for d, fetched in zip(manifest.layers, results, strict=True) if fetched],
        )

    async def _layer(
        self,
        ref: Reference,
        desc: Descriptor,
        chain: str,
        parent: str | None,
        diff_id: str,
        emit: Callable[[PullEvent], None],
    ) -> bool:
        if self.layers.has(chain):
            emit(PullEvent(str(ref), desc.digest, "cached", desc.size, desc.size))
            return False
        job = self._jobs.get(chain)
        owner = job is None  # only the pull that started the job counts the download as its own
        if job is None:
            job = _Job()
            task = asyncio.ensure_future(self._run_layer(ref, desc, chain, parent, diff_id, job))
            job.task = task
            self._jobs[chain] = job
            task.add_done_callback(lambda _t: self._jobs.pop(chain, None))
        else:
            for ev in job.last.values():  # catch up a late listener
                emit(PullEvent(str(ref), ev.digest, ev.status, ev.done, ev.total))

        def relay(ev: PullEvent) -> None:
            emit(PullEvent(str(ref), ev.digest, ev.status, ev.done, ev.total))

        job.listeners.append(relay)
        assert job.task is not None
        try:
            fetched = await asyncio.shield(job.task)
            return fetched and owner
        finally:
            job.listeners.remove(relay)

    async def _run_layer(
        self, ref: Reference, desc: Descriptor, chain: str, parent: str | None, diff_id: str, job: _Job
    ) -> bool:
        def send(status: Status, done: int, total: int) -> None:
            prev = job.last.get(desc.digest)
            if prev is not None and prev.status == status and done < prev.done:
                return  # a retry restarts the transfer: keep the bar monotonic
            ev = PullEvent(str(ref), desc.digest, status, done, total)
            job.last[desc.digest] = ev
            for listener in list(job.listeners):
                listener(ev)

        async with self._sem:
            fetched = not self.store.exists(desc.digest)
            await self._retry(
                f"layer {desc.digest}",
                lambda: self.fetcher.ensure_blob(
                    ref, desc.digest, desc.size, lambda d, t: send("downloading", d, t or desc.size)
                ),
            )
            send("extracting", desc.size, desc.size)
            blob = self.store.path(desc.digest)
            await asyncio.to_thread(
                self.layers.ensure, chain, parent, diff_id, lambda dest: self.unpacker(blob, desc.media_type, dest)
            )
            send("done", desc.size, desc.size)
            return fetched
