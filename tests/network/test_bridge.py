"""Root pod networking on a real bridge: namespaces, veth, nftables, traffic on loopback and our netns only."""

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.errors import AlreadyExists, FailedPrecondition
from app.runtime.network.bridge import veth_names
from tests.helpers.ports import free_port
from tests.network.conftest import BridgeEnv

pytestmark = pytest.mark.root


def in_ns(path: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", os.path.basename(path), *argv], capture_output=True, text=True,
                          timeout=timeout)


@contextmanager
def httpd_in_ns(path: str, tmp: Path, port: int, body: str) -> Iterator[None]:
    root = tmp / f"www-{port}-{os.path.basename(path)}"
    root.mkdir()
    (root / "index.html").write_text(body)
    proc = subprocess.Popen(["ip", "netns", "exec", os.path.basename(path), "busybox", "httpd", "-f",
                             "-p", str(port), "-h", str(root)])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if f":{port:04X} " in in_ns(path, "cat", "/proc/net/tcp", "/proc/net/tcp6").stdout:
                break
            time.sleep(0.02)
        yield
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def httpd_on_host(address: str) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"from-the-node")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def leftovers(env: BridgeEnv) -> dict[str, object]:
    links = subprocess.run(["ip", "-j", "link", "show", "master", env.settings.bridge], capture_output=True,
                           text=True).stdout
    ruleset = subprocess.run(["nft", "-j", "list", "table", "inet", env.settings.nft_table], capture_output=True,
                             text=True).stdout
    items = json.loads(ruleset)["nftables"] if ruleset else []
    chains = [i["chain"]["name"] for i in items if "chain" in i and i["chain"]["name"].startswith("c-")]
    elems = [e for i in items if "map" in i for e in i["map"].get("elem", [])]
    named = sorted(n for n in os.listdir("/run/netns") if n in env.namespaces) if os.path.isdir("/run/netns") else []
    return {"veths": json.loads(links or "[]"), "chains": chains, "elements": elems, "netns": named}


def test_none_mode_has_only_loopback(bridge_env: BridgeEnv) -> None:
    async def run() -> None:
        m = bridge_env.manager()
        ns = bridge_env.netns()
        subprocess.run(["ip", "-n", os.path.basename(ns), "link", "set", "lo", "down"], check=True)
        att = await m.setup("none1", "none", [], ns)
        assert att["driver"] == "none" and att["addresses"] == []
        links = json.loads(in_ns(ns, "ip", "-j", "link").stdout)
        assert [link["ifname"] for link in links] == ["lo"]
        assert "UP" in links[0]["flags"]
        await m.teardown("none1")

    asyncio.run(run())


def test_pod_mode_end_to_end(bridge_env: BridgeEnv, tmp_path: Path) -> None:
    async def run() -> None:
        m = bridge_env.manager()
        a_ns, b_ns = bridge_env.netns(), bridge_env.netns()
        loop_port, any_port = free_port(), free_port()
        a = await m.setup("pod-a", "pod", [f"{loop_port}:80", f"0.0.0.0:{any_port}:80"], a_ns, hostname="alpha")
        b = await m.setup("pod-b", "pod", [], b_ns)
        gw = a["gateway"]
        a_ip, b_ip = a["addresses"][0].split("/")[0], b["addresses"][0].split("/")[0]
        assert a_ip != b_ip and b["gateway"] == gw

        # The container's view: eth0 with its address, default route via the bridge.
        assert a["addresses"][0] in in_ns(a_ns, "ip", "-br", "addr", "show", "eth0").stdout
        assert f"default via {gw}" in in_ns(a_ns, "ip", "route").stdout

        # Outbound to the node: a server on the node's bridge address answers.
        with httpd_on_host(gw) as port:
            out = in_ns(a_ns, "busybox", "wget", "-q", "-O-", f"http://{gw}:{port}/")
            assert out.stdout == "from-the-node", out.stderr

        # DNS and names.
        files = m.files("pod-a")
        resolv = Path(files["/etc/resolv.conf"]).read_text()
        assert "nameserver" in resolv and "127.0.0.53" not in resolv
        hosts = Path(files["/etc/hosts"]).read_text()
        assert f"{a_ip}\talpha" in hosts and "192.0.2.250\tdocker-proxy.internal" in hosts

        with httpd_in_ns(a_ns, tmp_path, 80, "hello-from-a"):
            # Published on the node's loopback (the default publish address).
            assert get(f"http://127.0.0.1:{loop_port}/") == "hello-from-a"
            # Two pods on the bridge reach each other directly...
            assert in_ns(b_ns, "busybox", "wget", "-q", "-O-", f"http://{a_ip}/").stdout == "hello-from-a"
            # ...and through the node's published port (hairpin NAT).
            hairpin = in_ns(b_ns, "busybox", "wget", "-q", "-O-", f"http://{gw}:{any_port}/")
            assert hairpin.stdout == "hello-from-a", hairpin.stderr

        await m.teardown("pod-a")
        await m.teardown("pod-b")
        assert leftovers(bridge_env) == {"veths": [], "chains": [], "elements": [], "netns": sorted(
            [os.path.basename(a_ns), os.path.basename(b_ns)])}

    asyncio.run(run())


def test_container_mode_shares_the_netns(bridge_env: BridgeEnv) -> None:
    async def run() -> None:
        m = bridge_env.manager()
        ns = bridge_env.netns()
        owner = await m.setup("owner", "pod", [], ns)
        joined = await m.setup("joiner", "container:owner", [], None)
        assert joined["netns"] == ns == m.netns_path("owner")
        assert joined["addresses"] == owner["addresses"] and joined["shared_with"] == "owner"
        # A process placed in the joined path sees the owner's interface.
        assert owner["addresses"][0] in in_ns(joined["netns"], "ip", "-br", "addr").stdout
        await m.teardown("joiner")
        assert owner["addresses"][0] in in_ns(ns, "ip", "-br", "addr").stdout  # the owner keeps its network
        await m.teardown("owner")

    asyncio.run(run())


CRASHING_DAEMON = """
import asyncio, os, sys
from tests.network.conftest import BridgeEnv
from app.config import NetworkSettings
env = BridgeEnv(__import__("pathlib").Path(sys.argv[1]), NetworkSettings.model_validate_json(sys.argv[2]), sys.argv[3])
async def main():
    m = env.manager()
    print(json_dump := __import__("json").dumps(await m.setup(sys.argv[4], "pod", [sys.argv[6]], sys.argv[5])))
    sys.stdout.flush()
    os._exit(0)  # killed: no teardown
asyncio.run(main())
"""


def test_ipam_survives_a_daemon_crash_without_reuse(bridge_env: BridgeEnv) -> None:
    async def run() -> None:
        live_ns, dead_ns = bridge_env.netns(), bridge_env.netns()
        root = Path(__file__).resolve().parents[2]
        results = {}
        for cid, ns in (("live", live_ns), ("dead", dead_ns)):
            proc = subprocess.run(
                [sys.executable, "-c", CRASHING_DAEMON, str(bridge_env.tmp), bridge_env.settings.model_dump_json(),
                 bridge_env.db_url, cid, ns, f"{free_port()}:80"],
                capture_output=True, text=True, cwd=root, timeout=60)
            assert proc.returncode == 0, proc.stderr
            results[cid] = json.loads(proc.stdout)
        # The "dead" container is gone while the daemon was down.
        bridge_env.drop_netns(dead_ns)

        m = bridge_env.manager()  # the restarted daemon
        assert await m.reconcile() == ["dead"]
        assert [a["container_id"] for a in await m.attachments()] == ["live"]
        state = leftovers(bridge_env)
        assert len(state["veths"]) == 1 and state["chains"] == ["c-live"]  # type: ignore[arg-type]
        new_ns = bridge_env.netns()
        new = await m.setup("new", "pod", [], new_ns)
        assert new["addresses"] != results["live"]["addresses"]
        leased = sorted(lease.address for lease in m.store.leases())
        assert len(leased) == len(set(leased)) == 2
        await m.teardown("live")
        await m.teardown("new")
        assert leftovers(bridge_env)["veths"] == [] and m.store.leases() == []

    asyncio.run(run())


def test_port_conflict_and_overlap_fail_clearly(bridge_env: BridgeEnv) -> None:
    async def run() -> None:
        m = bridge_env.manager()
        ns = bridge_env.netns()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(AlreadyExists, match=f"{port}"):
                await m.setup("clash", "pod", [f"{port}:80"], ns)
        assert await m.attachments() == [] and m.store.leases() == []
        assert not [link for link in leftovers(bridge_env)["veths"]]  # type: ignore[attr-defined]
        host_if, _ = veth_names(bridge_env.settings.bridge, "clash")
        assert subprocess.run(["ip", "link", "show", host_if], capture_output=True).returncode != 0

        routed = next(line.split()[0] for line in subprocess.run(
            ["ip", "-4", "route"], capture_output=True, text=True).stdout.splitlines()
            if not line.startswith("default"))
        clash_env = BridgeEnv(bridge_env.tmp, bridge_env.settings.model_copy(update={
            "subnet": routed, "bridge": bridge_env.settings.bridge + "x"}), bridge_env.db_url)
        with pytest.raises(FailedPrecondition, match="overlaps"):
            await clash_env.manager().setup("ov", "pod", [], ns)

    asyncio.run(run())


def test_200_cycles_leave_nothing(bridge_env: BridgeEnv) -> None:
    async def run() -> None:
        m = bridge_env.manager()
        port = free_port()
        for i in range(200):
            ns = bridge_env.netns()
            await m.setup(f"cyc{i}", "pod", [f"{port}:80"], ns)
            await m.teardown(f"cyc{i}")
            bridge_env.drop_netns(ns)
        assert leftovers(bridge_env) == {"veths": [], "chains": [], "elements": [], "netns": []}
        assert m.store.leases() == [] and await m.attachments() == []
        await m.reset()
        assert subprocess.run(["ip", "link", "show", bridge_env.settings.bridge], capture_output=True).returncode != 0
        assert subprocess.run(["nft", "list", "table", "inet", bridge_env.settings.nft_table],
                              capture_output=True).returncode != 0

    asyncio.run(run())
