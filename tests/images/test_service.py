"""Image store: pull → list/inspect/tag/remove/gc, refusals, faults (corrupt, wrong digest, kill)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.content.store import LocalContentStore
from app.errors import FailedPrecondition, NotFound, VappError
from app.oci.manifest import Platform
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.services.images import ImageService
from app.state.db import open_database
from tests.images.conftest import PullEnv
from tests.images.layout_server import LayoutServer, rewrite_diff_ids


def service(env: PullEnv, fetcher: RegistryFetcher | None = None, **kw: object) -> ImageService:
    db = open_database(f"sqlite:///{env.root / 'vapp.db'}")
    puller = Puller(
        fetcher or env.fetcher,
        env.store,
        env.layers,
        env.unpacker,
        platform=Platform("linux", "amd64"),
        retry_deadline=2,
    )
    return ImageService(db, puller, env.layers, env.store, **kw)  # type: ignore[arg-type]


async def test_pull_list_inspect_tag_remove(pull_env: PullEnv, test_images, registry) -> None:  # type: ignore[no-untyped-def]
    used: set[str] = set()
    svc = service(pull_env, in_use=lambda i: i in used, delete_blobs=True)
    img = test_images.multilayer
    rec = await svc.pull(img.ref)
    assert rec.id == img.config_digest
    assert rec.tags == [img.ref]
    assert rec.repo_digests == [f"{registry.host}/{img.repository}@{img.manifest_digest}"]
    assert [r.id for r in svc.list_images()] == [rec.id]
    for name in (img.ref, rec.id, rec.id[7:19], rec.repo_digests[0]):
        assert svc.get(name).id == rec.id
    assert rec.cmd is not None or rec.entrypoint is not None
    other = f"{registry.host}/test/alias:v1"
    assert sorted(svc.tag(img.ref, other).tags) == sorted([img.ref, other])
    assert svc.remove(other) == [other], "removing one of several tags keeps the image"
    used.add(rec.id)
    with pytest.raises(FailedPrecondition):
        svc.remove(img.ref)
    assert svc.get(rec.id).tags == [img.ref], "refusal leaves state intact"
    used.clear()
    assert svc.remove(img.ref) == [img.ref, rec.id]
    with pytest.raises(NotFound):
        svc.get(rec.id)
    assert list(pull_env.layers.list()) == []
    assert list(pull_env.store.walk()) == []


async def test_gc_keeps_shared_layers(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    svc = service(pull_env)
    a = await svc.pull(test_images.busybox.ref)
    b = await svc.pull(test_images.zstd.ref)  # same rootfs and config: the same image, two names
    assert a.chain_ids == b.chain_ids and a.id == b.id
    assert svc.remove(test_images.busybox.ref) == [test_images.busybox.ref]
    assert pull_env.layers.has(b.chain_ids[0])
    m = await svc.pull(test_images.multilayer.ref)
    svc.remove(test_images.zstd.ref)
    assert not pull_env.layers.has(b.chain_ids[0]) or b.chain_ids[0] in m.chain_ids
    assert all(pull_env.layers.has(c) for c in m.chain_ids), "another image's layers stay"


async def test_corrupt_layer_rejected_nothing_stored(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    img = test_images.busybox
    server = LayoutServer(img.oci_layout, corrupt={img.layers[0]})
    fetcher = RegistryFetcher(pull_env.store, server.url)
    try:
        svc = service(pull_env, fetcher)
        with pytest.raises(VappError):
            await svc.pull(f"{server.host}/test/busybox:latest")
        assert svc.list_images() == []
        assert list(pull_env.layers.list()) == []
        assert not pull_env.store.exists(img.layers[0])
    finally:
        await fetcher.aclose()
        server.close()


async def test_wrong_diff_id_rejected_nothing_stored(pull_env: PullEnv, test_images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    layout = rewrite_diff_ids(test_images.busybox.oci_layout, tmp_path / "bad")
    server = LayoutServer(layout)
    fetcher = RegistryFetcher(pull_env.store, server.url)
    try:
        svc = service(pull_env, fetcher)
        with pytest.raises(VappError) as info:
            await svc.pull(f"{server.host}/test/busybox:latest")
        assert "diff ID" in info.value.message
        assert svc.list_images() == []
        assert list(pull_env.layers.list()) == []
        assert not any(p.name.startswith(".tmp") for p in pull_env.layers.root.iterdir())
    finally:
        await fetcher.aclose()
        server.close()


PULL_SCRIPT = """
import asyncio, sys
from pathlib import Path
from app.content.store import LocalContentStore
from app.oci.manifest import Platform
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.snapshots.layers import LayerSnapshots
root, url, ref = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
store = LocalContentStore(root / "content")
p = Puller(RegistryFetcher(store, url), store, LayerSnapshots(root / "snapshots"),
           LayerUnpacker.for_this_process(), platform=Platform("linux", "amd64"))
asyncio.run(p.pull(ref))
"""


async def test_killed_pull_resumes_without_refetching(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    img = test_images.big
    big_layer = max(img.layers, key=lambda d: (img.oci_layout / "blobs/sha256" / d[7:]).stat().st_size)
    server = LayoutServer(img.oci_layout, rate=8 << 20)  # slow enough to kill mid-layer
    ref = f"{server.host}/test/big:latest"
    proc = subprocess.Popen(
        [sys.executable, "-c", PULL_SCRIPT, str(pull_env.root), server.url, ref], cwd=Path(__file__).parents[2]
    )
    try:
        deadline = time.monotonic() + 60
        while server.served.get(big_layer, 0) < 4 << 20:
            assert proc.poll() is None, "pull ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = server.served[big_layer]
        server.rate = None
        fetcher = RegistryFetcher(LocalContentStore(pull_env.root / "content"), server.url)
        try:
            svc = service(pull_env, fetcher)
            rec = await svc.pull(ref)
        finally:
            await fetcher.aclose()
        size = (img.oci_layout / "blobs/sha256" / big_layer[7:]).stat().st_size
        assert server.ranges, "the second pull resumed with a Range request"
        assert server.served[big_layer] - first < size, "bytes already verified were not fetched again"
        assert rec.id == img.config_digest
        for d in img.layers:
            if d != big_layer:
                assert server.served[d] == (img.oci_layout / "blobs/sha256" / d[7:]).stat().st_size
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()


async def test_pull_through_the_node_cache_fetcher(tmp_path: Path, test_images, registry) -> None:  # type: ignore[no-untyped-def]
    """The blob engine's in-process CacheFetcher satisfies the images Fetcher protocol."""
    from app.blob.cache import BlobCache
    from app.config import BlobSettings, UpstreamSettings
    from app.runtime.images.unpacker import LayerUnpacker
    from app.runtime.snapshots.layers import LayerSnapshots
    from app.services.cache import CacheService

    db = open_database(f"sqlite:///{tmp_path / 'vapp.db'}")
    store = LocalContentStore(tmp_path / "content")
    settings = BlobSettings(upstreams={registry.host: UpstreamSettings(url=registry.url)})
    cache = CacheService(BlobCache(settings, store, db))
    await cache.start()
    try:
        layers = LayerSnapshots(tmp_path / "snapshots")
        puller = Puller(
            cache.fetcher, store, layers, LayerUnpacker.for_this_process(), platform=Platform("linux", "amd64")
        )
        svc = ImageService(db, puller, layers, store, pins=cache.fetcher)
        rec = await svc.pull(test_images.multilayer.ref)
        assert rec.id == test_images.multilayer.config_digest
        assert all(layers.has(c) for c in rec.chain_ids)
        assert all(store.exists(d) for d in test_images.multilayer.layers), "one copy, in the shared store"
    finally:
        await cache.close()


async def test_retries_until_the_registry_comes_up(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    """A fresh node without network: the pull waits (bounded backoff) and completes once it is up."""
    import asyncio

    from app.errors import Unavailable
    from tests.helpers.ports import free_port

    port = free_port()
    fetcher = RegistryFetcher(pull_env.store, f"http://127.0.0.1:{port}")
    try:
        quick = Puller(fetcher, pull_env.store, pull_env.layers, pull_env.unpacker,
                       platform=Platform("linux", "amd64"), retry_deadline=0.5)  # fmt: skip
        t0 = time.monotonic()
        with pytest.raises(Unavailable):
            await quick.pull(f"127.0.0.1:{port}/test/busybox:latest")
        assert time.monotonic() - t0 < 5, "the deadline bounds the waiting"
        patient = Puller(fetcher, pull_env.store, pull_env.layers, pull_env.unpacker,
                         platform=Platform("linux", "amd64"), retry_deadline=30)  # fmt: skip
        task = asyncio.ensure_future(patient.pull(f"127.0.0.1:{port}/test/busybox:latest"))
        await asyncio.sleep(1.0)
        assert not task.done()
        server = LayoutServer(test_images.busybox.oci_layout, port=port)
        try:
            res = await asyncio.wait_for(task, 30)
        finally:
            server.close()
        assert res.image_id == test_images.busybox.config_digest
    finally:
        await fetcher.aclose()
