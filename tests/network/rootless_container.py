"""Run as the unprivileged user by test_with_containers.py: a rootless container on pasta, end to end.

    python -m tests.network.rootless_container WORKDIR ROOTFS HOST_PORT
Prints one JSON line: what the node saw on the published port, the helper pids, what is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from app.config import NetworkSettings
from app.runtime.forkserver import start_forkserver
from app.runtime.network.manager import NetworkManager
from app.runtime.network.netlink import PyrouteNetlink
from app.runtime.network.netns import helper_alive
from app.runtime.network.nft import FakeNft
from app.runtime.network.store import NetworkStore
from app.runtime.oci.spec import ContainerSpec
from app.services.container_types import CreateRequest
from app.services.containers import ContainerService
from app.state.db import open_database


async def main(work: Path, rootfs: str, port: int) -> dict[str, Any]:
    forkserver = start_forkserver()  # before any thread exists
    db = open_database(f"sqlite:///{work / 'vapp.db'}")
    network = NetworkManager(NetworkSettings(), NetworkStore(db), work / "run", PyrouteNetlink(), FakeNft(),
                             rootless=True)
    svc = ContainerService(db, forkserver, state_dir=work / "state", run_dir=work / "run", network=network)
    out: dict[str, Any] = {}
    script = "mkdir -p /www && echo rootless-pod > /www/index.html && exec httpd -f -p 80 -h /www"
    spec = ContainerSpec(id="rl-pod", command=("sh", "-c", script), network="pod")
    info = await svc.create(CreateRequest(spec=spec, rootfs=rootfs, ports=({"host_port": port,
                                                                            "container_port": 80},)))
    await svc.start(info.id)
    att = await network.get(info.id)
    out["attachment"] = att
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                out["body"] = resp.read().decode()
                break
        except OSError:
            await asyncio.sleep(0.05)
    await svc.remove(info.id, force=True)
    pidfile = str(work / "run" / "network" / info.id / "helper.pid")
    out["helpers_alive_after"] = [p for p in att["helper_pids"] if helper_alive(p, pidfile)]
    out["attachments_after"] = await network.attachments()
    await svc.close()
    forkserver.close()
    return out


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)
