"""Unique, self-cleaning network fixtures for CRI tests (bridges, subnets, CNI conf dirs)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import uuid
from pathlib import Path


def unique_suffix() -> str:
    return uuid.uuid4().hex[:8]


def random_subnet() -> str:
    """A /24 in 10.200.0.0/13 unlikely to collide with a parallel test run."""
    return f"10.{random.randint(200, 207)}.{random.randint(0, 255)}.0/24"


def write_bridge_conflist(conf_dir: Path, data_dir: Path, *, bridge: str, subnet: str,
                          portmap: bool = True, name: str | None = None) -> dict:
    plugins: list[dict] = [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    conf = {"cniVersion": "1.0.0", "name": name or f"vt-{bridge}", "plugins": plugins}
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-test.conflist").write_text(json.dumps(conf))
    return conf


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip", "link", "show", name]
    if netns:
        argv = ["nsenter", f"--net={netns}", *argv]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def tcp_probe_from(netns: str, host: str, port: int, payload: bytes = b"ping") -> bytes:
    """Connect from inside ``netns`` to host:port, send payload, return the reply."""
    code = (
        "import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5);"
        "s.sendall(sys.argv[3].encode());s.shutdown(1);sys.stdout.buffer.write(s.recv(100))"
    )
    out = subprocess.run(["nsenter", f"--net={netns}", "/usr/bin/python3", "-c", code, host, str(port),
                          payload.decode()], capture_output=True, timeout=15, check=True)
    return out.stdout


ECHO_SERVER = (
    "import socket,sys,os;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(8);print('ready',flush=True)\n"
    "while True:\n c,_=s.accept();d=c.recv(100);c.sendall(b'echo:'+d);c.close()"
)


def start_echo_in(netns: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["nsenter", f"--net={netns}", "/usr/bin/python3", "-c", ECHO_SERVER, str(port)],
                            stdout=subprocess.PIPE, env={"PATH": os.environ.get("PATH", "/usr/bin")})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    return proc
