"""Pure builders and the manager over the fake netlink seam (no root needed)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from app.config import NetworkSettings
from app.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, VappError
from app.runtime.network import NetworkHook, PortMapping, parse_mode, parse_port
from app.runtime.network.bridge import overlapping_routes, veth_names
from app.runtime.network.diag import interface_ip, interface_ips, network_diagnostics
from app.runtime.network.dns import build_hosts, build_resolv_conf, parse_resolv_conf, write_in_place
from app.runtime.network.manager import NetworkManager
from app.runtime.network.netlink import Address, FakeNetlink, Route
from app.runtime.network.nft import FakeNft, container_removal_script, container_script, stale_removal_script
from app.runtime.network.store import NetworkStore, pick_address
from app.runtime.network.usermode import pasta_argv
from app.state.db import open_database
from tests.helpers.ports import free_port


def test_modes() -> None:
    assert parse_mode(None)[0].value == "host"
    assert parse_mode("bridge")[0].value == "pod"
    assert parse_mode("private")[0].value == "pod"
    assert parse_mode("container:abc") == (parse_mode("container:x")[0], "abc")
    assert parse_mode("app:web")[1] == "web"
    for bad in ("nat", "container:"):
        with pytest.raises(InvalidArgument):
            parse_mode(bad)


def test_ports() -> None:
    assert parse_port("8080:80") == PortMapping(8080, 80)
    assert parse_port("127.0.0.1:53:5353/udp") == PortMapping(53, 5353, "udp", "127.0.0.1")
    assert parse_port("[::1]:8080:80") == PortMapping(8080, 80, "tcp", "::1")
    assert parse_port("443") == PortMapping(443, 443)
    assert parse_port({"host_port": 1, "container_port": 2}) == PortMapping(1, 2)
    assert parse_port({"hostPort": 1, "containerPort": 2, "protocol": "UDP", "hostIP": "127.0.0.1"}) == PortMapping(
        1, 2, "udp", "127.0.0.1")
    with pytest.raises(InvalidArgument):
        parse_port({"container_port": 2})
    for bad in ("70000:80", "a:b", "1:2/sctp", "1.2.3:80:80", "1:2:3:4"):
        with pytest.raises(InvalidArgument):
            parse_port(bad)


def test_resolv_conf_drops_loopback_resolvers() -> None:
    host = "# c\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nsearch a.example b.example\noptions ndots:2\n"
    assert parse_resolv_conf(host).nameservers == ["127.0.0.53", "10.1.1.1"]
    text = build_resolv_conf(host)
    assert "127.0.0.53" not in text and "nameserver 10.1.1.1" in text
    assert "search a.example b.example" in text and "options ndots:2" in text
    only_lo = build_resolv_conf("nameserver 127.0.0.53\n", fallback=["10.0.2.3"])
    assert only_lo.splitlines() == ["nameserver 10.0.2.3"]
    assert "127.0.0.53" in build_resolv_conf("nameserver 127.0.0.53\n", keep_loopback=True)
    configured = build_resolv_conf(host, servers=["9.9.9.9"], search=["corp"])
    assert "nameserver 9.9.9.9" in configured and "10.1.1.1" not in configured and "search corp" in configured
    with pytest.raises(InvalidArgument):
        build_resolv_conf(host, servers=["dns.example"])


def test_hosts() -> None:
    text = build_hosts("web", ["10.88.0.5/16"], {"docker-proxy.internal": "10.88.0.1"})
    assert "10.88.0.5\tweb" in text and "10.88.0.1\tdocker-proxy.internal" in text
    assert text.startswith("127.0.0.1\tlocalhost")
    assert "127.0.1.1\tweb" in build_hosts("web", [])
    with pytest.raises(InvalidArgument):
        build_hosts(None, [], {"x": "not-an-ip"})


def test_write_in_place_keeps_inode(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    write_in_place(f, "a long first version\n")
    ino = f.stat().st_ino
    write_in_place(f, "short\n")
    assert f.stat().st_ino == ino and f.read_text() == "short\n"


def test_nft_scripts() -> None:
    ports = [PortMapping(8080, 80, "tcp", "127.0.0.1"), PortMapping(5353, 53, "udp", "0.0.0.0")]
    script = container_script("t", "abc", "10.88.0.2", ports)
    assert "ip daddr 127.0.0.1 tcp dport 8080 dnat ip to 10.88.0.2:80" in script
    assert "fib daddr type local udp dport 5353 dnat ip to 10.88.0.2:53" in script
    assert "add element inet t ports { tcp . 8080 : jump c-abc, udp . 5353 : jump c-abc }" in script
    assert container_script("t", "abc", "10.88.0.2", []) == ""
    removal = container_removal_script("t", "abc", ports)
    assert "delete element inet t ports { tcp . 8080, udp . 5353 }" in removal
    assert "delete chain inet t c-abc" in removal
    listed = {"nftables": [{"map": {"name": "ports", "elem": [
        [{"concat": ["tcp", 8080]}, {"jump": {"target": "c-abc"}}],
        [{"concat": ["tcp", 9090]}, {"jump": {"target": "c-other"}}]]}}]}
    stale = stale_removal_script("t", listed, {"c-abc"})
    assert "tcp . 8080" in stale and "9090" not in stale


def test_address_picking_and_overlap() -> None:
    assert pick_address("10.0.0.0/29", []) == "10.0.0.2"
    assert pick_address("10.0.0.0/29", ["10.0.0.2", "10.0.0.4"]) == "10.0.0.3"
    assert pick_address("10.0.0.0/30", ["10.0.0.2"]) is None
    routes = [("default", "eth0"), ("10.88.0.0/16", "vapp0"), ("10.0.0.0/8", "eth1"), ("192.168.0.0/24", "x")]
    assert overlapping_routes("10.88.0.0/16", "vapp0", routes) == ["10.0.0.0/8 dev eth1"]
    host, peer = veth_names("vapp0", "c" * 64)
    assert len(host) <= 15 and len(peer) <= 15 and host != veth_names("vapp1", "c" * 64)[0]


def test_pasta_argv() -> None:
    argv = pasta_argv("pasta", Path("/r/p.pid"), 42, [PortMapping(8080, 80, "tcp", "127.0.0.1")], ipv6=False)
    assert argv[-1] == "42" and "-4" in argv
    assert argv[argv.index("-t") + 1] == "127.0.0.1/8080:80" and argv[argv.index("-u") + 1] == "none"
    assert argv[argv.index("-T"):argv.index("-T") + 2] == ["-T", "none"]
    by_path = pasta_argv("pasta", Path("/p"), "/run/netns/x", [], ipv6=True)
    assert "-4" not in by_path and by_path[-2:] == ["--netns", "/run/netns/x"]


def test_diag_over_fake() -> None:
    nl = FakeNetlink(host_routes=[Route("default", "192.0.2.1", "eth0")])
    nl.ns[None].addrs += [Address("eth0", "192.0.2.2/24"), Address("eth0", "fe80::1/64"),
                          Address("eth1", "2001:db8::5/64"), Address("eth1", "198.51.100.7/24")]
    assert interface_ip("eth0", nl) == "192.0.2.2"
    assert interface_ips("eth*", nl) == ["192.0.2.2", "198.51.100.7", "2001:db8::5"]
    assert interface_ip("wlan0", nl) is None
    diag = network_diagnostics(nl, attachments=[])
    assert "default via 192.0.2.1 dev eth0" in diag["routes"]


# --- the manager over the fake seam -------------------------------------------------------


def _manager(tmp_path: Path, db_url: str, nl: FakeNetlink, nft: FakeNft, subnet: str = "10.77.0.0/29"
             ) -> NetworkManager:
    settings = NetworkSettings(bridge="vt0", subnet=subnet, extra_hosts={"docker-proxy.internal": "10.77.0.1"})
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 10.9.9.9\n")
    return NetworkManager(settings, NetworkStore(open_database(db_url)), tmp_path / "run", nl, nft,
                          rootless=False, host_resolv_conf=resolv)


def _fake_ns(tmp_path: Path, nl: FakeNetlink, name: str) -> str:
    """A regular file stands in for a netns path: its inode is its identity, as for nsfs."""
    path = tmp_path / f"ns-{name}"
    path.write_text("")
    nl.add_netns(str(path))
    return str(path)


def test_manager_bridge_lifecycle_and_restart(tmp_path: Path) -> None:
    async def run() -> None:
        nl, nft = FakeNetlink(), FakeNft()
        url = f"sqlite:///{tmp_path}/v.db"
        m = _manager(tmp_path, url, nl, nft)
        assert isinstance(m, NetworkHook)
        a, b = _fake_ns(tmp_path, nl, "a"), _fake_ns(tmp_path, nl, "b")
        port = free_port()
        att = await m.setup("a", "pod", [f"{port}:80"], a, hostname="alpha")
        assert att["addresses"] == ["10.77.0.2/29"] and att["gateway"] == "10.77.0.1"
        assert att["ports"] == [{"host_port": port, "container_port": 80, "protocol": "tcp", "host_ip": "127.0.0.1"}]
        assert await m.setup("a", "pod", [f"{port}:80"], a) == att  # idempotent
        hosts = (tmp_path / "run/network/a/hosts").read_text()
        assert "10.77.0.2\talpha" in hosts and "docker-proxy.internal" in hosts
        assert "127.0.0.53" not in (tmp_path / "run/network/a/resolv.conf").read_text()
        await m.setup("b", "bridge", [], b)
        shared = await m.setup("s", "container:a", [], None)
        assert shared["netns"] == a and shared["addresses"] == att["addresses"]
        with pytest.raises(NotFound):
            await m.setup("t", "container:nope", [], None)

        # A restart: a new manager on the same database. "b" died meanwhile; "a" lives on.
        nl.remove_netns(b)
        os.unlink(b)
        m2 = _manager(tmp_path, url, nl, nft)
        removed = await m2.reconcile()
        assert "b" in removed and "a" not in removed
        c = _fake_ns(tmp_path, nl, "c")
        att_c = await m2.setup("c", "pod", [], c)
        assert att_c["addresses"] == ["10.77.0.3/29"]  # b's address is free again, a's is not reused
        leases = {lease.address for lease in m2.store.leases()}
        assert leases == {"10.77.0.2", "10.77.0.3"}

        await m2.teardown("a")
        await m2.teardown("a")  # idempotent
        await m2.teardown("c")
        await m2.teardown("s")
        assert m2.store.leases() == [] and nft.chains() == set()
        assert [link.name for link in nl.links(None) if link.name.startswith("vv")] == []
        assert not (tmp_path / "run/network/a").exists()

    asyncio.run(run())


def test_manager_errors_leave_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        nl, nft = FakeNetlink(), FakeNft()
        m = _manager(tmp_path, f"sqlite:///{tmp_path}/v.db", nl, nft, subnet="10.77.0.0/30")
        a, b = _fake_ns(tmp_path, nl, "a"), _fake_ns(tmp_path, nl, "b")
        with pytest.raises(InvalidArgument):
            await m.setup("x", "host", ["80:80"], None)
        with pytest.raises(InvalidArgument):
            await m.setup("x", "pod", ["80:80", "80:81"], a)
        with pytest.raises(InvalidArgument):
            await m.setup("x", "pod", [], None)
        await m.setup("a", "pod", [f"{free_port()}:80"], a)
        with pytest.raises(VappError) as full:  # a /30 has one container address
            await m.setup("b", "pod", [], b)
        assert full.value.kind.value == "resource_exhausted"
        await m.teardown("a")
        assert await m.attachments() == [] and m.store.leases() == []

    asyncio.run(run())


def test_subnet_overlap_refused(tmp_path: Path) -> None:
    async def run() -> None:
        nl, nft = FakeNetlink(host_routes=[Route("10.77.0.0/16", None, "eth1")]), FakeNft()
        m = _manager(tmp_path, f"sqlite:///{tmp_path}/v.db", nl, nft)
        a = _fake_ns(tmp_path, nl, "a")
        with pytest.raises(FailedPrecondition, match="overlaps"):
            await m.setup("a", "pod", [], a)
        assert m.store.leases() == [] and await m.attachments() == []

    asyncio.run(run())


def test_port_conflict_between_containers(tmp_path: Path) -> None:
    async def run() -> None:
        nl, nft = FakeNetlink(), FakeNft()
        m = _manager(tmp_path, f"sqlite:///{tmp_path}/v.db", nl, nft)
        a, b = _fake_ns(tmp_path, nl, "a"), _fake_ns(tmp_path, nl, "b")
        port = free_port()
        await m.setup("a", "pod", [f"{port}:80"], a)
        with pytest.raises(AlreadyExists):
            await m.setup("b", "pod", [f"{port}:81"], b)
        assert [x["container_id"] for x in await m.attachments()] == ["a"]
        assert len(m.store.leases()) == 1

    asyncio.run(run())


def test_attachment_json_roundtrip(tmp_path: Path) -> None:
    async def run() -> None:
        nl, nft = FakeNetlink(), FakeNft()
        m = _manager(tmp_path, f"sqlite:///{tmp_path}/v.db", nl, nft)
        await m.setup("h", "host", [], None, hostname="node")
        got = await m.get("h")
        assert json.loads(json.dumps(got)) == got and got["driver"] == "host" and got["netns"] is None
        assert "127.0.0.53" in (tmp_path / "run/network/h/resolv.conf").read_text()  # host keeps loopback

    asyncio.run(run())


def test_admin_routes(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from app.api.http.routes_network import router
    from app.errors import HTTP_STATUS

    nl, nft = FakeNetlink(host_routes=[Route("default", "192.0.2.1", "eth0")]), FakeNft()
    m = _manager(tmp_path, f"sqlite:///{tmp_path}/v.db", nl, nft)
    asyncio.run(m.setup("web", "pod", [f"{free_port()}:80"], _fake_ns(tmp_path, nl, "web")))
    app = FastAPI()
    app.state.node = SimpleNamespace(network=m)

    @app.exception_handler(VappError)
    async def _err(_req: object, exc: VappError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=HTTP_STATUS[exc.kind])

    app.include_router(router, prefix="/v1")
    client = TestClient(app)
    listing = client.get("/v1/networks").json()
    assert listing["driver"] == "bridge" and listing["attachments"][0]["container_id"] == "web"
    one = client.get("/v1/networks/web").json()
    assert one["addresses"] == ["10.77.0.2/29"] and one["ports"][0]["container_port"] == 80
    assert client.get("/v1/networks/nope").status_code == 404
    assert "web mode=pod driver=bridge" in m.diagnostics()["attachments"]
    diag = client.get("/v1/networks/diagnostics").json()
    assert "web mode=pod driver=bridge addresses=10.77.0.2/29" in diag["attachments"]
    assert "default via 192.0.2.1" in diag["routes"]
