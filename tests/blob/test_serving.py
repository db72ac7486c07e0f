"""The /v2 surface against the shared registry: ranges, names and path tricks, Accept, HEAD,
client basic auth, eviction (quota, pins, manual via the admin router), prepull and the fetcher."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api.registry import create_admin_router
from app.errors import VappError
from app.oci import mediatypes as mt
from app.oci.reference import Reference
from tests.blob.harness import blob_settings, committed, local_upstream, running_cache, settled
from tests.helpers.registry import RegistryInfo

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def _settings(registry: RegistryInfo, **kw: Any) -> Any:
    return blob_settings({registry.host: local_upstream(registry)}, default_registry=registry.host, **kw)


async def test_ranges_warm_and_cold(tmp_path: Path, registry: RegistryInfo, test_images: Any) -> None:
    img = test_images.big
    layer = img.layers[-1]
    async with running_cache(tmp_path, _settings(registry)) as c, httpx.AsyncClient(timeout=60) as client:
        url = f"{c.url}/v2/{img.repository}/blobs/{layer}"
        cold = await client.get(url, headers={"Range": "bytes=1000-1999"})  # cold: waits for the bytes
        assert cold.status_code == 206
        assert cold.headers["content-length"] == "1000"
        full = (await client.get(url)).content
        assert "sha256:" + hashlib.sha256(full).hexdigest() == layer
        size = len(full)
        assert cold.content == full[1000:2000]
        assert cold.headers["content-range"] == f"bytes 1000-1999/{size}"
        for rng, want in [("bytes=-100", full[-100:]), (f"bytes={size - 10}-", full[-10:]), ("bytes=0-0", full[:1])]:
            r = await client.get(url, headers={"Range": rng})
            assert r.status_code == 206 and r.content == want
        r = await client.get(url, headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
        r = await client.head(url)
        assert r.status_code == 200 and r.headers["content-length"] == str(size) and r.content == b""
        assert r.headers["docker-content-digest"] == layer


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v2/test/../etc/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/test/%2e%2e/x/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/test%2Fbusybox/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/test//busybox/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/Test/BusyBox/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/test/busybox/manifests/bad:tag", 400, "DIGEST_INVALID"),
        ("/v2/test/busybox/manifests/-tag", 400, "TAG_INVALID"),
        ("/v2/test/busybox/blobs/sha256:1234", 400, "DIGEST_INVALID"),
        ("/v2/test/busybox/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
        ("/v2/test/busybox/blobs/sha512:" + "0" * 128, 400, "DIGEST_INVALID"),
        ("/v2/test/busybox/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("/v2/test/busybox/manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
        ("/v2/test/nosuch/manifests/latest", 404, "MANIFEST_UNKNOWN"),
        ("/v2/test/busybox/nothing", 404, "NAME_UNKNOWN"),
        ("/v2/test/busybox/manifests/latest?ns=bad%20host", 400, "NAME_INVALID"),
    ],
)
async def test_bad_names_digests_and_path_tricks(
    tmp_path: Path, registry: RegistryInfo, test_images: Any, path: str, status: int, code: str
) -> None:
    async with running_cache(tmp_path, _settings(registry)) as c:
        # Send the path byte-for-byte (no client-side normalisation of ".." or %2F).
        reader, writer = await asyncio.open_connection("127.0.0.1", c.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == str(status).encode(), raw[:300]
        assert f'"code": "{code}"'.encode() in body, body[:300]
        assert list(c.store.walk()) == [] or status != 400


async def test_accept_media_types_and_push_refused(tmp_path: Path, registry: RegistryInfo, test_images: Any) -> None:
    idx = test_images.multiarch
    async with running_cache(tmp_path, _settings(registry)) as c, httpx.AsyncClient() as client:
        url = f"{c.url}/v2/{idx.repository}/manifests/latest"
        r = await client.get(url, headers={"Accept": f"{mt.OCI_INDEX}, {mt.OCI_MANIFEST}"})
        assert r.status_code == 200 and r.headers["content-type"] == idx.media_type
        assert r.headers["docker-content-digest"] == idx.manifest_digest
        # The cache never picks a platform: each child manifest by digest, byte-for-byte.
        for digest in idx.platforms.values():
            r = await client.get(f"{c.url}/v2/{idx.repository}/manifests/{digest}")
            assert r.status_code == 200 and "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
        h = await client.head(url)
        assert h.status_code == 200 and h.headers["content-length"] == str(len((await client.get(url)).content))
        r = await client.put(url, content=b"{}")
        assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
        r = await client.get(f"{c.url}/v2/")
        assert r.status_code == 200 and r.headers["docker-distribution-api-version"] == "registry/2.0"
        r = await client.get(f"{c.url}/v2/{idx.repository}/tags/list", params={"n": "1"})
        assert r.status_code == 200 and r.json()["tags"] == ["latest"]


async def test_client_basic_auth(tmp_path: Path, registry: RegistryInfo, test_images: Any) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"node:{crypt.crypt('pw', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    async with (
        running_cache(tmp_path / "c", _settings(registry), htpasswd=htpasswd) as c,
        httpx.AsyncClient() as client,
    ):
        r = await client.get(f"{c.url}/v2/")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        r = await client.get(f"{c.url}/v2/", auth=("node", "wrong"))
        assert r.status_code == 401
        good = "Basic " + base64.b64encode(b"node:pw").decode()
        r = await client.get(f"{c.url}/v2/{test_images.busybox.repository}/manifests/latest",
                             headers={"Authorization": good})  # fmt: skip
        assert r.status_code == 200


async def test_eviction_quota_pins_and_admin(tmp_path: Path, registry: RegistryInfo, test_images: Any) -> None:
    img = test_images.multilayer
    async with running_cache(tmp_path, _settings(registry)) as c, httpx.AsyncClient() as client:
        for d in img.layers:
            assert (await client.get(f"{c.url}/v2/{img.repository}/blobs/{d}")).status_code == 200
        await committed(c, *img.layers)
        await settled(c)
        pinned = img.layers[0]
        c.service.pin(pinned)
        c.cache.settings.quota_bytes = 1  # everything but the pinned blob must go
        await c.service.evict_to_quota()  # (the background loop may take part of it: judge the result)
        assert c.store.exists(pinned) and not any(c.store.exists(d) for d in img.layers[1:])
        c.service.unpin(pinned)
        c.cache.settings.quota_bytes = 10**12
        # Admin router: stats, manual eviction by digest and by repository, errors mapped by the admin app.
        admin = FastAPI()
        admin.include_router(create_admin_router(c.service))

        @admin.exception_handler(VappError)
        async def _err(_req: Any, exc: VappError) -> Any:
            from fastapi.responses import JSONResponse

            return JSONResponse(exc.to_dict(), status_code=404 if exc.kind.value == "not_found" else 400)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin") as a:
            stats = (await a.get("/v1/cache/stats")).json()
            assert stats["blobs"] >= 1 and stats["size_bytes"] > 0
            r = await a.post("/v1/cache/evict", json={"digest": pinned})
            assert r.status_code == 200 and r.json()["evicted"] == [pinned]
            r = await a.post("/v1/cache/evict", json={"digest": pinned})
            assert r.status_code == 404
            await client.get(f"{c.url}/v2/{img.repository}/manifests/latest")
            r = await a.post("/v1/cache/evict", json={"repository": f"{registry.host}/{img.repository}"})
            assert r.status_code == 200 and r.json()["evicted"]
            assert (await a.get("/v1/cache/stats")).json()["tags"] == 0
            assert registry.host in (await a.get("/v1/cache/upstreams")).json()
            # Evicted content comes back on the next pull.
            r = await client.get(f"{c.url}/v2/{img.repository}/blobs/{pinned}")
            assert r.status_code == 200
            await committed(c, pinned)


async def test_prepull_and_fetcher(tmp_path: Path, registry: RegistryInfo, test_images: Any) -> None:
    idx = test_images.multiarch
    async with running_cache(tmp_path, _settings(registry)) as c:
        job = c.service.prepull(f"{registry.host}/{idx.repository}:latest", "linux/arm64/v8")
        for _ in range(200):
            job = c.service.prepull_job(job["id"])
            if job["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "done", job
        assert job["blobs_done"] == job["blobs_total"] >= 2 and job["bytes_done"] == job["bytes_total"]
        arm = idx.platforms["linux/arm64/v8"]
        await committed(c, arm)
        with pytest.raises(VappError):
            c.service.prepull("Not A Ref")
        # The runtime's in-process fetcher: resolve, then ensure blobs with progress.
        ref = Reference.parse(f"{registry.host}/{test_images.busybox.repository}:latest")
        resolved = await c.service.fetcher.resolve(ref)
        assert resolved.digest == test_images.busybox.manifest_digest
        seen: list[tuple[int, int | None]] = []
        layer = test_images.busybox.layers[0]
        path = await c.service.fetcher.ensure_blob(ref, layer, progress=lambda d, t: seen.append((d, t)))
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == layer
        assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size


async def test_the_app_also_serves_under_uvicorn(tmp_path: Path, registry: RegistryInfo, test_images: Any) -> None:
    """Without the zero-copy extension (any ASGI server), blobs go out in chunks, warm and cold."""
    from app.api.registry import create_registry_app
    from tests.blob.harness import serve_asgi

    img = test_images.busybox
    async with (
        running_cache(tmp_path, _settings(registry)) as c,
        serve_asgi(create_registry_app(c.service)) as port,
        httpx.AsyncClient() as client,
    ):
        for _ in range(2):  # cold, then warm
            r = await client.get(f"http://127.0.0.1:{port}/v2/{img.repository}/blobs/{img.layers[0]}")
            assert r.status_code == 200
            assert "sha256:" + hashlib.sha256(r.content).hexdigest() == img.layers[0]
        r = await client.get(f"http://127.0.0.1:{port}/v2/{img.repository}/blobs/{img.layers[0]}",
                             headers={"Range": "bytes=10-19"})  # fmt: skip
        assert r.status_code == 206 and len(r.content) == 10


async def test_tls_listener_and_repeated_accept_headers(
    tmp_path: Path, registry: RegistryInfo, test_images: Any
) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from app.api.registry import create_registry_app
    from app.api.registry.server import RegistryServer

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    img = test_images.busybox
    async with running_cache(tmp_path / "c", _settings(registry)) as c:
        server = RegistryServer("tls", create_registry_app(c.service), "127.0.0.1:0",
                                tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")  # fmt: skip
        [addr] = await server.start()
        try:
            assert addr.startswith("https://")
            async with httpx.AsyncClient(verify=False) as client:
                r = await client.get(f"{addr}/v2/{img.repository}/manifests/latest",
                                     headers=[("Accept", mt.OCI_INDEX), ("Accept", img.media_type)])  # fmt: skip
                assert r.status_code == 200 and r.headers["docker-content-digest"] == img.manifest_digest
                r = await client.get(f"{addr}/v2/{img.repository}/blobs/{img.layers[0]}")
                assert r.status_code == 200 and "sha256:" + hashlib.sha256(r.content).hexdigest() == img.layers[0]
        finally:
            await server.stop(1)


async def test_configured_prepull_runs_at_start_and_jobs_survive_restart(
    tmp_path: Path, registry: RegistryInfo, test_images: Any
) -> None:
    img = test_images.busybox
    ref = f"{registry.host}/{img.repository}:latest"
    async with running_cache(tmp_path, _settings(registry, prepull=[ref])) as c:
        for _ in range(200):
            jobs = c.service.prepull_jobs()
            if jobs and jobs[0]["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert [(j["reference"], j["state"]) for j in jobs] == [(ref, "done")]
        await committed(c, *img.layers)
    async with running_cache(tmp_path, _settings(registry)) as c:
        assert [(j["reference"], j["state"]) for j in c.service.prepull_jobs()] == [(ref, "done")]
        assert all(d in c.cache.blobs for d in img.layers)
