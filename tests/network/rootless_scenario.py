"""Rootless scenarios, run as the unprivileged test user by test_rootless.py; prints one JSON result.

Usage: python -m tests.network.rootless_scenario SCENARIO WORKDIR [HELPER]
Targets are processes from ``unshare -U -r -n sleep`` (what a rootless container's init is
to the network part: a pid whose user namespace owns its network namespace).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from app.config import NetworkSettings
from app.errors import VappError
from app.runtime.network.manager import NetworkManager
from app.runtime.network.netlink import PyrouteNetlink
from app.runtime.network.nft import FakeNft
from app.runtime.network.store import NetworkStore
from app.state.db import open_database


def manager(work: Path, helper: str = "auto", ipv6: bool = False) -> NetworkManager:
    settings = NetworkSettings(usermode_helper=helper, ipv6=ipv6)  # type: ignore[arg-type]
    return NetworkManager(settings, NetworkStore(open_database(f"sqlite:///{work}/vapp.db")), work / "run",
                          PyrouteNetlink(), FakeNft(), rootless=True)


def holder() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["unshare", "-U", "-r", "-n", "sleep", "120"])
    own = os.readlink("/proc/self/ns/net")
    for _ in range(500):  # wait until the child has its own netns
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != own and os.readlink(f"/proc/{proc.pid}/exe").endswith(
                    "sleep"):
                return proc
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("unshare did not start")


def in_ns(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(pid), *argv],
                          capture_output=True, text=True, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def host_server() -> tuple[http.server.ThreadingHTTPServer, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from-the-node")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def our_processes(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and int(entry) != os.getpid():
                out.append(int(entry))
    return out


async def scenario_none(work: Path) -> dict[str, Any]:
    m, h = manager(work), holder()
    try:
        await m.setup("none1", "none", [], h.pid)
        links = json.loads(in_ns(h.pid, "ip", "-j", "link").stdout)
        await m.teardown("none1")
        return {"links": [link["ifname"] for link in links], "lo_flags": links[0]["flags"]}
    finally:
        h.kill()


async def scenario_pod(work: Path, helper: str) -> dict[str, Any]:
    m, h = manager(work, helper), holder()
    server, port = host_server()
    published = free_port()
    try:
        att = await m.setup("pod1", "pod", [f"{published}:80"], h.pid, hostname="rootless")
        out: dict[str, Any] = {"attachment": att}
        out["outbound"] = in_ns(h.pid, "busybox", "wget", "-q", "-O-", f"http://{att['gateway']}:{port}/").stdout
        out["resolv"] = Path(m.files("pod1")["/etc/resolv.conf"]).read_text()
        out["hosts"] = Path(m.files("pod1")["/etc/hosts"]).read_text()
        out["ns_addr"] = in_ns(h.pid, "ip", "-br", "addr").stdout
        www = work / "www"
        www.mkdir()
        (www / "index.html").write_text("hello-from-the-pod")
        httpd = subprocess.Popen(["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(h.pid),
                                  "busybox", "httpd", "-f", "-p", "80", "-h", str(www)])
        try:
            for _ in range(250):
                if ":0050 " in in_ns(h.pid, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout:
                    break
                time.sleep(0.02)
            with urllib.request.urlopen(f"http://127.0.0.1:{published}/", timeout=5) as resp:
                out["published"] = resp.read().decode()
        finally:
            httpd.kill()
            httpd.wait()
        await m.teardown("pod1")
        out["helpers_after"] = our_processes(str(work))
        out["attachments_after"] = await m.attachments()
        return out
    finally:
        server.shutdown()
        h.kill()


async def scenario_pod6(work: Path) -> dict[str, Any]:
    """pasta with IPv6: the namespace gets the node's IPv6 address and reaches the node's ::1."""
    m, h = manager(work, "pasta", ipv6=True), holder()

    class V6Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"over-ipv6")

        def log_message(self, *args: object) -> None:
            pass

    server = V6Server(("::1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        att = await m.setup("six", "pod", [], h.pid)
        routes = in_ns(h.pid, "ip", "-6", "route").stdout
        gw6 = next((line.split()[2] for line in routes.splitlines() if line.startswith("default")), None)
        got = in_ns(h.pid, "busybox", "wget", "-q", "-O-", f"http://[{gw6}]:{server.server_address[1]}/").stdout
        await m.teardown("six")
        return {"attachment": att, "gateway6": gw6, "outbound6": got}
    finally:
        server.shutdown()
        h.kill()


async def scenario_container(work: Path) -> dict[str, Any]:
    m, h = manager(work), holder()
    try:
        owner = await m.setup("owner", "pod", [], h.pid)
        joined = await m.setup("joiner", "container:owner", [], None)
        await m.teardown("joiner")
        await m.teardown("owner")
        return {"owner": owner, "joined": joined}
    finally:
        h.kill()


async def _error(coro: Any) -> dict[str, Any] | None:
    try:
        await coro
    except VappError as exc:
        return exc.to_dict() | {"class": type(exc).__name__}
    return None


async def scenario_errors(work: Path) -> dict[str, Any]:
    h = holder()
    out: dict[str, Any] = {}
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            m = manager(work)
            out["port_taken"] = await _error(m.setup("clash", "pod", [f"{busy.getsockname()[1]}:80"], h.pid))
            out["after_clash"] = await m.attachments()
        path = os.environ["PATH"]
        os.environ["PATH"] = "/nonexistent"
        try:
            out["no_pasta"] = await _error(manager(work, "pasta").setup("nopasta", "pod", [], h.pid))
        finally:
            os.environ["PATH"] = path
        out["helpers_after"] = our_processes(str(work))
        return out
    finally:
        h.kill()


async def scenario_tun(work: Path) -> dict[str, Any]:
    h = holder()
    try:
        return {"error": await _error(manager(work).setup("tun", "pod", [], h.pid))}
    finally:
        h.kill()


async def scenario_restart(work: Path) -> dict[str, Any]:
    m = manager(work)
    live, dead = holder(), holder()
    try:
        a = await m.setup("live", "pod", [f"{free_port()}:80"], live.pid)
        b = await m.setup("dead", "pod", [f"{free_port()}:80"], dead.pid)
        del m  # the daemon "crashes": nothing is torn down
        dead.kill()
        dead.wait()
        m2 = manager(work)
        removed = await m2.reconcile()
        alive = {cid: [p for p in att["helper_pids"] if p in our_processes(str(work))]
                 for cid, att in (("live", a), ("dead", b))}
        await m2.teardown("live")
        return {"removed": removed, "alive": alive, "remaining": our_processes(str(work))}
    finally:
        live.kill()


async def scenario_cycles(work: Path, count: int) -> dict[str, Any]:
    m = manager(work)
    port = free_port()
    started = time.perf_counter()
    for i in range(count):
        h = holder()
        await m.setup(f"cyc{i}", "pod", [f"{port}:80"], h.pid)
        await m.teardown(f"cyc{i}")
        h.kill()
        h.wait()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "helpers_after": our_processes(str(work)),
            "attachments": await m.attachments(), "files": sorted(os.listdir(work / "run" / "network"))}


def main() -> None:
    name, work = sys.argv[1], Path(sys.argv[2])
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    runs = {
        "none": lambda: scenario_none(work),
        "pod": lambda: scenario_pod(work, arg or "auto"),
        "container": lambda: scenario_container(work),
        "pod6": lambda: scenario_pod6(work),
        "errors": lambda: scenario_errors(work),
        "tun": lambda: scenario_tun(work),
        "restart": lambda: scenario_restart(work),
        "cycles": lambda: scenario_cycles(work, int(arg or "200")),
    }
    print(json.dumps(asyncio.run(runs[name]())))


if __name__ == "__main__":
    main()
