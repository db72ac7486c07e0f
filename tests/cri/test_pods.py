"""The pod service with real namespaces, real holders and real CNI plugins."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.errors import AlreadyExists, InvalidArgument, NotFound
from app.services import pod_process
from app.services.pod_types import NsMode, PodPort, PodSpec, PodState
from app.services.pods import PodService
from app.state.db import Database
from tests.cri.conftest import CniNet
from tests.cri.netutil import link_exists, start_echo_in, tcp_probe_from, unique_suffix
from tests.helpers.ports import free_port


def spec(name: str, **kw: object) -> PodSpec:
    return PodSpec(name=name, uid=f"uid-{name}", namespace="default", **kw)  # type: ignore[arg-type]


def ns_inode(path: str) -> int:
    return os.stat(path).st_ino


async def test_run_pod_gets_namespaces_hostname_dns_and_ip(pods: PodService, cni_net: CniNet) -> None:
    pod = await pods.run(spec("web", hostname="web-host", dns_servers=("10.0.0.10",),
                              dns_searches=("svc.cluster.local",), dns_options=("ndots:5",), dns_set=True,
                              labels={"app": "web"}))
    assert pod.state is PodState.READY and pod.ip.startswith(cni_net.subnet.rsplit(".", 1)[0])
    paths = pod.namespace_paths()
    assert set(paths) == {"network", "ipc", "uts"}
    for kind, path in paths.items():
        assert ns_inode(path) != ns_inode(f"/proc/self/ns/{'net' if kind == 'network' else kind}")
    out = subprocess.run(["nsenter", f"--uts={paths['uts']}", "hostname"], capture_output=True, text=True)
    assert out.stdout.strip() == "web-host"
    files = pods.pod_files(pod.id)
    resolv = files["resolv.conf"].read_text()
    assert "nameserver 10.0.0.10" in resolv and "search svc.cluster.local" in resolv and "ndots:5" in resolv
    assert pod.ip in files["hosts"].read_text()
    assert link_exists("eth0", paths["network"]) and link_exists("lo", paths["network"])
    assert [p.id for p in pods.list(labels={"app": "web"})] == [pod.id]
    assert pods.list(labels={"app": "other"}) == []
    assert pods.get(pod.id[:12]).id == pod.id


async def test_two_pods_talk_and_portmap_and_dial(pods: PodService) -> None:
    host_port = free_port()
    a = await pods.run(spec("a"))
    b = await pods.run(spec("b", ports=(PodPort(8080, host_port, "tcp", "127.0.0.1"),)))
    echo = start_echo_in(b.netns_path, 8080)
    try:
        assert tcp_probe_from(a.netns_path, b.ip, 8080, b"x") == b"echo:x"
        import socket
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as s:
            s.sendall(b"pm")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(64) == b"echo:pm"
        reader, writer = await pods.dial(b.id, 8080)  # port-forward path through the holder
        writer.write(b"pf")
        writer.write_eof()
        assert await reader.read(64) == b"echo:pf"
        writer.close()
    finally:
        echo.kill()
        echo.wait()


async def test_pid_sharing_and_host_namespaces(pods: PodService) -> None:
    shared = await pods.run(spec("shared", pid=NsMode.POD))
    assert "pid" in shared.namespace_paths()
    assert ns_inode(shared.namespace_paths()["pid"]) != ns_inode("/proc/self/ns/pid")
    host = await pods.run(spec("hostnet", network=NsMode.NODE, ipc=NsMode.NODE))
    assert host.network == "host" and host.ip == "" and host.netns_path == ""
    assert host.namespace_paths() == {}
    with pytest.raises(ConnectionRefusedError):  # host network: dials the node's loopback directly
        await pods.dial(host.id, free_port())


async def test_stop_remove_idempotent_and_cleanup(pods: PodService, cni_net: CniNet) -> None:
    pod = await pods.run(spec("gone"))
    pid, start, netns = pod.holder_pid, pod.holder_start, pod.netns_path
    await pods.stop(pod.id)
    assert pods.get(pod.id).state is PodState.NOTREADY
    assert not pod_process.alive(pid, start)
    await pods.stop(pod.id)  # idempotent
    await pods.remove(pod.id)
    await pods.remove(pod.id)  # idempotent
    with pytest.raises(NotFound):
        pods.get(pod.id)
    with pytest.raises(NotFound):
        await pods.stop(pod.id)
    assert not Path(netns).exists()
    assert not list((cni_net.cache_dir / "results").glob(f"*{pod.id}*"))


async def test_invalid_and_duplicate(pods: PodService) -> None:
    with pytest.raises(InvalidArgument):
        PodSpec(name="", uid="u", namespace="n")
    await pods.run(spec("dup"))
    with pytest.raises(AlreadyExists):
        await pods.run(spec("dup"))


async def test_restart_readopts_live_holders_and_settles_dead_ones(
    tmp_path: Path, db: Database, cni_net: CniNet
) -> None:
    run_dir = Path(f"/tmp/vt-run-{unique_suffix()}")
    first = PodService(db, tmp_path / "state", run_dir, cni_net.client())
    live = await first.run(spec("live"))
    dead = await first.run(spec("dead"))
    os.kill(dead.holder_pid, 9)
    for _ in range(500):
        if not pod_process.alive(dead.holder_pid, dead.holder_start):
            break
        await asyncio.sleep(0.01)
    second = PodService(db, tmp_path / "state", run_dir, cni_net.client())  # the daemon restarted
    await second.restore()
    assert second.get(live.id).state is PodState.READY
    assert second.get(live.id).holder_pid == live.holder_pid
    assert second.get(dead.id).state is PodState.NOTREADY
    assert not list((cni_net.cache_dir / "results").glob(f"*{dead.id}*"))  # CNI DEL ran
    for p in second.list():
        await second.remove(p.id)
    assert second.list() == []


async def test_100_pods_leave_nothing_behind(pods: PodService, cni_net: CniNet) -> None:
    """Only this test's objects are checked: other test runs share the machine."""
    made = []
    for batch in range(10):  # ten at a time: the service must also take concurrent pods
        made += await asyncio.gather(*(pods.run(spec(f"many-{batch}-{i}")) for i in range(10)))
    holders = [(p.holder_pid, p.holder_start) for p in made]
    netns_inodes = {ns_inode(p.netns_path) for p in made}
    assert len(netns_inodes) == 100 and all(pod_process.alive(*h) for h in holders)
    ports = subprocess.run(["ip", "-o", "link", "show", "master", cni_net.bridge], capture_output=True, text=True)
    assert len(ports.stdout.strip().splitlines()) == 100  # one veth per pod on our bridge
    for batch in range(10):
        chunk = made[batch * 10:(batch + 1) * 10]
        await asyncio.gather(*(pods.stop(p.id) for p in chunk))
        await asyncio.gather(*(pods.remove(p.id) for p in chunk))
    assert not any(pod_process.alive(*h) for h in holders)
    ports = subprocess.run(["ip", "-o", "link", "show", "master", cni_net.bridge], capture_output=True, text=True)
    assert ports.stdout.strip() == ""
    assert not list((cni_net.cache_dir / "results").glob("*.json"))
    assert not any(pods.files_root.iterdir())
    assert not any(pods.sock_root.iterdir())
    leases = [p for p in (cni_net.conf_dir.parent / "ipam").rglob("*") if p.is_file() and p.name[0].isdigit()]
    assert leases == []


async def test_rootless_style_holder_has_userns_and_loopback(tmp_path: Path, db: Database) -> None:
    """The rootless path (no CNI): holder in its own user namespace, lo brought up by the holder."""
    svc = PodService(db, tmp_path / "state", Path(f"/tmp/vt-run-{unique_suffix()}"), None, rootless=True)
    pod = await svc.run(spec("rl", hostname="rl-host"))
    holder = (pod.holder_pid, pod.holder_start)
    try:
        assert pod.network == "none" and pod.ip == ""
        assert ns_inode(f"/proc/{pod.holder_pid}/ns/user") != ns_inode("/proc/self/ns/user")
        out = subprocess.run(["nsenter", f"--net={pod.netns_path}", "ip", "-o", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        assert "UP" in out.split("<", 1)[1].split(">", 1)[0]
        assert svc.network_status()[0] is False
    finally:
        await svc.remove(pod.id)
    assert not pod_process.alive(*holder)


async def test_failed_cni_add_leaves_nothing(tmp_path: Path, db: Database) -> None:
    import json

    from app.errors import Unavailable
    from app.runtime.network.cni import CniClient

    conf = tmp_path / "badconf"
    conf.mkdir()
    (conf / "10-bad.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "bad", "plugins": [
        {"type": "bridge", "bridge": f"vtx{unique_suffix()}"[:15],
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": "not-a-subnet"}]]}}]}))
    svc = PodService(db, tmp_path / "state", Path(f"/tmp/vt-run-{unique_suffix()}"),
                     CniClient(conf, [Path("/usr/lib/cni")], tmp_path / "cache"))
    with pytest.raises(Unavailable, match="CNI bridge ADD failed"):
        await svc.run(spec("broken"))
    assert svc.list() == []
    assert _holders(str(svc.sock_root)) == set()  # only this service's holders: tests run in parallel
    assert not any((tmp_path / "state" / "pods").iterdir())
    assert not list((tmp_path / "cache").rglob("*.json"))
    await svc.run(spec("broken", network=NsMode.NODE))  # the name is free again; host network works


def _holders(marker: str) -> set[int]:
    """Live holder processes whose command line mentions ``marker`` (their socket directory)."""
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes()
                if b"pod_holder.py" in cmdline and marker.encode() in cmdline \
                        and pod_process.start_time(int(d.name)):
                    out.add(int(d.name))
            except OSError:
                continue
    return out


async def test_dead_holder_makes_the_pod_notready(pods: PodService) -> None:
    pod = await pods.run(spec("fragile"))
    os.kill(pod.holder_pid, 9)
    for _ in range(60):  # the liveness check is cached for up to LIVENESS_TTL
        if pods.get(pod.id).state is PodState.NOTREADY:
            break
        await asyncio.sleep(0.05)
    assert pods.get(pod.id).state is PodState.NOTREADY
    await pods.stop(pod.id)  # still stops cleanly (CNI DEL with the namespace gone)
    await pods.remove(pod.id)


def test_rootless_pods_use_the_runtimes_pod_network(unpriv_user: Any, user_tmp: Path) -> None:
    """As the unprivileged user: no CNI; the network manager's pasta attaches the holder's netns,
    publishes the pod's port on the node's loopback, and everything goes with the pod."""
    import json
    import sys

    from tests.helpers.users import run_as

    proc = run_as(unpriv_user, [sys.executable, "-m", "tests.cri.rootless_pod", str(user_tmp)], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rootless"] is True and out["ready"] == [True, ""]
    assert out["network"] == "runtime" and out["ip"]
    assert out["echo"] == "ready" and out["published"] == "echo:rootless"
    assert out["holder_alive_after"] is False and out["attachments_after"] == []
