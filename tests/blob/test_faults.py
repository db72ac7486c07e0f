"""Injected upstream faults: wrong bytes, a connection cut mid-blob, no Range support, 5xx/429,
schema 1, a slow or dead mirror, stale serving, and single-flight stream-through."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import httpx
import pytest

from app.blob import metrics
from app.oci import mediatypes as mt
from tests.blob.fakeupstream import FakeUpstream
from tests.blob.harness import blob_settings, committed, running_cache
from tests.helpers.ports import free_port

MiB = 1024 * 1024


def _settings(*fakes: FakeUpstream, primary: FakeUpstream | None = None, **kw: object) -> object:
    main = primary or fakes[0]
    mirrors = [f.url for f in fakes if f is not main]
    return blob_settings({"fake.test": {"url": main.url, "mirrors": mirrors, **kw}}, default_registry="fake.test")


def _manifest(config: str, layer: str, size: int) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config, "size": 2},
        "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": layer, "size": size}],
    }).encode()  # fmt: skip


async def test_wrong_bytes_fail_the_client_and_cache_nothing(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    async with FakeUpstream() as up:
        digest = up.add_blob(data)
        up.behaviour.corrupt.add(digest)
        async with running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient(timeout=30) as client:
            got = b""
            with pytest.raises(httpx.HTTPError):  # the body is cut short: never a complete wrong blob
                async with client.stream("GET", f"{c.url}/v2/app/blobs/{digest}") as r:
                    async for chunk in r.aiter_raw():
                        got += chunk
            assert len(got) < len(data)
            assert not c.store.exists(digest)
            assert digest not in c.cache.blobs
            assert c.store.ingests() == []
            up.behaviour.corrupt.clear()
            r = await client.get(f"{c.url}/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data
            assert up.requests[("GET", f"/v2/app/blobs/{digest}")] == 2


@pytest.mark.parametrize("ranged", [True, False])
async def test_upstream_dying_mid_blob_resumes(tmp_path: Path, ranged: bool) -> None:
    data = os.urandom(4 * MiB)
    async with FakeUpstream() as up:
        digest = up.add_blob(data)
        up.behaviour.cut_after[digest] = MiB + 12345
        up.behaviour.ignore_range = not ranged
        async with running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient(timeout=30) as client:
            r = await client.get(f"{c.url}/v2/app/blobs/{digest}")
            assert r.status_code == 200
            assert r.content == data
            await committed(c, digest)
            assert c.store.read(digest) == data
            assert up.requests[("GET", f"/v2/app/blobs/{digest}")] == 2
            assert up.ranges and up.ranges[0].startswith("bytes=")
            assert int(up.ranges[0][6:].rstrip("-")) > 0


async def test_single_flight_streams_to_every_waiter(tmp_path: Path) -> None:
    data = os.urandom(8 * MiB)
    async with FakeUpstream() as up:
        digest = up.add_blob(data)
        up.behaviour.pause_at[digest] = 4 * MiB
        async with running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient(timeout=30) as client:
            url = f"{c.url}/v2/app/blobs/{digest}"
            bodies: dict[int, bytes] = {0: b"", 1: b"", 2: b""}
            first_half = asyncio.Event()

            async def pull(i: int, leave_early: bool = False) -> None:
                async with client.stream("GET", url) as r:
                    assert r.status_code == 200
                    assert r.headers["content-length"] == str(len(data))
                    async for chunk in r.aiter_raw():
                        bodies[i] += chunk
                        if len(bodies[0]) >= 3 * MiB and len(bodies[1]) >= 3 * MiB:
                            first_half.set()
                        if leave_early and len(bodies[i]) >= MiB:
                            return  # this client disconnects

            tasks = [asyncio.create_task(pull(0)), asyncio.create_task(pull(1)),
                     asyncio.create_task(pull(2, leave_early=True))]  # fmt: skip
            # Both waiters get bytes while the upstream is still paused at 4 MiB (not after the whole blob).
            await asyncio.wait_for(first_half.wait(), 20)
            assert not c.store.exists(digest)
            await asyncio.wait_for(up.paused.wait(), 5)
            assert c.cache.stats()["downloads"][0]["waiters"] >= 2
            up.release.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert bodies[0] == data and bodies[1] == data
            assert up.requests[("GET", f"/v2/app/blobs/{digest}")] == 1
            await committed(c, digest)
            assert c.store.read(digest) == data
            assert metrics.SINGLEFLIGHT_WAITERS._value.get() == 0


@pytest.mark.parametrize(("status", "code"), [(503, "UNAVAILABLE"), (429, "TOOMANYREQUESTS"), (500, "UNAVAILABLE")])
async def test_upstream_errors_map_to_registry_codes(tmp_path: Path, status: int, code: str) -> None:
    async with FakeUpstream() as up:
        up.behaviour.status = status
        async with running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient(timeout=30) as client:
            r = await client.get(f"{c.url}/v2/app/blobs/sha256:{'a' * 64}")
            assert r.status_code == (429 if status == 429 else 503)
            assert r.json()["errors"][0]["code"] == code
            r = await client.get(f"{c.url}/v2/app/manifests/latest")
            assert r.json()["errors"][0]["code"] == code


async def test_not_found_upstream(tmp_path: Path) -> None:
    async with FakeUpstream() as up, running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient() as client:
        r = await client.get(f"{c.url}/v2/app/manifests/nope")
        assert (r.status_code, r.json()["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")
        r = await client.head(f"{c.url}/v2/app/blobs/sha256:{'b' * 64}")
        assert r.status_code == 404
        r = await client.get(f"{c.url}/v2/app/blobs/sha256:{'b' * 64}")
        assert (r.status_code, r.json()["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")


async def test_schema1_is_refused_clearly(tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        up.add_manifest("old", "v1", b'{"schemaVersion": 1, "name": "old", "fsLayers": []}',
                        mt.DOCKER_MANIFEST_V1_SIGNED)  # fmt: skip
        async with running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient() as client:
            r = await client.get(f"{c.url}/v2/old/manifests/v1")
            assert r.status_code == 400
            err = r.json()["errors"][0]
            assert err["code"] == "MANIFEST_INVALID" and "schema 1" in err["message"]


async def test_stale_tag_served_when_upstream_fails_and_head_revalidates(tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        cfg = up.add_blob(b"{}")
        layer = up.add_blob(b"layer")
        body = _manifest(cfg, layer, 5)
        digest = up.add_manifest("app", "v1", body, mt.OCI_MANIFEST)
        settings = _settings(up, tag_ttl_seconds=0.0)
        async with running_cache(tmp_path, settings) as c, httpx.AsyncClient() as client:
            url = f"{c.url}/v2/app/manifests/v1"
            r = await client.get(url)
            assert r.status_code == 200 and r.content == body
            r = await client.get(url)  # TTL 0: revalidated with HEAD, body from cache
            assert r.content == body
            assert up.requests[("GET", "/v2/app/manifests/v1")] == 1
            assert up.requests[("HEAD", "/v2/app/manifests/v1")] == 1
            stale_before = metrics.STALE_SERVED.labels(upstream="fake.test")._value.get()
            up.behaviour.status = 503
            r = await client.get(url)
            assert r.status_code == 200 and r.content == body
            assert r.headers["docker-content-digest"] == digest
            assert metrics.STALE_SERVED.labels(upstream="fake.test")._value.get() == stale_before + 1
            await up.stop()  # unreachable: still served
            r = await client.get(url)
            assert r.status_code == 200 and r.content == body
            r = await client.get(f"{c.url}/v2/app/manifests/other")
            assert r.status_code == 503


async def test_tag_moved_upstream_is_refetched_and_deleted_tag_is_unknown(tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        cfg = up.add_blob(b"{}")
        one = _manifest(cfg, up.add_blob(b"one"), 3)
        two = _manifest(cfg, up.add_blob(b"two"), 3)
        up.add_manifest("app", "v1", one, mt.OCI_MANIFEST)
        async with running_cache(tmp_path, _settings(up, tag_ttl_seconds=0.0)) as c, httpx.AsyncClient() as client:
            url = f"{c.url}/v2/app/manifests/v1"
            assert (await client.get(url)).content == one
            up.add_manifest("app", "v1", two, mt.OCI_MANIFEST)
            assert (await client.get(url)).content == two
            del up.manifests[("app", "v1")]
            r = await client.get(url)
            assert (r.status_code, r.json()["errors"][0]["code"]) == (404, "MANIFEST_UNKNOWN")


async def test_slow_or_dead_mirror_falls_through(tmp_path: Path) -> None:
    data = os.urandom(MiB)
    dead = f"http://127.0.0.1:{free_port()}"
    async with FakeUpstream() as slow, FakeUpstream() as primary:
        for u in (slow, primary):
            digest = u.add_blob(data)
        slow.behaviour.header_delay = 5.0
        settings = blob_settings({"fake.test": {"url": primary.url, "mirrors": [dead, slow.url]}},
                                 default_registry="fake.test")  # fmt: skip
        async with running_cache(tmp_path, settings) as c, httpx.AsyncClient(timeout=30) as client:
            t0 = time.monotonic()
            r = await client.get(f"{c.url}/v2/app/blobs/{digest}")
            assert r.status_code == 200 and r.content == data
            assert time.monotonic() - t0 < 4.5  # hedged: the slow mirror did not hold us for 5 s
            assert primary.requests[("GET", f"/v2/app/blobs/{digest}")] == 1
            health = c.service.health()["fake.test"]
            dead_ep = next(e for e in health if e["url"] == dead)
            assert dead_ep["failures"] >= 1
            # The dead mirror is scored down: it is no longer tried first.
            assert health[0]["url"] != dead


async def test_manifest_file_removed_behind_our_back_is_refetched(tmp_path: Path) -> None:
    async with FakeUpstream() as up:
        body = _manifest(up.add_blob(b"{}"), up.add_blob(b"x"), 1)
        digest = up.add_manifest("app", "v1", body, mt.OCI_MANIFEST)
        async with running_cache(tmp_path, _settings(up)) as c, httpx.AsyncClient() as client:
            assert (await client.get(f"{c.url}/v2/app/manifests/v1")).content == body
            await committed(c, digest)
            c.store.delete(digest)
            c.cache.manifests.forget(digest)
            r = await client.get(f"{c.url}/v2/app/manifests/v1")
            assert r.status_code == 200 and r.content == body
            assert up.requests[("GET", "/v2/app/manifests/v1")] == 2
