"""Run as the unprivileged user: a rootless pod on the runtime's pod network, checked from inside.

    python -m tests.cri.rootless_pod WORKDIR    → one JSON line with what was observed
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

from app.config import NetworkSettings
from app.runtime.network.manager import NetworkManager
from app.runtime.network.netlink import PyrouteNetlink
from app.runtime.network.nft import FakeNft
from app.runtime.network.store import NetworkStore
from app.services import pod_process
from app.services.pod_types import PodPort, PodSpec
from app.services.pods import PodService
from app.state.db import open_database
from tests.cri.netutil import ECHO_SERVER
from tests.helpers.ports import free_port


async def main(work: Path) -> dict[str, object]:
    db = open_database(f"sqlite:///{work / 'vapp.db'}")
    manager = NetworkManager(NetworkSettings(ipv6=False), NetworkStore(db), work / "netrun", PyrouteNetlink(),
                             FakeNft(), rootless=True)
    svc = PodService(db, work / "state", work / "run", None, fallback=manager)
    out: dict[str, object] = {"rootless": svc.rootless, "ready": svc.network_status()}
    host_port = free_port()
    pod = await svc.run(PodSpec(name="rl", uid="u", namespace="n", hostname="rl-host",
                                ports=(PodPort(8080, host_port, "tcp", "127.0.0.1"),)))
    out.update(network=pod.network, ip=pod.ip)
    holder = (pod.holder_pid, pod.holder_start)
    echo = subprocess.Popen(["nsenter", f"--user=/proc/{pod.holder_pid}/ns/user", f"--net={pod.netns_path}",
                             "--preserve-credentials", sys.executable, "-c", ECHO_SERVER, "8080"],
                            stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        out["echo"] = echo.stdout.readline().decode().strip()
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as s:
            s.sendall(b"rootless")
            s.shutdown(socket.SHUT_WR)
            out["published"] = s.recv(64).decode()
    finally:
        echo.kill()
        echo.wait()
        await svc.remove(pod.id)
    out["holder_alive_after"] = pod_process.alive(*holder)
    out["attachments_after"] = await manager.attachments()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
