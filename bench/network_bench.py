"""Network benchmark: iperf3 throughput through our pod networks vs the node's loopback, and setup time.

Run as root (both parts; the rootless part re-runs itself as the test user ``vapptest``)
or as an unprivileged user (rootless part only)::

    .venv/bin/python bench/network_bench.py [--seconds 3] [--cycles 50]

Side by side in one run, all traffic on loopback and namespaces created here:

* ``loopback``          iperf3 client → server, both on the node's 127.0.0.1 (the ceiling)
* ``bridge c→h``        client in a pod netns on our bridge → server on the bridge address
* ``bridge h→p``        client on the node → 127.0.0.1:published port (nftables DNAT) → server in the pod
* ``veth raw``          the peer for the bridge: a bare veth pair between two namespaces, no bridge/NAT
* ``pasta c→h``         client in a rootless netns (our pasta) → server on the node's loopback via 10.0.2.2
* ``pasta h→p``         client on the node → 127.0.0.1:published port (pasta -t) → server in the netns
* ``pasta alone c→h``   the peer: ``pasta --config-net -a 10.0.2.100 -g 10.0.2.2 -- iperf3 -c 10.0.2.2``

Then the time to set up + tear down a pod network (median and p95 over ``--cycles``),
against the targets (20 ms root, 50 ms rootless).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import NetworkSettings  # noqa: E402
from app.runtime.network import netns  # noqa: E402
from app.runtime.network.manager import NetworkManager  # noqa: E402
from app.runtime.network.netlink import PyrouteNetlink  # noqa: E402
from app.runtime.network.nft import FakeNft, Nft  # noqa: E402
from app.runtime.network.store import NetworkStore  # noqa: E402
from app.state.db import open_database  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, check: list[str] | None = None, timeout: float = 5) -> None:
    """Wait for a LISTEN socket on ``port`` (v4 or v6) in the namespace ``check`` runs in."""
    suffix = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = subprocess.run([*(check or []), "cat", "/proc/net/tcp", "/proc/net/tcp6"], capture_output=True,
                              text=True).stdout
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[1].endswith(suffix) and fields[3] == "0A":
                return
        time.sleep(0.02)
    raise RuntimeError(f"iperf3 server on port {port} did not start")


def iperf(server_prefix: list[str], bind: str, port: int, client_prefix: list[str], target: str,
          seconds: float, target_port: int | None = None, ns_check: list[str] | None = None) -> float:
    """Gbit/s received, server started under ``server_prefix``, client under ``client_prefix``."""
    server = subprocess.Popen([*server_prefix, "iperf3", "-s", "-1", "-B", bind, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, ns_check)
        out = subprocess.run([*client_prefix, "iperf3", "-J", "-c", target, "-p", str(target_port or port),
                              "-t", str(seconds)], capture_output=True, text=True, timeout=seconds + 30)
        data = json.loads(out.stdout)
        if "error" in data:
            raise RuntimeError(data["error"])
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.kill()
        server.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- root: bridge ------------------------------------------------------------------------------


def free_subnet() -> str:
    sys.path.insert(0, str(REPO))
    from tests.network.conftest import free_subnet as pick

    return pick()


async def bridge_part(seconds: float, cycles: int) -> dict[str, Any]:
    suffix = secrets.token_hex(3)
    settings = NetworkSettings(bridge=f"vbb{suffix}", subnet=free_subnet(), nft_table=f"vbench_{suffix}")
    work = Path(tempfile.mkdtemp(prefix="vapp-netbench-"))
    m = NetworkManager(settings, NetworkStore(open_database(f"sqlite:///{work}/v.db")), work, PyrouteNetlink(),
                       Nft(settings.nft_table), rootless=False)
    names: list[str] = []
    out: dict[str, Any] = {}
    try:
        def ns() -> str:
            names.append(f"vbn{secrets.token_hex(4)}")
            return netns.create_named(names[-1])

        pod = ns()
        hport = free_port()
        att = await m.setup("bench", "pod", [f"{hport}:5201"], pod)
        gw = att["gateway"]
        in_pod = ["ip", "netns", "exec", os.path.basename(pod)]
        p = free_port()
        out["bridge c→h"] = iperf([], gw, p, in_pod, gw, seconds)
        out["bridge h→p"] = iperf(in_pod, "0.0.0.0", 5201, [], "127.0.0.1", seconds, target_port=hport,
                                  ns_check=in_pod)
        await m.teardown("bench")

        # The peer: a bare veth pair between two fresh namespaces.
        a, b = ns(), ns()
        va, vb = f"vba{suffix}", f"vbb{suffix}x"
        sh = [f"ip link add {va} netns {os.path.basename(a)} type veth peer name {vb} netns {os.path.basename(b)}",
              f"ip -n {os.path.basename(a)} addr add 10.254.254.1/30 dev {va}",
              f"ip -n {os.path.basename(b)} addr add 10.254.254.2/30 dev {vb}",
              f"ip -n {os.path.basename(a)} link set {va} up", f"ip -n {os.path.basename(b)} link set {vb} up"]
        for cmd in sh:
            subprocess.run(cmd.split(), check=True)
        in_a, in_b = ["ip", "netns", "exec", os.path.basename(a)], ["ip", "netns", "exec", os.path.basename(b)]
        out["veth raw"] = iperf(in_a, "10.254.254.1", 5201, in_b, "10.254.254.1", seconds, ns_check=in_a)

        # Setup/teardown time with namespaces made beforehand (the runtime creates them, not us).
        spaces = [ns() for _ in range(cycles)]
        setup, teardown = [], []
        await m.setup("warm", "pod", [], spaces[0])
        await m.teardown("warm")
        for i, space in enumerate(spaces):
            t0 = time.perf_counter()
            await m.setup(f"c{i}", "pod", [f"{free_port()}:80"], space)
            t1 = time.perf_counter()
            await m.teardown(f"c{i}")
            setup.append((t1 - t0) * 1000)
            teardown.append((time.perf_counter() - t1) * 1000)
        out["bridge setup ms"] = setup
        out["bridge teardown ms"] = teardown
    finally:
        for name in names:
            netns.remove_named(name)
        await m.reset()
    return out


# --- rootless: pasta -------------------------------------------------------------------------------


def holder() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["unshare", "-U", "-r", "-n", "sleep", "600"])
    own = os.readlink("/proc/self/ns/net")
    for _ in range(1000):
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != own:
                return proc
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("unshare did not start")


async def pasta_part(seconds: float, cycles: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="vapp-netbench-"))
    m = NetworkManager(NetworkSettings(usermode_helper="pasta"), NetworkStore(open_database(
        f"sqlite:///{work}/v.db")), work, PyrouteNetlink(), FakeNft(), rootless=True)
    out: dict[str, Any] = {}
    h = holder()
    holders = [h]
    try:
        hport = free_port()
        await m.setup("bench", "pod", [f"{hport}:5201"], h.pid)
        in_ns = ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(h.pid)]
        p = free_port()
        out["pasta c→h"] = iperf([], "127.0.0.1", p, in_ns, "10.0.2.2", seconds)
        out["pasta h→p"] = iperf(in_ns, "0.0.0.0", 5201, [], "127.0.0.1", seconds, target_port=hport,
                                 ns_check=in_ns)
        await m.teardown("bench")
        p = free_port()
        # Same layout and path (tap to the gateway, mapped to the node's loopback), no vapp code.
        alone = ["pasta", "-4", "-q", "-f", "--config-net", "-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2",
                 "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--"]
        out["pasta alone c→h"] = iperf([], "127.0.0.1", p, alone, "10.0.2.2", seconds)
        holders += [holder() for _ in range(cycles)]
        setup, teardown = [], []
        for i, hh in enumerate(holders[1:]):
            t0 = time.perf_counter()
            await m.setup(f"c{i}", "pod", [f"{free_port()}:80"], hh.pid)
            t1 = time.perf_counter()
            await m.teardown(f"c{i}")
            setup.append((t1 - t0) * 1000)
            teardown.append((time.perf_counter() - t1) * 1000)
        out["pasta setup ms"] = setup
        out["pasta teardown ms"] = teardown
    finally:
        for hh in holders:
            hh.kill()
            hh.wait()
    return out


def run_rootless_as_user(seconds: float, cycles: int) -> dict[str, Any]:
    import pwd

    user = pwd.getpwnam("vapptest")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/tmp",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, "--part", "pasta", "--seconds", str(seconds),
                           "--cycles", str(cycles)], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          env=env, capture_output=True, text=True, cwd="/tmp", timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"rootless part failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def report(results: dict[str, Any]) -> None:
    base = results["loopback"]
    print(f"\n{'path':<20}{'Gbit/s':>10}{'vs loopback':>14}")
    for key in ("loopback", "veth raw", "bridge c→h", "bridge h→p", "pasta alone c→h", "pasta c→h", "pasta h→p"):
        if key in results:
            print(f"{key:<20}{results[key]:>10.2f}{results[key] / base:>13.2f}x")
    if "bridge c→h" in results and "veth raw" in results:
        print(f"bridge c→h vs raw veth: {results['bridge c→h'] / results['veth raw']:.2f}x")
    if "pasta c→h" in results and "pasta alone c→h" in results:
        print(f"our pasta c→h vs pasta alone: {results['pasta c→h'] / results['pasta alone c→h']:.2f}x")
    print(f"\n{'pod network':<22}{'median ms':>10}{'p95 ms':>10}{'target':>10}")
    for kind, target in (("bridge", 20.0), ("pasta", 50.0)):
        if f"{kind} setup ms" not in results:
            continue
        both = [a + b for a, b in zip(results[f"{kind} setup ms"], results[f"{kind} teardown ms"], strict=True)]
        for label, values in (("setup", results[f"{kind} setup ms"]), ("teardown", results[f"{kind} teardown ms"]),
                              ("setup+teardown", both)):
            print(f"{kind + ' ' + label:<22}{statistics.median(values):>10.1f}{percentile(values, 0.95):>10.1f}"
                  f"{target if label == 'setup+teardown' else '':>10}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--part", choices=["all", "pasta"], default="all")
    args = ap.parse_args()
    if args.part == "pasta":
        print(json.dumps(asyncio.run(pasta_part(args.seconds, args.cycles))))
        return
    results: dict[str, Any] = {}
    p = free_port()
    results["loopback"] = iperf([], "127.0.0.1", p, [], "127.0.0.1", args.seconds)
    if os.geteuid() == 0:
        results.update(asyncio.run(bridge_part(args.seconds, args.cycles)))
        results.update(run_rootless_as_user(args.seconds, args.cycles))
    else:
        results.update(asyncio.run(pasta_part(args.seconds, args.cycles)))
    report(results)


if __name__ == "__main__":
    main()
