"""BlobCache: the pull-through cache over the content store, upstreams and metadata.

Owns the in-memory indexes (blobs, tags), routing of /v2 names to upstreams, blob
serving (a content-store hit is served from its file; a miss joins the single flight
for the digest, :mod:`app.blob.flight`), access times, pins and eviction. Manifests
and tags live in :mod:`app.blob.manifests`, which works on these indexes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.blob import metrics
from app.blob.eviction import plan_eviction
from app.blob.flight import Flight, FlightReader, FlightTable
from app.blob.manifests import ManifestResult, Manifests
from app.blob.meta import BlobEntry, MetaStore, TagEntry
from app.blob.upstream import Upstream, UpstreamPool
from app.config import BlobSettings
from app.content import ContentInfo, ContentStore
from app.errors import (
    Category,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from app.oci.reference import (
    DOCKER_HUB,
    looks_like_registry,
    normalize_registry,
    validate_digest,
    validate_registry,
    validate_repository,
)
from app.state.db import Database

log = logging.getLogger(__name__)
ACCESS_FLUSH_SECONDS = 5.0
EVICTION_INTERVAL = 30.0


@dataclasses.dataclass
class BlobHandle:
    """An open blob: a verified file (``path``) or a live download (``flight``). Call ``release``."""

    digest: str
    size: int | None
    cache: str
    upstream: str
    path: Path | None = None
    flight: Flight | None = None
    _release: Callable[[], None] | None = None

    def reader(self, start: int = 0, end: int | None = None) -> FlightReader:
        assert self.flight is not None
        return self.flight.reader(start, end)

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


class BlobCache:
    def __init__(
        self,
        settings: BlobSettings,
        store: ContentStore,
        db: Database,
        *,
        in_use: Callable[[str], bool] | None = None,
        upstreams: UpstreamPool | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.meta = MetaStore(db)
        self.upstreams = upstreams or UpstreamPool(settings)
        self.flights = FlightTable(store, self._on_commit)
        self.in_use = in_use
        self.blobs: dict[str, BlobEntry] = {}
        self.tags: dict[tuple[str, str, str], TagEntry] = {}
        self._pins: collections.Counter[str] = collections.Counter()
        self._serving: collections.Counter[str] = collections.Counter()
        self._access: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._evict_wakeup = asyncio.Event()
        self._evict_lock = asyncio.Lock()
        self.manifests = Manifests(self)
        self._db_lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Clean ingests left by a crash, reconcile metadata with the files, start housekeeping."""
        removed = await asyncio.to_thread(self.store.cleanup_stale_ingests)
        if removed:
            log.info("content store: removed %d unfinished ingests", removed)
        await asyncio.to_thread(self._reconcile)
        self._update_size_metrics()
        # Build the configured upstreams' clients now: creating an httpx client loads the CA
        # bundle (~100+ ms), which would otherwise land on the first pull.
        configured = {normalize_registry(k) for k in self.settings.upstreams}
        for registry in configured | {normalize_registry(self.settings.default_registry)}:
            await asyncio.to_thread(self.upstreams.get, registry)
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="blob-access-flush"))
        self._tasks.append(asyncio.create_task(self._evict_loop(), name="blob-eviction"))

    def _reconcile(self) -> None:
        blobs, tags = self.meta.load()
        files = {i.digest: i for i in self.store.walk()}
        gone = [d for d in blobs if d not in files]
        if gone:
            log.warning("cache metadata: %d blobs missing on disk, dropping their rows", len(gone))
            self.meta.delete_blobs(gone)
            for d in gone:
                del blobs[d]
        now = time.time()
        for digest, info in files.items():
            if digest not in blobs:  # a verified file without a row (crash between rename and insert)
                e = BlobEntry(digest, info.size, None, "blob", "", info.created_at, now)
                blobs[digest] = e
                self.meta.put_blob(e)
            elif blobs[digest].size != info.size:
                blobs[digest].size = info.size
                self.meta.put_blob(blobs[digest])
        self.blobs = blobs
        self.tags = {k: t for k, t in tags.items() if t.digest in blobs}

    async def close(self) -> None:
        await self.manifests.drain()  # manifests already answered must reach the disk
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except BaseException:
                continue
        self._tasks.clear()
        await self.flights.aclose()
        await self._flush_access()
        await self.upstreams.aclose()

    # --- routing -----------------------------------------------------------------------
    def resolve_name(self, name: str, ns: str | None = None) -> tuple[str, str]:
        """Map a /v2 name (+ ``?ns=``) to (upstream registry, repository) with Docker Hub rules."""
        if not name or len(name) > 512:
            raise InvalidArgument("invalid repository name", category=Category.IMAGE, details={"name": name[:300]})
        if ns:
            registry = normalize_registry(validate_registry(ns))
            repo = name
            first, sep, rest = name.partition("/")
            if sep and looks_like_registry(first) and normalize_registry(first) == registry:
                repo = rest  # both forms at once: the prefix names the same registry
        else:
            first, sep, rest = name.partition("/")
            if sep and looks_like_registry(first):
                registry, repo = normalize_registry(validate_registry(first)), rest
            else:
                registry, repo = normalize_registry(self.settings.default_registry), name
        if registry == DOCKER_HUB and "/" not in repo:
            repo = "library/" + repo
        validate_repository(repo)
        return registry, repo

    def upstream(self, registry: str) -> Upstream:
        return self.upstreams.get(registry)

    # --- manifests ---------------------------------------------------------------------
    async def get_manifest(self, registry: str, repo: str, reference: str, accept: list[str]) -> ManifestResult:
        return await self.manifests.get(registry, repo, reference, accept)

    # --- blobs -------------------------------------------------------------------------
    async def open_blob(self, registry: str, repo: str, digest: str, *, head: bool = False) -> BlobHandle:
        validate_digest(digest)
        path = self.store.path(digest)
        e = self.blobs.get(digest)
        if e is not None or path.exists():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = None
            if size is not None:
                if e is not None:
                    self._note_repo(e, registry, repo)
                self._touch(digest)
                self._serving[digest] += 1
                return BlobHandle(digest, size, "hit", registry, path=path, _release=lambda: self._unserve(digest))
        up = self.upstream(registry)
        if head and not self.flights.in_flight(digest):
            resp = await up.open("HEAD", repo, f"blobs/{digest}")
            await resp.aclose()
            length = resp.headers.get("content-length")
            return BlobHandle(digest, int(length) if length and length.isdigit() else None, "miss", registry)
        flight, _ = self.flights.join(digest, up, repo)
        handle = BlobHandle(digest, None, "miss", registry, flight=flight)
        handle.size = await flight.wait_ready()
        return handle

    def _unserve(self, digest: str) -> None:
        self._serving[digest] -= 1
        if self._serving[digest] <= 0:
            del self._serving[digest]

    async def _on_commit(self, flight: Flight, info: ContentInfo) -> None:
        now = time.time()
        e = self.blobs.get(info.digest) or BlobEntry(
            info.digest, info.size, None, "blob", flight.upstream.registry, now, now
        )
        e.repos.add((flight.upstream.registry, flight.repository))
        self.blobs[info.digest] = e
        await self._db(self.meta.put_blob, e)
        self._after_growth()

    # --- bookkeeping -------------------------------------------------------------------
    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._db_lock:  # one writer at a time keeps SQLite from busy-waiting threads
            return await asyncio.to_thread(fn, *args)

    def _note_repo(self, e: BlobEntry, registry: str, repo: str) -> None:
        if (registry, repo) not in e.repos:
            e.repos.add((registry, repo))
            task = asyncio.get_running_loop().create_task(self._db(self.meta.add_repo, e.digest, registry, repo))
            self._tasks.append(task)
            task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _touch(self, digest: str) -> None:
        now = time.time()
        self._access[digest] = now
        e = self.blobs.get(digest)
        if e is not None:
            e.last_access = now

    async def _flush_access(self) -> None:
        pending, self._access = self._access, {}
        if pending:
            await self._db(self.meta.touch, pending)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(ACCESS_FLUSH_SECONDS)
            try:
                await self._flush_access()
            except Exception:
                log.exception("cache: flushing access times failed")

    def total_bytes(self) -> int:
        return sum(e.size for e in self.blobs.values())

    def _update_size_metrics(self) -> None:
        metrics.CACHE_SIZE.set(self.total_bytes())
        metrics.CACHE_BLOBS.set(len(self.blobs))

    def _after_growth(self) -> None:
        self._update_size_metrics()
        if self.total_bytes() > self.settings.quota_bytes:
            self._evict_wakeup.set()

    # --- pins and eviction -------------------------------------------------------------
    def pin(self, digest: str) -> None:
        """Protect ``digest`` from eviction (the runtime: layers of images in use). Counted."""
        self._pins[validate_digest(digest)] += 1

    def unpin(self, digest: str) -> None:
        if self._pins[digest] > 1:
            self._pins[digest] -= 1
        else:
            self._pins.pop(digest, None)

    def protected(self, digest: str) -> bool:
        if self._pins.get(digest) or self._serving.get(digest) or self.flights.in_flight(digest):
            return True
        return bool(self.in_use is not None and self.in_use(digest))

    async def evict_now(self) -> list[tuple[str, str]]:
        async with self._evict_lock:  # the background loop and an admin call never plan at once
            plan = plan_eviction(
                self.blobs.values(),
                quota_bytes=self.settings.quota_bytes,
                ttl_seconds=self.settings.ttl_seconds,
                now=time.time(),
                protected=self.protected,
            )
            await self._drop([d for d, _ in plan], [r for _, r in plan])
        return plan

    async def evict(self, *, digest: str | None = None, repository: str | None = None) -> list[str]:
        """Manual eviction by digest or by repository (``registry/repo``); protected blobs stay."""
        async with self._evict_lock:
            return await self._evict_manual(digest, repository)

    async def _evict_manual(self, digest: str | None, repository: str | None) -> list[str]:
        if digest:
            validate_digest(digest)
            if digest not in self.blobs and not self.store.exists(digest):
                raise NotFound(f"blob {digest} is not cached", category=Category.IMAGE, details={"digest": digest})
            if self.protected(digest):
                raise FailedPrecondition(f"blob {digest} is in use", category=Category.IMAGE)
            await self._drop([digest], ["manual"])
            return [digest]
        if not repository:
            raise InvalidArgument("evict needs a digest or a repository", category=Category.IMAGE)
        registry, repo = self.resolve_name(repository)
        for key in [k for k in self.tags if k[0] == registry and k[1] == repo]:
            t = self.tags.pop(key)
            await self._db(self.meta.delete_tag, *key)
            del t
        victims = [
            d for d, e in self.blobs.items() if e.repos and e.repos <= {(registry, repo)} and not self.protected(d)
        ]
        await self._drop(victims, ["manual"] * len(victims))
        return victims

    async def _drop(self, digests: list[str], reasons: list[str]) -> None:
        if not digests:
            return
        for d, reason in zip(digests, reasons, strict=True):
            await asyncio.to_thread(self.store.delete, d)
            self.blobs.pop(d, None)
            self.manifests.forget(d)
            self._access.pop(d, None)
            metrics.EVICTIONS.labels(reason=reason).inc()
        dropped = set(digests)
        self.tags = {k: t for k, t in self.tags.items() if t.digest not in dropped}
        await self._db(self.meta.delete_blobs, digests)
        self._update_size_metrics()
        log.info("cache: evicted %d blobs (%s)", len(digests), ", ".join(sorted(set(reasons))))

    async def _evict_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._evict_wakeup.wait(), EVICTION_INTERVAL)
            self._evict_wakeup.clear()
            try:
                await self.evict_now()
            except Exception:
                log.exception("cache: eviction failed")

    # --- introspection -----------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "blobs": len(self.blobs),
            "manifests": sum(1 for e in self.blobs.values() if e.kind == "manifest"),
            "tags": len(self.tags),
            "size_bytes": self.total_bytes(),
            "quota_bytes": self.settings.quota_bytes,
            "ttl_seconds": self.settings.ttl_seconds,
            "pinned": sorted(self._pins),
            "downloads": [
                {"digest": f.digest, "upstream": f.upstream.registry, "repository": f.repository,
                 "bytes": f.written, "size": f.size, "waiters": f.waiters}
                for f in self.flights.active()
            ],
        }  # fmt: skip

    def health(self) -> dict[str, Any]:
        return {name: up.health() for name, up in self.upstreams.all().items()}
