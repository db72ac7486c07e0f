"""Pull the suite's images through the cache with skopeo: content identical, digests verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.blob.harness import blob_settings, committed, local_upstream, running_cache, skopeo_copy
from tests.helpers.registry import RegistryInfo


def _layout_blobs(layout: Path) -> dict[str, bytes]:
    out = {}
    for p in (layout / "blobs" / "sha256").iterdir():
        data = p.read_bytes()
        assert hashlib.sha256(data).hexdigest() == p.name
        out["sha256:" + p.name] = data
    return out


async def test_skopeo_pulls_every_image_through_cache(tmp_path: Path, registry: RegistryInfo, test_images) -> None:
    # skopeo cannot send ?ns= and a host:port prefix is not a valid reference path, so the
    # upstream is the configured default here; the prefix and ?ns= forms are checked with httpx.
    settings = blob_settings({registry.host: local_upstream(registry)}, default_registry=registry.host)
    async with running_cache(tmp_path / "cache", settings) as c:
        for img in test_images:
            dest = tmp_path / "out" / img.name
            dest.parent.mkdir(exist_ok=True)
            src = f"docker://{c.host}/{img.repository}:latest"
            res = await skopeo_copy(src, f"oci:{dest}:latest", "--all", "--preserve-digests")
            assert res.returncode == 0, res.stderr.decode()
            index = json.loads((dest / "index.json").read_text())
            assert index["manifests"][0]["digest"] == img.manifest_digest
            pulled = _layout_blobs(dest)
            await committed(c, *img.layers)
            for digest in img.layers:
                assert digest in pulled
                assert c.store.read(digest) == pulled[digest]
        from prometheus_client import REGISTRY

        hits = REGISTRY.get_sample_value("vapp_blob_requests_total", {"kind": "manifest", "status": "200",
                                                                       "cache": "hit"}) or 0  # fmt: skip
        async with httpx.AsyncClient() as client:
            img = test_images.busybox
            r = await client.get(f"{c.url}/v2/{img.repository}/manifests/latest", params={"ns": registry.host})
            assert r.status_code == 200
            assert r.headers["docker-content-digest"] == img.manifest_digest
            assert "sha256:" + hashlib.sha256(r.content).hexdigest() == img.manifest_digest
            assert r.headers["content-type"] == img.media_type
            r2 = await client.get(f"{c.url}/v2/{registry.host}/{img.repository}/manifests/latest")
            assert r2.status_code == 200 and r2.content == r.content
        after = REGISTRY.get_sample_value("vapp_blob_requests_total", {"kind": "manifest", "status": "200",
                                                                        "cache": "hit"})  # fmt: skip
        assert after is not None and after >= hits + 2
        assert (REGISTRY.get_sample_value("vapp_blob_bytes_pulled_total", {"upstream": registry.host}) or 0) > 0
        assert (REGISTRY.get_sample_value("vapp_blob_cache_size_bytes") or 0) > 0


async def test_two_clients_on_cold_50mb_blob_fetch_once(tmp_path: Path, registry: RegistryInfo, test_images) -> None:
    import asyncio

    from app.blob import metrics

    img = test_images.big
    settings = blob_settings({registry.host: local_upstream(registry)}, default_registry=registry.host)
    async with running_cache(tmp_path / "cache", settings) as c, httpx.AsyncClient(timeout=60) as client:
        sizes = {}
        for d in img.layers:
            r = await client.head(f"{c.url}/v2/{img.repository}/blobs/{d}")
            sizes[d] = int(r.headers["content-length"])
        layer = max(sizes, key=sizes.__getitem__)
        assert sizes[layer] > 40 * 1024 * 1024
        pulled = metrics.BYTES_PULLED.labels(upstream=registry.host)
        before = pulled._value.get()

        async def get() -> bytes:
            r = await client.get(f"{c.url}/v2/{img.repository}/blobs/{layer}")
            assert r.status_code == 200
            return r.content

        a, b = await asyncio.gather(get(), get())
        assert a == b and "sha256:" + hashlib.sha256(a).hexdigest() == layer
        assert pulled._value.get() - before == sizes[layer]  # one upstream download for both
