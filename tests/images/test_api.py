"""/v1/images routes (through the real admin app) and the ``vapp-core images`` CLI."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from app.api.http.app import create_admin_app
from app.api.http.routes_images import router
from app.cli_images import add_parser, render_layer, render_list
from app.config import Settings
from app.runtime.images.fetch import RegistryFetcher
from tests.helpers.ports import free_port
from tests.images.conftest import PullEnv
from tests.images.test_service import service

TOKEN = "test-token"


def admin_app(svc):  # type: ignore[no-untyped-def]
    return create_admin_app(SimpleNamespace(images=svc), admin_token=TOKEN, routers=[router])


async def test_routes(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    app = admin_app(service(pull_env))
    transport = httpx.ASGITransport(app=app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as c:
        assert (await c.get("/v1/images", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await c.get("/v1/images")).json() == []
        r = await c.post("/v1/images/pull", json={"reference": test_images.busybox.ref})
        assert r.status_code == 200 and r.json()["id"] == test_images.busybox.config_digest
        lines = []
        async with c.stream("POST", "/v1/images/pull?stream=true", json={"reference": test_images.multilayer.ref}) as s:
            async for line in s.aiter_lines():
                if line:
                    lines.append(json.loads(line))
        assert lines[-1]["msg"] == "Ok"
        assert lines[-1]["image"]["id"] == test_images.multilayer.config_digest
        for digest in test_images.multilayer.layers:
            done = [m["done"] for m in lines if m.get("digest") == digest and m["status"] == "downloading"]
            assert done == sorted(done) and done
        got = (await c.get(f"/v1/images/{test_images.multilayer.ref}")).json()
        assert got["config"]["rootfs"]["diff_ids"] and got["tags"] == [test_images.multilayer.ref]
        assert len((await c.get("/v1/images")).json()) == 2
        r = await c.post("/v1/images/pull", json={"reference": "Not A Ref"})
        assert r.status_code == 400 and r.json()["error"]["kind"] == "invalid_argument"
        r = await c.get("/v1/images/sha256:" + "0" * 64)
        assert r.status_code == 404
        r = await c.delete(f"/v1/images/{test_images.busybox.ref}")
        assert r.status_code == 200 and test_images.busybox.config_digest in r.json()["removed"]
        assert (await c.delete(f"/v1/images/{test_images.busybox.ref}")).status_code == 404
        async with c.stream(
            "POST", "/v1/images/pull?stream=true", json={"reference": f"{test_images.busybox.ref[:-7]}:missing"}
        ) as s:
            last = [json.loads(x) async for x in s.aiter_lines() if x][-1]
        assert last["msg"] == "Error" and last["kind"] == "not_found"


def test_render() -> None:
    line = render_layer({"digest": "sha256:" + "ab" * 32, "status": "downloading", "done": 50, "total": 100}, 10)
    assert "[=====>    ]" in line and "abababababab" in line
    rows = render_list([{"id": "sha256:" + "c" * 64, "tags": ["r/x:1"], "size": 2_500_000, "platform": "linux/amd64"}])
    assert rows[0].startswith("IMAGE ID") and "cccccccccccc  r/x:1  2.5MB  linux/amd64" in rows[1]


@pytest.fixture
def served(pull_env: PullEnv, registry):  # type: ignore[no-untyped-def]
    # The server runs its own loop in a thread: give it a fetcher of its own, closed in that loop.
    fetcher = RegistryFetcher(pull_env.store, registry.url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(admin_app(service(pull_env, fetcher)), host="127.0.0.1", port=port, log_level="warning")
    )

    async def main() -> None:
        try:
            await server.serve()
        finally:
            await fetcher.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def run_cli(url: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["images", "--admin-url", url, "--token", TOKEN, *argv])
    out = io.StringIO()
    return args.func(args, out), out.getvalue()


def test_cli(served: str, test_images, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, out = run_cli(served, "pull", test_images.multilayer.ref)
    assert code == 0 and f"pulled {test_images.multilayer.ref}" in out
    for digest in test_images.multilayer.layers:
        assert digest[7:19] in out, "a progress line per layer"
    code, out = run_cli(served, "ls")
    assert code == 0 and test_images.multilayer.ref in out
    code, out = run_cli(served, "tag", test_images.multilayer.ref, "example.com/x:y")
    code, out = run_cli(served, "inspect", "example.com/x:y")
    assert json.loads(out)["id"] == test_images.multilayer.config_digest
    code, out = run_cli(served, "rm", "example.com/x:y", test_images.multilayer.ref)
    assert code == 0 and test_images.multilayer.config_digest in out
    code, _ = run_cli(served, "rm", "nope:latest")
    assert code == 1
    code, out = run_cli(served, "pull", "--json", test_images.busybox.ref)
    assert code == 0 and json.loads(out.splitlines()[-1])["msg"] == "Ok"
    assert Settings  # settings module importable for the default admin URL path
