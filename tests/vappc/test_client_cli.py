"""The async and sync clients and the vappc CLI against a real listener (fake backend)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import VappcSettings
from app.errors import Category
from app.services.app_types import AppStatus, Progress
from app.vappc.client import AsyncClient, Client, ConnectionLost, RemoteError
from app.vappc.server import VappcServer
from tests.vappc.fake import FakeBackend

SPEC = {"app_id": "a1", "name": "one", "image": "busybox"}
VAPPC = [sys.executable, "-m", "app.vappc.cli"]


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeBackend, str]]:
    tmp = tempfile.mkdtemp(prefix="vc", dir="/tmp")
    path = os.path.join(tmp, "s")
    backend = FakeBackend()
    server = VappcServer(VappcSettings(socket=Path(path)), backend)
    await server.start()
    yield backend, path
    backend.release.set()
    await server.stop(1.0)
    shutil.rmtree(tmp, ignore_errors=True)


async def test_async_client_typed_results_and_errors(served: tuple) -> None:
    backend, path = served
    backend.progress_count = 20
    seen: list[Progress] = []
    async with AsyncClient(path) as c:
        await c.ping()
        assert (await c.version())["protocol"] == 2
        handle = await c.start_app(SPEC, progress=seen.append)
        assert (handle.app_id, handle.name) == ("a1", "one")
        assert len(seen) == 21 and [e.percentage for e in seen] == sorted(e.percentage for e in seen)
        assert await c.app_state("a1") == AppStatus("Running")
        assert [(a.app_id, a.status.phase) for a in await c.list_apps()] == [("a1", "Running")]
        assert await c.interface_ip("lo") == "127.0.0.1" and await c.interface_ip("eth9") is None
        assert await c.update_dns_records([{"ip": "1.2.3.4", "hostname": "a"}]) == 1
        assert await c.diagnostic() == {"fake": "yes"}
        with pytest.raises(RemoteError) as info:
            await c.start_app({**SPEC, "image": "fail"})
        assert info.value.category is Category.IMAGE and info.value.phase == "pull" and info.value.retryable
        with pytest.raises(RemoteError) as info:
            await c.start_app({**SPEC, "bogus": 1})
        assert info.value.category is Category.CONFIG and "bogus" in info.value.message
        group = await c.start_group({"group_name": "g", "specs": [SPEC, {**SPEC, "app_id": "b", "image": "fail"}]})
        assert [h.app_id for h in group.handles] == ["a1"] and group.error is not None
        assert group.error.phase == "spec[1]:pull"


async def test_async_client_multiplexes_one_connection(served: tuple) -> None:
    backend, path = served
    async with AsyncClient(path) as c:
        start = asyncio.create_task(c.start_app({**SPEC, "image": "slow"}))
        await asyncio.wait_for(backend.started_slow.wait(), 5)
        # Same connection, while the start blocks: answered at once.
        assert await asyncio.wait_for(c.app_state("a1"), 1) == AppStatus("Starting")
        await asyncio.wait_for(c.ping(), 1)
        backend.release.set()
        assert (await start).app_id == "a1"


async def test_async_client_timeout_and_lost_connection(served: tuple) -> None:
    _backend, path = served
    async with AsyncClient(path) as c:
        with pytest.raises(Exception) as info:
            await c.start_app({**SPEC, "image": "slow"}, timeout=0.2)
        assert getattr(info.value, "category", None) is Category.TIMEOUT
    with pytest.raises(ConnectionLost):
        await AsyncClient(path + ".missing").connect()


def _sync_calls(path: str) -> tuple:
    with Client(path) as c:
        c.ping()
        handle = c.start_app(SPEC)
        return handle.app_id, c.app_state("a1"), len(c.list_apps())


async def test_sync_client(served: tuple) -> None:
    _, path = served
    app_id, status, count = await asyncio.to_thread(_sync_calls, path)
    assert (app_id, status, count) == ("a1", AppStatus("Running"), 1)


async def _cli(path: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *VAPPC, "--socket", path, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_commands(served: tuple) -> None:
    backend, path = served
    backend.progress_count = 4
    assert await _cli(path, "ping") == (0, "pong\n", "")
    rc, out, err = await _cli(path, "start", "-", stdin=json.dumps(SPEC).encode())
    assert rc == 0 and out == "a1 (one) Running\n"
    assert "step 3" in err and "pull:" in err  # progress lines (not a tty)
    rc, out, _ = await _cli(path, "ls")
    assert rc == 0 and out.splitlines()[0].split() == ["APP", "ID", "NAME", "STATE"]
    assert out.splitlines()[1].split() == ["a1", "one", "Running"]
    rc, out, _ = await _cli(path, "--json", "state", "a1")
    assert rc == 0 and json.loads(out) == "Running"
    assert (await _cli(path, "stop", "a1"))[0] == 0
    assert (await _cli(path, "state", "a1"))[1] == "Stopped\n"
    rc, _, err = await _cli(path, "state", "nope")
    assert rc == 75 and "Runtime" in err and "nope" in err
    rc, out, _ = await _cli(path, "--json", "dns", "-r", "1.2.3.4=a.b", "-r", "1.2.3.5=c")
    assert rc == 0 and json.loads(out) == {"count": 2}
    rc, out, _ = await _cli(path, "ip", "lo")
    assert (rc, out) == (0, "127.0.0.1\n")
    rc, out, _ = await _cli(path, "diag")
    assert rc == 0 and "== fake" in out
    rc, _, err = await _cli(path, "start", "-", stdin=json.dumps({**SPEC, "image": "fail"}).encode())
    assert rc == 75 and "Image (pull): pull failed: boom" in err
    rc, _, err = await _cli(path, "start", "-", stdin=json.dumps({**SPEC, "x": 1}).encode())
    assert rc == 1 and "Config" in err and "x: unknown field" in err
    rc, _, err = await _cli(path + ".missing", "ping")
    assert rc == 75 and "cannot connect" in err


async def test_async_iterator_form(served: tuple) -> None:
    backend, path = served
    backend.progress_count = 5
    async with AsyncClient(path) as c:
        msgs = [m async for m in c.stream("StartApp", {"spec": SPEC})]
    kinds = [type(m).__name__ for m in msgs]
    assert kinds == ["ProgressMsg"] * 6 + ["OkMsg"]
    assert msgs[-1].data == {"app_id": "a1", "name": "one"}
