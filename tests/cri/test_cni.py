"""The CNI client against Debian's real plugins (bridge, host-local, loopback, portmap)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import FailedPrecondition
from app.runtime.network.cni import Attachment, CniClient, first_ips, load_network, parse_network
from tests.cri.netutil import (
    delete_link,
    link_exists,
    random_subnet,
    start_echo_in,
    tcp_probe_from,
    unique_suffix,
    write_bridge_conflist,
)
from tests.helpers.ports import free_port

BIN_DIRS = [Path("/usr/lib/cni")]


@pytest.fixture
def netns_pair() -> Iterator[list[str]]:
    names = [f"vt-cni-{unique_suffix()}" for _ in range(2)]
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    yield [f"/run/netns/{n}" for n in names]
    for n in names:
        subprocess.run(["ip", "netns", "del", n], check=False)


@pytest.fixture
def bridge_env(tmp_path: Path) -> Iterator[tuple[CniClient, str, str, Path]]:
    bridge = f"vtb{unique_suffix()}"[:15]
    subnet = random_subnet()
    write_bridge_conflist(tmp_path / "conf", tmp_path / "ipam", bridge=bridge, subnet=subnet)
    client = CniClient(tmp_path / "conf", BIN_DIRS, tmp_path / "cache")
    yield client, bridge, subnet, tmp_path
    delete_link(bridge)


def test_parse_wraps_single_plugin_conf() -> None:
    net = parse_network({"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "b0"})
    assert net.plugins == [{"type": "bridge", "bridge": "b0"}]


def test_missing_conf_dir_is_not_ready(tmp_path: Path) -> None:
    client = CniClient(tmp_path / "nothing", BIN_DIRS, tmp_path / "cache")
    ready, why = client.status()
    assert not ready and "no valid CNI network config" in why
    with pytest.raises(FailedPrecondition):
        load_network(tmp_path / "nothing")


def test_missing_plugin_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "no-such-plugin"}]}))
    ready, why = CniClient(tmp_path / "conf", BIN_DIRS, tmp_path / "c").status()
    assert not ready and "no-such-plugin" in why


async def test_add_two_pods_reach_each_other_portmap_and_del_after_restart(
    bridge_env: tuple[CniClient, str, str, Path], netns_pair: list[str]
) -> None:
    client, bridge, subnet, tmp = bridge_env
    host_port = free_port()
    results = []
    for i, ns in enumerate(netns_pair):
        caps = {"portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp",
                                  "hostIP": "127.0.0.1"}]} if i == 1 else {}
        results.append(await client.add(Attachment(f"pod{i}-{bridge}", ns, "eth0",
                                                   [("K8S_POD_NAME", f"p{i}")], caps)))
    ips = [first_ips(r)[0] for r in results]
    prefix = subnet.rsplit(".", 1)[0]
    assert all(ip.startswith(prefix) for ip in ips) and ips[0] != ips[1]
    assert link_exists("lo", netns_pair[0]) and link_exists("eth0", netns_pair[0])
    await client.check(f"pod0-{bridge}")

    echo = start_echo_in(netns_pair[1], 8080)
    try:
        assert tcp_probe_from(netns_pair[0], ips[1], 8080, b"hi") == b"echo:hi"
        # portmap publishes 127.0.0.1:<host_port> on the node
        with socket.create_connection(("127.0.0.1", host_port), timeout=5) as s:
            s.sendall(b"pm")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b"echo:pm"
    finally:
        echo.kill()
        echo.wait()

    # A fresh client (daemon restart) deletes from the on-disk cache alone.
    restarted = CniClient(tmp / "conf", BIN_DIRS, tmp / "cache")
    (tmp / "conf" / "10-test.conflist").unlink()  # even if the config changed meanwhile
    for i, ns in enumerate(netns_pair):
        await restarted.delete(f"pod{i}-{bridge}")
        assert not link_exists("eth0", ns)
        await restarted.delete(f"pod{i}-{bridge}")  # idempotent
    assert restarted.cached_result(f"pod0-{bridge}") is None
    leases = [p.name for p in (tmp / "ipam").rglob("*") if p.is_file() and p.name[0].isdigit()]
    assert leases == []


async def test_del_with_vanished_netns_releases_lease(
    bridge_env: tuple[CniClient, str, str, Path], netns_pair: list[str]
) -> None:
    client, bridge, _subnet, tmp = bridge_env
    await client.add(Attachment(f"gone-{bridge}", netns_pair[0]))
    subprocess.run(["ip", "netns", "del", netns_pair[0].rsplit("/", 1)[1]], check=True)
    await client.delete(f"gone-{bridge}", netns="")
    leases = [p.name for p in (tmp / "ipam").rglob("*") if p.is_file() and p.name[0].isdigit()]
    assert leases == []
