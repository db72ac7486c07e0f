"""etcd as a container: the ContainerServiceDriver on the real image and container services.

The image is built by the suite from Debian's etcd binary and its libraries,
pushed with skopeo to the shared registry, pulled by the image service,
unpacked into an overlay rootfs and run by the container service with host
networking, the PKI and the component dir bound at the same paths. Covered:
TLS health over HTTPS with a client certificate, etcdctl put/get, a no-op
re-apply, kill of the container's process → restarted by the loop, removed
intent → container removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from pathlib import Path

import pytest

from app.bootstrap.instantiate import NodeContext
from app.bootstrap.plan import Policy
from app.bootstrap.service import BootstrapService
from app.state.db import open_database
from tests.bootstrap.conftest import etcd_intent, wait_for
from tests.bootstrap.engines import build_etcd_image, build_stack
from tests.bootstrap.test_etcd_loop import etcdctl

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


@pytest.fixture(scope="session")
def etcd_image(registry, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    return build_etcd_image(tmp_path_factory.mktemp("etcd-image"), registry.host, uuid.uuid4().hex[:8])


async def test_etcd_in_a_container_from_the_local_registry(tmp_path: Path, registry, etcd_image: str) -> None:
    if os.geteuid() != 0:
        raise AssertionError("this test needs root (overlay rootfs, container service)")
    state = tmp_path / "state"
    db = open_database(f"sqlite:///{tmp_path}/vapp.db")
    stack = build_stack(db, tmp_path / "engines", registry.url)
    node = NodeContext("node1", "127.0.0.1", state, str(state / "cri.sock"), str(state / "dns" / "hosts"))
    svc = BootstrapService(db=db, driver=stack.driver, node=node, intents_dir=state / "intents", interval=0.2,
                           policy=Policy(backoff_base=0.2, backoff_max=2.0))
    intent = etcd_intent()
    intent["values"].update(etcd_image=etcd_image, etcd_command="/usr/bin/etcd")
    port = intent["values"]["client_port"]
    loop_task: asyncio.Task[None] | None = None
    try:
        svc.put_intent(intent)
        status = await svc.apply(timeout=90)
        c = status["components"][0]
        assert (c["phase"], c["state"], c["healthy"]) == ("running", "running", True), status
        assert c["id"] == "vapp-boot-etcd.etcd"
        info = await stack.containers.inspect(c["id"])
        assert info.running and info.network == "host" and info.image
        assert etcdctl(svc, port, "put", "/vapp/in-container", "yes").returncode == 0
        assert etcdctl(svc, port, "get", "/vapp/in-container", "--print-value-only").stdout.strip() == "yes"
        assert (await svc.plan())["changes"] == 0

        loop_task = asyncio.create_task(svc.run_forever())
        os.kill(info.pid, signal.SIGKILL)  # type: ignore[arg-type]

        async def restarted() -> bool:
            st = await svc.status()
            comp = st["components"][0]
            return comp["restarts"] == 1 and comp["phase"] == "running" and comp["healthy"] is True

        await wait_for(restarted, timeout=60)
        assert etcdctl(svc, port, "get", "/vapp/in-container", "--print-value-only").stdout.strip() == "yes"

        svc.delete_intent("etcd")

        async def removed() -> bool:
            return not (await svc.status())["components"] and not await stack.containers.list()

        await wait_for(removed, timeout=30)
    finally:
        if loop_task is not None:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        await stack.close()
        db.close()
