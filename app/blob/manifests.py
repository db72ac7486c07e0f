"""Manifests and tags of the cache: fetch, store byte-for-byte, revalidate, serve stale.

Manifest by tag (``cache`` label of every answer: hit | miss | stale)::

    tag known, file present ──fresh (age < TTL)──────────────────────────────> hit
          │                 └─stale─ HEAD upstream ─ same digest ───────────> hit (revalidated)
          │                                 ├─── new digest ─ GET ─────────> miss
          │                                 ├─── 404 ─ forget tag ─────────> MANIFEST_UNKNOWN
          │                                 └─── 5xx/429/down ─────────────> stale (log + metric)
          └─ unknown ─ GET upstream (Accept: all four types) ─ store bytes ─> miss

Manifests are stored byte-for-byte in the content store under their sha256, with the
upstream's media type in metadata; recent ones are also kept in memory for warm GETs.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import time
from typing import TYPE_CHECKING

from app.blob import metrics
from app.blob.meta import BlobEntry, TagEntry
from app.content import ContentInfo
from app.errors import (
    Category,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    VappError,
)
from app.oci import mediatypes as mt
from app.oci.reference import is_digest, validate_digest, validate_tag

if TYPE_CHECKING:
    from app.blob.cache import BlobCache

log = logging.getLogger(__name__)
MANIFEST_MAX = 8 * 1024 * 1024
MANIFEST_MEMO = 2048  # manifests kept in memory for warm GETs
STALE_OK = (Unavailable, ResourceExhausted, DeadlineExceeded)


@dataclasses.dataclass(frozen=True)
class ManifestResult:
    body: bytes
    media_type: str
    digest: str
    cache: str  # hit | miss | stale


def _accepts(accept: list[str], media_type: str) -> bool:
    if not accept:
        return True
    bases = {mt.base(a) for a in accept}
    return bool(bases & {"*/*", "application/*", mt.base(media_type)})


class _MissingFile(Exception):
    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


class Manifests:
    def __init__(self, cache: BlobCache) -> None:
        self.c = cache
        self._memo: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._persisting: set[asyncio.Task[None]] = set()

    def forget(self, digest: str) -> None:
        self._memo.pop(digest, None)

    async def drain(self) -> None:
        if self._persisting:
            await asyncio.wait(self._persisting, timeout=10)

    def _tag_ttl(self, registry: str, repo: str) -> float:
        cfg = self.c.upstreams.config_for(registry)
        return cfg.repository_tag_ttl.get(repo, cfg.tag_ttl_seconds)

    async def get(self, registry: str, repo: str, reference: str, accept: list[str]) -> ManifestResult:
        try:
            return await self._get(registry, repo, reference, accept)
        except _MissingFile as gone:
            # The index said cached but the file is gone (removed behind our back): forget it, refetch.
            log.warning("cache: manifest %s vanished from the content store; refetching", gone.digest)
            self.c.blobs.pop(gone.digest, None)
            self.forget(gone.digest)
            return await self._get(registry, repo, reference, accept)

    async def _get(self, registry: str, repo: str, reference: str, accept: list[str]) -> ManifestResult:
        if is_digest(reference) or ":" in reference:
            validate_digest(reference)
            return await self._manifest_by_digest(registry, repo, reference, accept)
        validate_tag(reference)
        key = (registry, repo, reference)
        tag = self.c.tags.get(key)
        if tag is not None and tag.digest in self.c.blobs and _accepts(accept, tag.media_type):
            if time.time() - tag.validated_at < self._tag_ttl(registry, repo):
                return self._served_manifest(tag.digest, tag.media_type, "hit")
            return await self._revalidate(tag, accept)
        if tag is not None and not _accepts(accept, tag.media_type):
            # The client wants another shape than we cached: ask upstream with its exact Accept.
            body, media, digest = await self._fetch_manifest(registry, repo, reference, accept)
            await self._store_manifest(registry, repo, digest, body, media, tag=None)
            return ManifestResult(body, media, digest, "miss")
        return await self._fetch_tag(registry, repo, reference, accept)

    async def _revalidate(self, tag: TagEntry, accept: list[str]) -> ManifestResult:
        up = self.c.upstream(tag.upstream)
        try:
            resp = await up.open("HEAD", tag.repository, f"manifests/{tag.tag}", {"Accept": self._accept_hdr(accept)})
            await resp.aclose()
            remote = resp.headers.get("docker-content-digest")
        except NotFound:
            self.c.tags.pop((tag.upstream, tag.repository, tag.tag), None)
            await self.c._db(self.c.meta.delete_tag, tag.upstream, tag.repository, tag.tag)
            raise
        except STALE_OK as exc:
            log.warning("serving stale %s/%s:%s: %s", tag.upstream, tag.repository, tag.tag, exc.message)
            metrics.STALE_SERVED.labels(upstream=tag.upstream).inc()
            return self._served_manifest(tag.digest, tag.media_type, "stale")
        if remote == tag.digest:
            tag.validated_at = time.time()
            await self.c._db(self.c.meta.put_tag, tag)
            return self._served_manifest(tag.digest, tag.media_type, "hit")
        try:
            return await self._fetch_tag(tag.upstream, tag.repository, tag.tag, accept)
        except STALE_OK as exc:
            log.warning("serving stale %s/%s:%s: %s", tag.upstream, tag.repository, tag.tag, exc.message)
            metrics.STALE_SERVED.labels(upstream=tag.upstream).inc()
            return self._served_manifest(tag.digest, tag.media_type, "stale")

    async def _fetch_tag(self, registry: str, repo: str, tag: str, accept: list[str]) -> ManifestResult:
        body, media, digest = await self._fetch_manifest(registry, repo, tag, accept)
        entry = TagEntry(registry, repo, tag, digest, media, time.time())
        await self._store_manifest(registry, repo, digest, body, media, tag=entry)
        return ManifestResult(body, media, digest, "miss")

    async def _manifest_by_digest(self, registry: str, repo: str, digest: str, accept: list[str]) -> ManifestResult:
        e = self.c.blobs.get(digest)
        if e is not None and (e.kind == "manifest" or e.media_type):
            self.c._note_repo(e, registry, repo)
            return self._served_manifest(digest, e.media_type or mt.OCI_MANIFEST, "hit")
        body, media, got = await self._fetch_manifest(registry, repo, digest, accept)
        if got != digest:
            metrics.DIGEST_FAILURES.labels(upstream=registry).inc()
            raise Unavailable(
                f"upstream manifest does not match {digest} (got {got})",
                category=Category.IMAGE,
                details={"digest": digest},
            )
        await self._store_manifest(registry, repo, digest, body, media, tag=None)
        return ManifestResult(body, media, digest, "miss")

    def _served_manifest(self, digest: str, media_type: str, cache: str) -> ManifestResult:
        body = self._memo.get(digest)
        if body is None:
            try:
                body = self.c.store.read(digest)
            except NotFound:
                raise _MissingFile(digest) from None
            self._memo[digest] = body
            if len(self._memo) > MANIFEST_MEMO:
                self._memo.popitem(last=False)
        self.c._touch(digest)
        return ManifestResult(body, media_type, digest, cache)

    @staticmethod
    def _accept_hdr(accept: list[str]) -> str:
        wanted = [a for a in accept if a] or []
        for a in mt.DEFAULT_ACCEPT:
            if not any(mt.base(w) == a for w in wanted):
                wanted.append(a)
        return ", ".join(wanted)

    async def _fetch_manifest(self, registry: str, repo: str, ref: str, accept: list[str]) -> tuple[bytes, str, str]:
        up = self.c.upstream(registry)
        resp = await up.open("GET", repo, f"manifests/{ref}", {"Accept": self._accept_hdr(accept)})
        try:
            chunks, total = [], 0
            async for chunk in resp.response.aiter_bytes():
                total += len(chunk)
                if total > MANIFEST_MAX:
                    raise Unavailable(
                        f"upstream manifest {repo}:{ref} exceeds {MANIFEST_MAX} bytes", category=Category.IMAGE
                    )
                chunks.append(chunk)
        except VappError:
            raise
        except Exception as exc:
            raise Unavailable(
                f"reading manifest {repo}:{ref} from upstream failed: {exc!r}", category=Category.IMAGE
            ) from exc
        finally:
            await resp.aclose()
        body = b"".join(chunks)
        ctype = resp.headers.get("content-type")
        if mt.detect_schema1(body, ctype):
            raise InvalidArgument(
                f"{registry}/{repo}:{ref} is a Docker schema 1 manifest, which is not supported "
                "(push the image again with a current client)",
                category=Category.IMAGE,
                details={"code": "MANIFEST_INVALID", "mediaType": mt.base(ctype)},
            )
        media = mt.base(ctype) if ctype and mt.base(ctype) not in ("application/json", "text/plain") else ""
        media = media or mt.sniff_manifest_type(body) or mt.OCI_MANIFEST
        return body, media, "sha256:" + hashlib.sha256(body).hexdigest()

    async def _store_manifest(
        self, registry: str, repo: str, digest: str, body: bytes, media: str, tag: TagEntry | None
    ) -> None:
        """Index the manifest in memory at once (the answer goes out now) and persist it in the
        background: file first (verified, fsynced), then its rows, so a crash in between leaves a
        file that start-up adopts, never a row without a file."""
        now = time.time()
        e = self.c.blobs.get(digest)
        if e is None:
            e = BlobEntry(digest, len(body), media, "manifest", registry, now, now)
            self.c.blobs[digest] = e
        e.kind, e.media_type = "manifest", media
        e.repos.add((registry, repo))
        self._memo[digest] = body
        self._memo.move_to_end(digest)
        if len(self._memo) > MANIFEST_MEMO:
            self._memo.popitem(last=False)
        if tag is not None:
            self.c.tags[(tag.upstream, tag.repository, tag.tag)] = tag
        task = asyncio.get_running_loop().create_task(self._persist_manifest(e, body, tag))
        self._persisting.add(task)
        task.add_done_callback(self._persisting.discard)
        self.c._after_growth()

    async def _persist_manifest(self, e: BlobEntry, body: bytes, tag: TagEntry | None) -> None:
        def write() -> ContentInfo:
            w = self.c.store.writer(f"manifest-{e.digest}-{time.monotonic_ns()}", e.digest, len(body))
            try:
                w.write(body)
            except BaseException:
                w.abort()
                raise
            return w.commit()

        try:
            if not self.c.store.exists(e.digest):
                await asyncio.to_thread(write)
            await self.c._db(self.c.meta.put_blob, e)
            if tag is not None:
                await self.c._db(self.c.meta.put_tag, tag)
        except Exception:
            log.exception("cache: persisting manifest %s failed", e.digest)
