"""The container service with the network manager as its hook: real busybox containers on a bridge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime.forkserver import ForkServer
from app.runtime.oci.spec import ContainerSpec
from app.services.container_types import CreateRequest
from app.services.containers import ContainerService
from app.state.db import open_database
from tests.helpers.ports import free_port
from tests.helpers.users import UnprivUser, run_as
from tests.network.conftest import BridgeEnv
from tests.runtime.conftest import busybox_image, forkserver, rootfs, user_rootfs  # noqa: F401 (fixtures)

pytestmark = pytest.mark.root


@pytest.fixture
async def net_service(tmp_path: Path, forkserver: ForkServer, bridge_env: BridgeEnv  # noqa: F811
                      ) -> AsyncIterator[tuple[ContainerService, BridgeEnv]]:
    if os.geteuid() != 0:
        raise RuntimeError("needs root (the suite runs as root)")
    short = Path(f"/tmp/vnt-{uuid.uuid4().hex[:8]}")
    db = open_database(f"sqlite:///{tmp_path / 'svc.db'}")
    svc = ContainerService(db, forkserver, state_dir=tmp_path / "state", run_dir=short,
                           network=bridge_env.manager())
    yield svc, bridge_env
    for info in await svc.list():
        with contextlib.suppress(Exception):
            await svc.remove(info.id, force=True)
    await svc.close()
    db.close()
    shutil.rmtree(short, ignore_errors=True)


async def test_pod_container_publishes_a_port(net_service: tuple[ContainerService, BridgeEnv],
                                              rootfs: Path) -> None:  # noqa: F811
    svc, env = net_service
    port = free_port()
    script = "mkdir -p /www && echo served-by-the-container > /www/index.html && exec httpd -f -p 80 -h /www"
    spec = ContainerSpec(id=f"n-{uuid.uuid4().hex[:8]}", command=("sh", "-c", script), network="pod")
    info = await svc.create(CreateRequest(spec=spec, rootfs=str(rootfs), ports=({"host_port": port,
                                                                                 "container_port": 80},)))
    await svc.start(info.id)
    body = ""
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                body = resp.read().decode()
                break
        except OSError:
            await asyncio.sleep(0.05)
    assert body == "served-by-the-container\n"
    veths = subprocess.run(["ip", "-br", "link", "show", "master", env.settings.bridge], capture_output=True,
                           text=True).stdout
    assert veths.strip()
    await svc.remove(info.id, force=True)
    veths = subprocess.run(["ip", "-br", "link", "show", "master", env.settings.bridge], capture_output=True,
                           text=True).stdout
    assert veths.strip() == ""


def test_rootless_pod_container_on_pasta(unpriv_user: UnprivUser, busybox_image: Any) -> None:  # noqa: F811
    work = Path(f"/tmp/vnt-u-{uuid.uuid4().hex[:8]}")
    work.mkdir(mode=0o755)
    os.chown(work, unpriv_user.uid, unpriv_user.gid)
    try:
        rootfs = user_rootfs(busybox_image[0], work / "rootfs", unpriv_user)
        port = free_port()
        proc = run_as(unpriv_user, [sys.executable, "-m", "tests.network.rootless_container", str(work),
                                    str(rootfs), str(port)], timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["attachment"]["driver"] == "pasta" and out["attachment"]["helper_pids"]
        assert out["body"] == "rootless-pod\n"
        assert out["helpers_alive_after"] == [] and out["attachments_after"] == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _log_text(path: str) -> str:
    """The content of a CRI-format log (``<ts> <stream> <P|F> <line>``)."""
    return "".join(line.split(" ", 3)[3] if line.count(" ") >= 3 else "" for line in
                   Path(path).read_text().splitlines(keepends=True))


@pytest.mark.parametrize("mode", ["host", "pod", "none"])
async def test_every_mode_gets_hosts_resolv_and_hostname(net_service: tuple[ContainerService, BridgeEnv],
                                                         rootfs: Path, mode: str) -> None:  # noqa: F811
    svc, env = net_service
    env.settings.extra_hosts = {"docker-proxy.internal": "10.0.2.2"}
    svc.network = env.manager()
    cid = f"e-{uuid.uuid4().hex[:8]}"
    spec = ContainerSpec(id=cid, hostname="web-1", network=mode,
                         command=("sh", "-c", "cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---; hostname"))
    info = await svc.create(CreateRequest(spec=spec, rootfs=str(rootfs)))
    await svc.start(cid)
    assert await svc.wait(cid, timeout=30) == 0
    hosts, resolv, hostname = _log_text(info.log_path).split("---\n")
    assert "10.0.2.2\tdocker-proxy.internal" in hosts
    assert "localhost" in hosts
    if mode == "host":
        assert Path("/etc/hosts").read_text().splitlines()[0] in hosts  # the node's own entries are kept
    else:
        assert "web-1" in hosts
    assert hostname.strip() == "web-1"
    if mode == "pod":
        assert "nameserver" in resolv  # the host's resolvers, loopback ones replaced
    files = svc.network.files(cid)  # type: ignore[attr-defined]
    assert all(Path(p).exists() for p in files.values())
    await svc.remove(cid, force=True)
    assert not any(Path(p).exists() for p in files.values())
