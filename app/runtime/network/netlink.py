"""The network part's kernel seam: the few netlink operations it needs, real and fake.

Everything that touches links, addresses and routes goes through :class:`Netlink`.
:class:`PyrouteNetlink` is the real one (pyroute2). :class:`FakeNetlink` keeps an
in-memory model of namespaces so the bridge driver and the manager are unit
tested without root.

Namespaces are named by path (``/proc/<pid>/ns/net``, ``/run/netns/<name>``);
``None`` is the daemon's own namespace. The real implementation never forks
(the daemon is threaded): it opens the netlink socket inside the target netns
from a short-lived thread that ``setns(CLONE_NEWNET)``\\ s itself and back
(network namespaces are per thread), then hands the socket's fd to pyroute2.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.errors import Category, FailedPrecondition, Internal, NotFound, PermissionDenied

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str = ""  # "bridge", "veth", "tun", "" (loopback / physical)
    up: bool = False
    master: str | None = None
    mac: str = ""


@dataclass(frozen=True)
class Address:
    ifname: str
    cidr: str  # "10.88.0.5/16"


@dataclass(frozen=True)
class Route:
    dst: str  # "default" or a CIDR
    gateway: str | None = None
    dev: str | None = None


class Netlink(Protocol):
    """Links, addresses and routes in the node's or a container's namespace.

    Mutations are idempotent where that is natural (``delete_link`` of a missing
    link is a no-op, ``ensure_bridge`` on an existing bridge just fixes it up).
    """

    def links(self, netns: str | None = None) -> list[Link]: ...
    def addresses(self, netns: str | None = None) -> list[Address]: ...
    def routes(self, netns: str | None = None) -> list[Route]: ...
    def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int = 1500) -> None: ...
    def add_veth(self, host_name: str, peer_name: str, bridge: str, netns: str, mtu: int = 1500) -> None: ...
    def configure(self, netns: str, ifname: str, cidr: str | None, gateway: str | None,
                  rename_to: str | None = None) -> None: ...
    def set_up(self, ifname: str, netns: str | None = None) -> None: ...
    def delete_link(self, name: str, netns: str | None = None) -> None: ...
    def set_sysctl(self, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` in the node's namespace (``net/ipv4/ip_forward``)."""
        ...


_libc = ctypes.CDLL(None, use_errno=True)


def _netlink_socket_in(netns: str) -> socket.socket:
    """Open an AF_NETLINK/NETLINK_ROUTE socket that lives in ``netns``, without forking."""
    result: dict[str, Any] = {}

    def run() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(netns, os.O_RDONLY)
        except OSError as exc:
            os.close(own)
            result["error"] = exc
            return
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                result["error"] = OSError(err, f"setns({netns}): {os.strerror(err)}")
                return
            result["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
        finally:
            # Always step back: a thread left in a container's netns would be reused by nobody,
            # but make the invariant obvious.
            _libc.setns(own, CLONE_NEWNET)
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=run, name="netns-socket")
    thread.start()
    thread.join()
    if "error" in result:
        exc = result["error"]
        if exc.errno == errno.ENOENT:
            raise NotFound(f"network namespace {netns} is gone", category=Category.NETWORK) from exc
        if exc.errno == errno.EPERM:
            raise PermissionDenied(f"cannot enter network namespace {netns}: {exc.strerror}",
                                   category=Category.NETWORK) from exc
        raise Internal(f"cannot enter network namespace {netns}: {exc}", category=Category.NETWORK) from exc
    sock: socket.socket = result["sock"]
    return sock


def _index(ipr: Any, ifname: str) -> int | None:
    """One RTM_GETLINK by name (a dump per lookup costs a lot with many links)."""
    try:
        return int(ipr.link("get", ifname=ifname)[0]["index"])
    except Exception as exc:
        if type(exc).__name__ == "NetlinkError" and exc.args and exc.args[0] == errno.ENODEV:
            return None
        raise


class PyrouteNetlink:
    """The real seam over pyroute2's synchronous ``IPRoute`` (call it from a worker thread)."""

    @contextmanager
    def _ipr(self, netns: str | None) -> Iterator[Any]:
        from pyroute2 import IPRoute

        if netns is None:
            ipr = IPRoute()
        else:
            sock = _netlink_socket_in(netns)
            fd = os.dup(sock.fileno())
            sock.close()
            ipr = IPRoute(fileno=fd)
        try:
            yield ipr
        except Exception as exc:
            if type(exc).__name__ == "NetlinkError":
                code = exc.args[0] if exc.args else 0
                raise Internal(f"netlink: {os.strerror(code) if code else exc}",
                               category=Category.NETWORK, details={"errno": code}) from exc
            raise
        finally:
            ipr.close()

    def links(self, netns: str | None = None) -> list[Link]:
        with self._ipr(netns) as ipr:
            msgs = list(ipr.link("dump"))
            names = {m["index"]: m.get("ifname") for m in msgs}
            out = []
            for m in msgs:
                info = m.get("IFLA_LINKINFO")
                kind = info.get("IFLA_INFO_KIND") if info else None
                master = m.get("IFLA_MASTER")
                out.append(Link(name=m.get("ifname"), index=m["index"], kind=kind or "",
                                up=bool(m["flags"] & 1), master=names.get(master) if master else None,
                                mac=m.get("IFLA_ADDRESS") or ""))
            return out

    def addresses(self, netns: str | None = None) -> list[Address]:
        with self._ipr(netns) as ipr:
            names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
            return [
                Address(names.get(m["index"], str(m["index"])), f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
                for m in ipr.addr("dump")
            ]

    def routes(self, netns: str | None = None) -> list[Route]:
        with self._ipr(netns) as ipr:
            names = {m["index"]: m.get("ifname") for m in ipr.link("dump")}
            out = []
            for family in (socket.AF_INET, socket.AF_INET6):
                for m in ipr.route("dump", family=family, table=254):
                    dst = m.get("RTA_DST")
                    out.append(Route(dst=f"{dst}/{m['dst_len']}" if dst else "default",
                                     gateway=m.get("RTA_GATEWAY"), dev=names.get(m.get("RTA_OIF"))))
            return out

    def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int = 1500) -> None:
        with self._ipr(None) as ipr:
            if not ipr.link_lookup(ifname=name):
                try:
                    ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
                except Exception as exc:  # a concurrent start created it first
                    if not (exc.args and exc.args[0] == errno.EEXIST):
                        raise
            idx = ipr.link_lookup(ifname=name)[0]
            iface = ipaddress.ip_interface(gateway_cidr)
            have = {(m.get("IFA_ADDRESS"), m["prefixlen"]) for m in ipr.addr("dump", index=idx)}
            if (str(iface.ip), iface.network.prefixlen) not in have:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=idx, state="up")

    def add_veth(self, host_name: str, peer_name: str, bridge: str, netns: str, mtu: int = 1500) -> None:
        # One request: the peer is born inside the container's netns (so its final name, e.g. eth0,
        # never clashes in ours) and the host end is born up and enslaved to the bridge.
        with self._ipr(None) as ipr:
            bridge_idx = ipr.link("get", ifname=bridge)[0]["index"]
            fd = os.open(netns, os.O_RDONLY)
            try:
                ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, master=bridge_idx, state="up",
                         peer={"ifname": peer_name, "net_ns_fd": fd, "mtu": mtu})
            finally:
                os.close(fd)

    def configure(self, netns: str, ifname: str, cidr: str | None, gateway: str | None,
                  rename_to: str | None = None) -> None:
        with self._ipr(netns) as ipr:
            idx = _index(ipr, ifname)
            if idx is None:
                raise NotFound(f"no link {ifname} in {netns}", category=Category.NETWORK)
            if rename_to and rename_to != ifname:
                ipr.link("set", index=idx, ifname=rename_to)
            if cidr:
                iface = ipaddress.ip_interface(cidr)
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=1, state="up")  # lo is always index 1 in a network namespace
            if gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=idx)

    def set_up(self, ifname: str, netns: str | None = None) -> None:
        with self._ipr(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise NotFound(f"no link {ifname}", category=Category.NETWORK)
            ipr.link("set", index=found[0], state="up")

    def delete_link(self, name: str, netns: str | None = None) -> None:
        try:
            with self._ipr(netns) as ipr:
                idx = _index(ipr, name)
                if idx is not None:
                    ipr.link("del", index=idx)
        except NotFound:
            return  # the namespace is gone, and the link with it
        except Internal as exc:
            if exc.details.get("errno") != errno.ENODEV:  # deleted meanwhile (its peer's netns died)
                raise

    def set_sysctl(self, key: str, value: str) -> None:
        path = f"/proc/sys/{key}"
        try:
            with open(path) as fh:
                if fh.read().strip() == value:
                    return
            with open(path, "w") as fh:
                fh.write(value)
        except OSError as exc:
            raise FailedPrecondition(f"cannot set {key}={value}: {exc.strerror}", category=Category.NETWORK) from exc


@dataclass
class _FakeNs:
    links: dict[str, Link] = field(default_factory=dict)
    addrs: list[Address] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


class FakeNetlink:
    """An in-memory model of namespaces for unit tests; records every call in ``calls``."""

    def __init__(self, host_routes: list[Route] | None = None) -> None:
        lo = Link("lo", 1)
        self.ns: dict[str | None, _FakeNs] = {None: _FakeNs(links={"lo": lo}, routes=list(host_routes or []))}
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.sysctls: dict[str, str] = {}
        self._next = 2

    def set_sysctl(self, key: str, value: str) -> None:
        self.sysctls[key] = value

    def add_netns(self, path: str) -> None:
        self.ns[path] = _FakeNs(links={"lo": Link("lo", 1)})

    def remove_netns(self, path: str) -> None:
        gone = self.ns.pop(path, None)
        if gone:  # a veth peer dies with its namespace, and so does its host end
            for link in gone.links.values():
                if link.kind == "veth":
                    host = self.ns[None]
                    for name, other in list(host.links.items()):
                        if other.kind == "veth" and other.mac == link.mac:
                            del host.links[name]

    def _get(self, netns: str | None) -> _FakeNs:
        if netns not in self.ns:
            raise NotFound(f"network namespace {netns} is gone", category=Category.NETWORK)
        return self.ns[netns]

    def _new(self, name: str, kind: str, **kw: Any) -> Link:
        self._next += 1
        return Link(name, self._next, kind, **kw)

    def links(self, netns: str | None = None) -> list[Link]:
        return list(self._get(netns).links.values())

    def addresses(self, netns: str | None = None) -> list[Address]:
        return list(self._get(netns).addrs)

    def routes(self, netns: str | None = None) -> list[Route]:
        return list(self._get(netns).routes)

    def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int = 1500) -> None:
        self.calls.append(("ensure_bridge", (name, gateway_cidr)))
        host = self._get(None)
        host.links.setdefault(name, self._new(name, "bridge", up=True))
        if Address(name, gateway_cidr) not in host.addrs:
            host.addrs.append(Address(name, gateway_cidr))
            net = ipaddress.ip_interface(gateway_cidr).network
            host.routes.append(Route(str(net), None, name))

    def add_veth(self, host_name: str, peer_name: str, bridge: str, netns: str, mtu: int = 1500) -> None:
        self.calls.append(("add_veth", (host_name, peer_name, bridge, netns)))
        host, target = self._get(None), self._get(netns)
        if host_name in host.links:
            raise FailedPrecondition(f"link {host_name} exists", category=Category.NETWORK)
        tag = f"veth-{self._next}"
        host.links[host_name] = self._new(host_name, "veth", up=True, master=bridge, mac=tag)
        target.links[peer_name] = self._new(peer_name, "veth", mac=tag)

    def configure(self, netns: str, ifname: str, cidr: str | None, gateway: str | None,
                  rename_to: str | None = None) -> None:
        self.calls.append(("configure", (netns, ifname, cidr, gateway, rename_to)))
        ns = self._get(netns)
        link = ns.links.pop(ifname)
        name = rename_to or ifname
        ns.links[name] = Link(name, link.index, link.kind, True, None, link.mac)
        ns.links["lo"] = Link("lo", 1, "", True)
        if cidr:
            ns.addrs.append(Address(name, cidr))
        if gateway:
            ns.routes.append(Route("default", gateway, name))

    def set_up(self, ifname: str, netns: str | None = None) -> None:
        self.calls.append(("set_up", (ifname, netns)))
        ns = self._get(netns)
        link = ns.links[ifname]
        ns.links[ifname] = Link(link.name, link.index, link.kind, True, link.master, link.mac)

    def delete_link(self, name: str, netns: str | None = None) -> None:
        self.calls.append(("delete_link", (name, netns)))
        if netns not in self.ns:
            return
        ns = self.ns[netns]
        link = ns.links.pop(name, None)
        ns.addrs = [a for a in ns.addrs if a.ifname != name]
        if link is not None and link.kind == "veth":  # the peer goes too, wherever it is
            for other in self.ns.values():
                for n, peer in list(other.links.items()):
                    if peer.kind == "veth" and peer.mac == link.mac:
                        del other.links[n]
