"""App lifecycle with real containers from the suite's busybox image, through the vappc socket.

The listener serves the real ``AppService`` (see ``stack.py``); the client is the
project's ``AsyncClient``. Root only (the suite runs as root).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.config import VappcSettings
from app.errors import Category
from app.runtime.forkserver import start_forkserver
from app.services.app_types import AppStatus, Progress
from app.vappc.client import AsyncClient, RemoteError
from app.vappc.server import VappcServer
from tests.vappc.stack import AppStack, spec

pytestmark = pytest.mark.root


@pytest.fixture
async def env(tmp_path: Path, registry: Any, test_images: Any) -> AsyncIterator[dict[str, Any]]:
    forkserver = start_forkserver()
    stack = AppStack(tmp_path, registry.url, forkserver)
    apps = await stack.build()
    sock_dir = tempfile.mkdtemp(prefix="vca", dir="/tmp")
    server = VappcServer(VappcSettings(socket=Path(sock_dir) / "s"), apps)
    await server.start()
    env = {"stack": stack, "server": server, "socket": str(Path(sock_dir) / "s"),
           "image": test_images.busybox.ref, "registry": registry}
    try:
        yield env
    finally:
        await env["server"].stop(1.0)
        await stack.destroy()
        forkserver.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_start_render_setup_running_stop(env: dict[str, Any]) -> None:
    app_id = uid("web")
    events: list[Progress] = []
    body = spec(app_id, env["image"], template_vars={"port": "8080", "who": "agent"},
                config_templates=[{"template": "port={{ port }}\nby={{ who }}\n", "destination": "/etc/app/app.conf"}],
                setup_tasks=[{"name": "check-config", "command": ["grep", "-q", "port=8080", "/etc/app/app.conf"]},
                             {"name": "marker", "command": ["touch", "/tmp/setup-done"]}])
    async with AsyncClient(env["socket"]) as c:
        handle = await c.start_app(body, progress=events.append)
        assert (handle.app_id, handle.name) == (app_id, app_id)
        pcts = [e.percentage for e in events]
        assert pcts == sorted(pcts) and pcts[-1] == 100
        phases = [e.phase for e in events]
        for phase in ("pull", "create", "render_templates", "start", "setup", "running"):
            assert phase in phases, phases
        assert [e.task_name for e in events if e.task_name] == ["check-config", "marker"]
        assert await c.app_state(app_id) == AppStatus("Running")
        assert (app_id, "Running") in [(a.app_id, a.status.phase) for a in await c.list_apps()]
        # Idempotent: same spec, already running → reported at once, nothing restarted.
        again: list[Progress] = []
        started = time.monotonic()
        await c.start_app(body, progress=again.append)
        assert time.monotonic() - started < 2 and again[-1].message == "already running"
        await c.stop_app(app_id)
        assert await c.app_state(app_id) == AppStatus("Stopped")
        await c.stop_app(app_id)  # stopping a stopped app is fine


async def test_crashed_app_is_failed_with_exit_code(env: dict[str, Any]) -> None:
    app_id = uid("crash")
    async with AsyncClient(env["socket"]) as c:
        await c.start_app(spec(app_id, env["image"], command=["sh", "-c", "sleep 0.5; exit 3"]))
        for _ in range(100):
            state = await c.app_state(app_id)
            if state.phase != "Running":
                break
            await asyncio.sleep(0.1)
        assert state == AppStatus.failed("exited with code 3")
        clean = uid("clean")
        await c.start_app(spec(clean, env["image"], command=["true"]))
        for _ in range(100):
            if (state := await c.app_state(clean)).phase != "Running":
                break
            await asyncio.sleep(0.1)
        assert state == AppStatus("Stopped")


async def test_template_error_names_template_and_variable(env: dict[str, Any]) -> None:
    app_id = uid("tpl")
    body = spec(app_id, env["image"], template_vars={"a": "1"},
                config_templates=[{"template": "{{ a }} {{ missing_var }}", "destination": "/etc/x.conf"}])
    async with AsyncClient(env["socket"]) as c:
        with pytest.raises(RemoteError) as info:
            await c.start_app(body)
        err = info.value
        assert err.category is Category.CONFIG and not err.retryable and err.phase == "render_templates"
        assert "config_templates[0] (/etc/x.conf)" in err.message and "missing_var" in err.message
        with pytest.raises(RemoteError):  # nothing was recorded or created for it
            await c.app_state(app_id)
    assert await env["stack"].containers.list() == []


async def test_setup_task_timeout_fails_and_cleans_up(env: dict[str, Any]) -> None:
    app_id = uid("slow")
    body = spec(app_id, env["image"], setup_tasks=[{"name": "hang", "command": ["sleep", "30"], "timeout_secs": 1}])
    async with AsyncClient(env["socket"]) as c:
        started = time.monotonic()
        with pytest.raises(RemoteError) as info:
            await c.start_app(body)
        assert time.monotonic() - started < 20
        assert info.value.category is Category.TIMEOUT and info.value.phase == "setup:hang"
        assert info.value.retryable
        state = await c.app_state(app_id)
        assert state.phase == "Failed" and "hang" in (state.reason or "")
    assert await env["stack"].containers.list() == []


async def test_group_fail_fast_with_partial_result(env: dict[str, Any]) -> None:
    first, second, third = uid("g1"), uid("g2"), uid("g3")
    missing = f"{env['registry'].host}/test/does-not-exist:latest"
    group = {"group_name": "grp", "specs": [spec(first, env["image"], name="one"),
                                            spec(second, missing, name="two"),
                                            spec(third, env["image"], name="three")]}
    events: list[Progress] = []
    async with AsyncClient(env["socket"]) as c:
        result = await c.start_group(group, progress=events.append)
        assert [h.app_id for h in result.handles] == [first]
        assert result.error is not None and result.error.phase is not None
        assert result.error.phase.startswith("spec[1]:pull"), result.error.phase
        assert result.error.category is Category.IMAGE
        assert {e.instance_name for e in events} == {"one", "two"}
        for name in ("one", "two"):
            pcts = [e.percentage for e in events if e.instance_name == name]
            assert pcts == sorted(pcts)
        assert await c.app_state(first) == AppStatus("Running")
        assert (await c.app_state(second)).phase == "Failed"
        with pytest.raises(RemoteError):
            await c.app_state(third)


async def test_quick_commands_answer_during_a_slow_start(env: dict[str, Any]) -> None:
    app_id = uid("busy")
    body = spec(app_id, env["image"], setup_tasks=[{"name": "wait", "command": ["sleep", "3"]}])
    async with AsyncClient(env["socket"]) as starter, AsyncClient(env["socket"]) as other:
        start = asyncio.create_task(starter.start_app(body))
        for _ in range(100):
            try:
                if (await other.app_state(app_id)).phase == "Starting":
                    break
            except RemoteError:
                pass
            await asyncio.sleep(0.05)
        worst = 0.0
        for call in (other.ping, other.list_apps, lambda: other.app_state(app_id),
                     starter.ping, lambda: starter.app_state(app_id)):
            t0 = time.monotonic()
            await call()
            worst = max(worst, time.monotonic() - t0)
        assert not start.done(), "the start should still be in its setup task"
        assert worst < 1.0, worst
        await start
        assert await other.app_state(app_id) == AppStatus("Running")


async def test_apps_survive_a_restart(env: dict[str, Any]) -> None:
    stack: AppStack = env["stack"]
    app_id = uid("keep")
    async with AsyncClient(env["socket"]) as c:
        await c.start_app(spec(app_id, env["image"]))
    pid_before = (await stack.containers.inspect(f"vapp-app-{app_id}")).pid
    await env["server"].stop(1.0)
    apps = await stack.restart()
    server = VappcServer(VappcSettings(socket=Path(env["socket"])), apps)
    await server.start()
    env["server"] = server
    async with AsyncClient(env["socket"]) as c:
        assert await c.app_state(app_id) == AppStatus("Running")
        info = await stack.containers.inspect(f"vapp-app-{app_id}")
        assert info.running and info.pid == pid_before
        assert [a.app_id for a in await c.list_apps()] == [app_id]
        await c.stop_app(app_id)
        assert await c.app_state(app_id) == AppStatus("Stopped")


async def test_changed_spec_replaces_the_app(env: dict[str, Any]) -> None:
    app_id = uid("chg")
    async with AsyncClient(env["socket"]) as c:
        await c.start_app(spec(app_id, env["image"], env=["V=1"]))
        await c.start_app(spec(app_id, env["image"], env=["V=2"],
                               setup_tasks=[{"name": "v2", "command": ["sh", "-c", "test \"$V\" = 2"]}]))
        assert await c.app_state(app_id) == AppStatus("Running")
    rows = [i for i in await env["stack"].containers.list() if i.id == f"vapp-app-{app_id}"]
    assert len(rows) == 1 and rows[0].running


async def test_group_members_share_a_network_namespace(env: dict[str, Any]) -> None:
    first, second = uid("n1"), uid("n2")
    group = {"group_name": "net", "shared_network": True,
             "specs": [spec(first, env["image"], network="none"), spec(second, env["image"])]}
    async with AsyncClient(env["socket"]) as c:
        result = await c.start_group(group)
        assert result.error is None, result.error
    svc = env["stack"].containers
    a, b = (await svc.inspect(f"vapp-app-{first}")), (await svc.inspect(f"vapp-app-{second}"))
    assert a.pid and b.pid
    assert os.readlink(f"/proc/{a.pid}/ns/net") == os.readlink(f"/proc/{b.pid}/ns/net")
    assert os.readlink(f"/proc/{a.pid}/ns/net") != os.readlink("/proc/self/ns/net")


async def test_admin_rest_apps_routes(env: dict[str, Any]) -> None:
    """/v1/apps over the same service: streamed start, list, state, stop, errors mapped once."""
    from types import SimpleNamespace

    import httpx

    from app.api.http.app import create_admin_app
    from app.api.http.routes_apps import router

    node = SimpleNamespace(apps=env["stack"].apps)
    admin = create_admin_app(node, admin_token="t0k", routers=[router])
    app_id = uid("rest")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admin), base_url="http://admin",
                                 headers={"Authorization": "Bearer t0k"}, timeout=60) as http:
        r = await http.post("/v1/apps?stream=true", json=spec(app_id, env["image"]))
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.text.splitlines()]
        assert lines[-1] == {"msg": "Ok", "type": "AppHandle", "data": {"app_id": app_id, "name": app_id}}
        assert all(x["msg"] == "Progress" for x in lines[:-1]) and len(lines) > 3
        assert (await http.get(f"/v1/apps/{app_id}")).json() == {"app_id": app_id, "state": "Running"}
        assert {"app_id": app_id, "name": app_id, "state": "Running"} in (await http.get("/v1/apps")).json()
        r = await http.post(f"/v1/apps/{app_id}/stop?grace=0")
        assert r.status_code == 200 and r.json()["state"] == "Stopped"
        r = await http.post("/v1/apps", json=spec(uid("bad"), env["image"], template_vars={},
                                                  config_templates=[{"template": "{{ x }}", "destination": "/x"}]))
        assert r.status_code == 400 and r.json()["error"]["category"] == "Config"
        assert (await http.delete("/v1/apps/nope")).status_code == 404
