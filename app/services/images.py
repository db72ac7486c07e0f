"""Image service: pull, list, inspect, tag, remove, garbage-collect.

Conventions (they suit CRI and match containerd):

* image ID = the config digest (``sha256:…``), what ``crictl images`` shows;
* tags (``repoTags``) are canonical names ``registry/repository:tag``
  (``docker.io/library/busybox:latest``); one name points at one image;
* ``repoDigests`` are ``registry/repository@<digest the tag resolved to>``
  (the index digest for a multi-platform image, else the manifest digest);
* any of the three, a unique ID prefix (≥ 4 hex) or a familiar name
  (``busybox``) finds an image.

Removal: by a tag that is not the image's last → only the tag goes (docker
semantics); otherwise the image goes, refused while ``in_use(image_id)`` (a
container uses it). GC then removes layer snapshots no image refers to and
unpins their blobs in the blob cache (``pins``), which evicts them when it
needs room; with no cache on the node (``delete_blobs``) it deletes them.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlmodel import select

from app.content.store import ContentStore
from app.errors import Category, FailedPrecondition, InvalidArgument, NotFound
from app.oci.credentials import RegistryCredentials
from app.oci.reference import Reference
from app.runtime.images.pull import Puller, PullEvent, PullResult
from app.runtime.snapshots import Snapshotter
from app.runtime.snapshots.layers import LayerSnapshots
from app.state.db import Database
from app.state.models.images import Image, ImageTag

log = logging.getLogger(__name__)


class BlobPins(Protocol):
    """The blob cache's eviction guard (``app.blob`` implements it; wiring joins)."""

    def pin(self, digest: str) -> None: ...
    def unpin(self, digest: str) -> None: ...


@dataclass(frozen=True)
class ImageRecord:
    id: str
    tags: list[str]
    repo_digests: list[str]
    manifest_digest: str
    platform: str
    size: int
    chain_ids: list[str]
    layers: list[dict[str, Any]]
    config: dict[str, Any]
    created_at: float
    last_used_at: float
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    user: str = ""
    working_dir: str = ""
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("config")
        return out


@dataclass(frozen=True)
class GcReport:
    snapshots: list[str]
    blobs: list[str]


def _record(img: Image, tags: list[str]) -> ImageRecord:
    config = json.loads(img.config)
    c = config.get("config") or {}
    return ImageRecord(
        id=img.id,
        tags=sorted(tags),
        repo_digests=json.loads(img.repo_digests),
        manifest_digest=img.manifest_digest,
        platform=img.platform,
        size=img.size,
        chain_ids=json.loads(img.chain_ids),
        layers=json.loads(img.layers),
        config=config,
        created_at=img.created_at,
        last_used_at=img.last_used_at,
        entrypoint=c.get("Entrypoint"),
        cmd=c.get("Cmd"),
        env=list(c.get("Env") or []),
        user=c.get("User") or "",
        working_dir=c.get("WorkingDir") or "",
        exposed_ports=sorted((c.get("ExposedPorts") or {}).keys()),
        stop_signal=c.get("StopSignal"),
        labels=dict(c.get("Labels") or {}),
    )


def _tag_name(text: str) -> str:
    ref = Reference.parse(text)
    if ref.digest and not ref.tag:
        raise InvalidArgument(f"{text!r} is a digest reference, not a tag", category=Category.IMAGE)
    return f"{ref.name}:{ref.tag}"


class ImageService:
    def __init__(
        self,
        db: Database,
        puller: Puller,
        layers: LayerSnapshots,
        store: ContentStore,
        *,
        in_use: Callable[[str], bool] = lambda _id: False,
        pins: BlobPins | None = None,
        delete_blobs: bool = False,
        snapshotter: Snapshotter | None = None,
    ) -> None:
        self.db = db
        self.puller = puller
        self.layers = layers
        self.store = store
        self.in_use = in_use
        self.pins = pins
        self.delete_blobs = delete_blobs
        # Container root filesystems over this store's layers (the containers side
        # calls prepare/remove with a record's chain_ids).
        self.snapshotter = snapshotter
        # Start times of pulls in progress: GC spares anything created since the
        # oldest, since a pull commits layers before its image row exists.
        self._pulling: dict[int, float] = {}
        self._tokens = itertools.count()

    def set_in_use(self, in_use: Callable[[str], bool]) -> None:
        """Wiring hands in the containers service's check once both exist."""
        self.in_use = in_use

    # --- start-up ------------------------------------------------------------------------
    def restore(self) -> None:
        """Drop interrupted extractions and pin every stored image's blobs again."""
        self.layers.cleanup()
        cleanup = getattr(self.snapshotter, "cleanup", None)
        if cleanup is not None:
            cleanup()
        for rec in self.list_images():
            self._pin(rec, True)

    def _blobs_of(self, rec: ImageRecord) -> list[str]:
        return [rec.id, *(layer["digest"] for layer in rec.layers)]

    def _pin(self, rec: ImageRecord, on: bool) -> None:
        if self.pins is None:
            return
        for digest in self._blobs_of(rec):
            (self.pins.pin if on else self.pins.unpin)(digest)

    # --- verbs ---------------------------------------------------------------------------
    async def pull(self, text: str, on_event: Callable[[PullEvent], None] | None = None, *,
                   credentials: RegistryCredentials | None = None) -> ImageRecord:
        """``credentials``: per-request registry credentials (CRI AuthConfig); never stored or logged,
        the node's configured upstream credentials apply without them."""
        token = next(self._tokens)
        self._pulling[token] = time.time()
        try:
            res = await self.puller.pull(text, on_event, credentials=credentials)
            if not all(self.layers.has(c) for c in res.chain_ids):
                # A GC ran meanwhile and took a snapshot this pull found already there
                # (left by an earlier, failed pull): pulling again recreates it.
                res = await self.puller.pull(text, on_event, credentials=credentials)
            rec = self._save(res)
        finally:
            self._pulling.pop(token, None)
        if on_event:
            on_event(PullEvent(str(res.ref), rec.id, "done", res.size, res.size))
        return rec

    def _save(self, res: PullResult) -> ImageRecord:
        now = time.time()
        tag = f"{res.ref.name}:{res.ref.tag}" if res.ref.tag else None
        repo_digest = f"{res.ref.name}@{res.index_digest or res.manifest_digest}"
        with self.db.session() as s:
            img = s.get(Image, res.image_id)
            fresh = img is None
            if img is None:
                img = Image(
                    id=res.image_id,
                    manifest_digest=res.manifest_digest,
                    index_digest=res.index_digest,
                    platform=str(self.puller.platform),
                    size=res.size,
                    config=json.dumps(res.config),
                    layers=json.dumps(
                        [{"digest": d.digest, "size": d.size, "mediaType": d.media_type} for d in res.layers]
                    ),
                    diff_ids=json.dumps(res.diff_ids),
                    chain_ids=json.dumps(res.chain_ids),
                    repo_digests="[]",
                    created_at=now,
                )
            digests = json.loads(img.repo_digests)
            if repo_digest not in digests:
                img.repo_digests = json.dumps([*digests, repo_digest])
            img.last_used_at = now
            s.add(img)
            if tag:
                row = s.get(ImageTag, tag)
                if row is None:
                    row = ImageTag(name=tag, image_id=res.image_id)
                row.image_id, row.updated_at = res.image_id, now
                s.add(row)
            s.commit()
        rec = self.get(res.image_id)
        if fresh:
            self._pin(rec, True)
        return rec

    def list_images(self) -> list[ImageRecord]:
        with self.db.session() as s:
            images = s.exec(select(Image)).all()
            tags = s.exec(select(ImageTag)).all()
        by_image: dict[str, list[str]] = {}
        for t in tags:
            by_image.setdefault(t.image_id, []).append(t.name)
        return [_record(img, by_image.get(img.id, [])) for img in sorted(images, key=lambda i: i.created_at)]

    def resolve_id(self, name: str) -> str:
        """The image ID for an ID, unique ID prefix, tag, familiar name or repo digest."""
        with self.db.session() as s:
            if name.startswith("sha256:") and s.get(Image, name) is not None:
                return name
            hexpart = name.removeprefix("sha256:")
            if 4 <= len(hexpart) < 64 and all(c in "0123456789abcdef" for c in hexpart):
                hits = s.exec(select(Image.id).where(Image.id.startswith("sha256:" + hexpart))).all()  # type: ignore[attr-defined]
                if len(hits) == 1:
                    return hits[0]
                if len(hits) > 1:
                    raise InvalidArgument(f"image ID prefix {name!r} is ambiguous", category=Category.IMAGE)
            try:
                ref = Reference.parse(name)
            except InvalidArgument:
                ref = None
            if ref is not None:
                if ref.digest:
                    for img in s.exec(select(Image)).all():
                        if f"{ref.name}@{ref.digest}" in json.loads(img.repo_digests) or ref.digest in (
                            img.manifest_digest,
                            img.index_digest,
                        ):
                            return img.id
                else:
                    row = s.get(ImageTag, f"{ref.name}:{ref.tag}")
                    if row is not None:
                        return row.image_id
        raise NotFound(f"image {name!r} not found", category=Category.IMAGE, details={"image": name})

    def get(self, name: str) -> ImageRecord:
        image_id = self.resolve_id(name)
        with self.db.session() as s:
            img = s.get(Image, image_id)
            tags = s.exec(select(ImageTag.name).where(ImageTag.image_id == image_id)).all()
        if img is None:
            raise NotFound(f"image {name!r} not found", category=Category.IMAGE)
        return _record(img, list(tags))

    def touch(self, name: str) -> None:
        """Record a use (a container created from it): the ``last used`` column."""
        image_id = self.resolve_id(name)
        with self.db.session() as s:
            img = s.get(Image, image_id)
            if img is not None:
                img.last_used_at = time.time()
                s.add(img)
                s.commit()

    def tag(self, source: str, target: str) -> ImageRecord:
        image_id = self.resolve_id(source)
        name = _tag_name(target)
        with self.db.session() as s:
            row = s.get(ImageTag, name) or ImageTag(name=name, image_id=image_id)
            row.image_id, row.updated_at = image_id, time.time()
            s.add(row)
            s.commit()
        return self.get(image_id)

    def remove(self, name: str, *, force: bool = False) -> list[str]:
        """Remove a tag or an image; returns what went (tag names and/or the image ID)."""
        image_id = self.resolve_id(name)
        rec = self.get(image_id)
        try:
            tag = _tag_name(name) if not name.startswith("sha256:") else None
        except InvalidArgument:
            tag = None
        if tag in rec.tags and len(rec.tags) > 1 and not force:
            with self.db.session() as s:
                row = s.get(ImageTag, tag)
                if row is not None:
                    s.delete(row)
                    s.commit()
            return [tag]
        if self.in_use(image_id):
            raise FailedPrecondition(
                f"image {name!r} is used by a container", category=Category.IMAGE, details={"image": image_id}
            )
        with self.db.session() as s:
            for row in s.exec(select(ImageTag).where(ImageTag.image_id == image_id)).all():
                s.delete(row)
            img = s.get(Image, image_id)
            if img is not None:
                s.delete(img)
            s.commit()
        self._pin(rec, False)
        self.gc()
        return [*rec.tags, image_id]

    def gc(self) -> GcReport:
        """Remove layer snapshots (and, without a blob cache, blobs) no image refers to."""
        records = self.list_images()
        chains = {c for r in records for c in r.chain_ids}
        blobs = {d for r in records for d in self._blobs_of(r)}
        horizon = min(self._pulling.values(), default=float("inf"))
        removed = []
        for info in list(self.layers.list()):
            if info.chain_id not in chains and info.created < horizon:
                self.layers.remove(info.chain_id)
                removed.append(info.chain_id)
        gone: list[str] = []
        if self.delete_blobs:
            for blob in list(self.store.walk()):
                if blob.digest not in blobs and blob.created_at < horizon:
                    self.store.delete(blob.digest)
                    gone.append(blob.digest)
        if removed or gone:
            log.info("image gc: %d snapshots, %d blobs removed", len(removed), len(gone))
        return GcReport(snapshots=removed, blobs=gone)
