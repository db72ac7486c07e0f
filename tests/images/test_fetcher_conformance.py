"""One suite for the Fetcher protocol, run against both implementations.

``RegistryFetcher`` (direct) and the blob engine's ``CacheFetcher`` (through the node's cache).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.content.store import LocalContentStore
from app.errors import NotFound
from app.oci.manifest import Index, parse_manifest
from app.oci.reference import Reference
from app.runtime.images.fetch import Fetcher, RegistryFetcher
from app.state.db import open_database


@pytest.fixture(params=["direct", "cache"])
async def fetcher(request, tmp_path: Path, registry) -> AsyncIterator[tuple[Fetcher, LocalContentStore]]:  # type: ignore[no-untyped-def]
    store = LocalContentStore(tmp_path / "content")
    if request.param == "direct":
        f = RegistryFetcher(store, registry.url)
        yield f, store
        await f.aclose()
        return
    from app.blob.cache import BlobCache
    from app.config import BlobSettings, UpstreamSettings
    from app.services.cache import CacheService

    db = open_database(f"sqlite:///{tmp_path / 'vapp.db'}")
    cache = CacheService(BlobCache(BlobSettings(upstreams={registry.host: UpstreamSettings(url=registry.url)}),
                                   store, db))  # fmt: skip
    await cache.start()
    yield cache.fetcher, store
    await cache.close()


async def test_resolve_and_fetch(fetcher, test_images) -> None:  # type: ignore[no-untyped-def]
    f, _ = fetcher
    img = test_images.multiarch
    ref = Reference.parse(img.ref)
    top = await f.resolve(ref)
    assert top.digest == img.manifest_digest == "sha256:" + hashlib.sha256(top.body).hexdigest()
    index = parse_manifest(top.body, top.media_type)
    assert isinstance(index, Index)
    child = await f.fetch_manifest(ref, index.manifests[0].digest)
    assert child.digest == index.manifests[0].digest == "sha256:" + hashlib.sha256(child.body).hexdigest()
    pinned = await f.resolve(ref.with_digest(img.manifest_digest))
    assert pinned.body == top.body


async def test_ensure_blob(fetcher, test_images) -> None:  # type: ignore[no-untyped-def]
    f, store = fetcher
    img = test_images.big
    ref = Reference.parse(img.ref)
    digest = max(img.layers, key=lambda d: (img.oci_layout / "blobs/sha256" / d[7:]).stat().st_size)
    size = (img.oci_layout / "blobs/sha256" / digest[7:]).stat().st_size
    seen: list[tuple[int, int | None]] = []
    await f.ensure_blob(ref, digest, size, lambda d, t: seen.append((d, t)))
    assert store.exists(digest) and store.path(digest).stat().st_size == size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1][0] == size
    await f.ensure_blob(ref, digest, size)  # present: no error, nothing refetched


async def test_not_found(fetcher, registry) -> None:  # type: ignore[no-untyped-def]
    f, _ = fetcher
    with pytest.raises(NotFound):
        await f.resolve(Reference.parse(f"{registry.host}/test/does-not-exist:latest"))
