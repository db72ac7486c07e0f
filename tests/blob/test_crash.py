"""kill -9 of the cache during a download: the restarted cache has a consistent store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import httpx

from tests.blob.fakeupstream import FakeUpstream
from tests.blob.harness import blob_settings, committed, running_cache
from tests.helpers.ports import free_port

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


async def test_kill_9_during_download_then_restart(tmp_path: Path) -> None:
    small, big = os.urandom(MiB), os.urandom(16 * MiB)
    async with FakeUpstream() as up:
        small_d, big_d = up.add_blob(small), up.add_blob(big)
        up.behaviour.pause_at[big_d] = 6 * MiB
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.blob.cacheproc", str(tmp_path), up.url, str(port), cwd=REPO_ROOT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(600):  # the subprocess imports the app: slow on a loaded machine
                    try:
                        await client.get(f"{url}/v2/")
                        break
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)
                else:
                    raise AssertionError("cache subprocess did not start")
                assert (await client.get(f"{url}/v2/app/blobs/{small_d}")).content == small
                pulling = asyncio.create_task(client.get(f"{url}/v2/app/blobs/{big_d}"))
                await asyncio.wait_for(up.paused.wait(), 20)
                await asyncio.sleep(0.2)  # let the cache write what it received
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                with contextlib.suppress(httpx.HTTPError):
                    await pulling
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        content = tmp_path / "content"
        assert not (content / "sha256" / big_d.split(":")[1]).exists()  # nothing partial is visible
        assert any((content / "ingest").iterdir())  # the partial download was on disk
        up.behaviour.pause_at.clear()
        settings = blob_settings({"fake.test": {"url": up.url}}, default_registry="fake.test")
        async with running_cache(tmp_path, settings) as c, httpx.AsyncClient(timeout=30) as client:
            assert list((content / "ingest").iterdir()) == []  # cleaned at start
            files = {i.digest for i in c.store.walk()}
            assert files == set(c.cache.blobs) == {small_d}  # metadata matches the files
            r = await client.get(f"{c.url}/v2/app/blobs/{big_d}")
            assert r.status_code == 200 and r.content == big
            await committed(c, big_d)
            assert c.store.read(big_d) == big
