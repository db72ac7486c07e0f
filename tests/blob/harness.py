"""Run the cache in-process (uvicorn on a free port in the test's loop) and helpers around it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn

from app.api.registry import create_registry_app
from app.api.registry.server import RegistryServer
from app.blob.cache import BlobCache
from app.config import BlobSettings, UpstreamSettings
from app.content import LocalContentStore
from app.oci.manifest import Platform
from app.services.cache import CacheService
from app.state.db import open_database
from tests.helpers.ports import free_port
from tests.helpers.registry import RegistryInfo, start_registry


@dataclasses.dataclass
class RunningCache:
    service: CacheService
    cache: BlobCache
    store: LocalContentStore
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def blob_settings(upstreams: dict[str, dict[str, Any]] | None = None, **kw: Any) -> BlobSettings:
    ups = {k: UpstreamSettings(**v) for k, v in (upstreams or {}).items()}
    return BlobSettings(upstreams=ups, **kw)


def local_upstream(reg: RegistryInfo | str, **kw: Any) -> dict[str, Any]:
    host = reg if isinstance(reg, str) else reg.host
    return {"url": f"http://{host}", **kw}


@contextlib.asynccontextmanager
async def running_cache(root: Path, settings: BlobSettings, **app_kw: Any) -> AsyncIterator[RunningCache]:
    root.mkdir(parents=True, exist_ok=True)
    db = open_database(f"sqlite:///{root / 'vapp.db'}")
    store = LocalContentStore(root / "content")
    cache = BlobCache(settings, store, db)
    service = CacheService(cache, platform=Platform("linux", "amd64"))
    await service.start()
    app = create_registry_app(service, **app_kw)
    server = RegistryServer("registry", app, "127.0.0.1:0")
    await server.start()
    try:
        yield RunningCache(service, cache, store, server.port)
    finally:
        await server.stop(2)
        await service.close()
        db.close()


@contextlib.contextmanager
def extra_registry(workdir: Path, **kw: Any) -> Any:
    info = start_registry(workdir, **kw)
    try:
        yield info
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(info.pid, signal.SIGKILL)


async def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode or 0, out, err)


async def skopeo_copy(src: str, dest: str, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess[bytes]:
    return await run("skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", *extra,
                     src, dest, timeout=timeout)  # fmt: skip


async def push_layout(layout: Path, dest: str) -> None:
    """Push a test image's OCI layout into another registry (``dest`` = host/repo:tag)."""
    res = await skopeo_copy(f"oci:{layout}:latest", f"docker://{dest}", "--all")
    assert res.returncode == 0, res.stderr.decode()


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True  # 401 from an auth-enabled registry is an answer
    except OSError:
        return False


@contextlib.contextmanager
def auth_registry(workdir: Path, auth: dict[str, Any]) -> Any:
    """docker-registry with an ``auth`` section (htpasswd or token) on a free port; killed on exit."""
    import functools
    import json

    from tests.helpers.procs import spawn_detached, wait_until
    from tests.helpers.registry import registry_config

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "storage").mkdir(exist_ok=True)
    port = free_port()
    config = registry_config(port, workdir / "storage")
    config["auth"] = auth
    (workdir / "config.yml").write_text(json.dumps(config))
    proc = spawn_detached(["docker-registry", "serve", str(workdir / "config.yml")], workdir / "registry.log")
    try:
        wait_until(functools.partial(_answers, f"http://127.0.0.1:{port}"), timeout=15, what="auth registry",
                   proc=proc, log_path=workdir / "registry.log")  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[int]:
    """Serve a small ASGI app (token server) on a free loopback port in this loop."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None,
                                           access_log=False, lifespan="off"))  # fmt: skip
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    assert server.started
    try:
        yield server.config.port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


async def committed(c: RunningCache, *digests: str, timeout: float = 10.0) -> None:
    """Wait until the blobs are committed and recorded: a client's response can complete once the
    bytes are verified, a moment before the fsync + rename + metadata insert finish."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(d in c.cache.blobs and c.store.exists(d) and not c.cache.flights.in_flight(d) for d in digests):
        assert asyncio.get_running_loop().time() < deadline, f"not committed: {digests}"
        await asyncio.sleep(0.01)


async def settled(c: RunningCache, timeout: float = 10.0) -> None:
    """Wait until no blob is being served or downloaded (handlers release a moment after the
    client has read its last byte)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while c.cache._serving or c.cache.flights.active():
        assert asyncio.get_running_loop().time() < deadline, "cache did not settle"
        await asyncio.sleep(0.01)
