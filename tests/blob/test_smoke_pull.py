"""Pull the suite's images through the cache with skopeo: content identical, digests verified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx

from tests.blob.harness import blob_settings, local_upstream, running_cache, skopeo_copy
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
            for digest in img.layers:
                assert digest in pulled
                assert c.store.read(digest) == pulled[digest]
        async with httpx.AsyncClient() as client:
            img = test_images.busybox
            r = await client.get(f"{c.url}/v2/{img.repository}/manifests/latest", params={"ns": registry.host})
            assert r.status_code == 200
            assert r.headers["docker-content-digest"] == img.manifest_digest
            assert "sha256:" + hashlib.sha256(r.content).hexdigest() == img.manifest_digest
            assert r.headers["content-type"] == img.media_type
            r2 = await client.get(f"{c.url}/v2/{registry.host}/{img.repository}/manifests/latest")
            assert r2.status_code == 200 and r2.content == r.content
