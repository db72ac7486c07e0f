"""Root pod networking: a Linux bridge, one veth pair per container, leased addresses, nftables NAT.

::

    node netns                                        container netns
    vapp0 10.88.0.1/16 ──┬── vv<hash> (veth, master vapp0) ═══ eth0 10.88.0.N/16
                         │                                  default via 10.88.0.1
                         └── vv<hash'> ═══ eth0 of another container (same L2: they reach each other)
    table inet vapp: masquerade 10.88.0.0/16 → outside; DNAT host_ip:H → 10.88.0.N:C; hairpin

Steps of :meth:`BridgeNetwork.attach` and their undo, run in reverse on any failure
and by :meth:`detach` (each undo is idempotent, so detach after a crash at any step
finishes the job)::

    lease address        ↔ release lease
    veth + configure     ↔ delete host end (the peer dies with it)
    DNAT chain           ↔ delete map elements + chain
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from collections.abc import Sequence

from app.errors import Category, FailedPrecondition, VappError
from app.runtime.network.netlink import Netlink
from app.runtime.network.nft import Rules
from app.runtime.network.store import NetworkStore, gateway_of
from app.runtime.network.types import PortMapping


def veth_names(bridge: str, container_id: str) -> tuple[str, str]:
    """Host and temporary peer names (IFNAMSIZ is 16): unique per bridge and container."""
    digest = hashlib.sha256(f"{bridge}/{container_id}".encode()).hexdigest()[:11]
    return f"vv{digest}", f"vp{digest}"


def overlapping_routes(subnet: str, bridge: str, routes: Sequence[tuple[str, str | None]]) -> list[str]:
    """Host routes (dst, dev) that overlap ``subnet`` and are not our bridge's own (pure)."""
    net = ipaddress.ip_network(subnet)
    out = []
    for dst, dev in routes:
        if dst == "default" or dev == bridge:
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.version == net.version and other.overlaps(net):
            out.append(f"{dst} dev {dev}")
    return out


class BridgeNetwork:
    """One bridge and its subnet. Blocking calls: run them in a worker thread."""

    def __init__(self, netlink: Netlink, nft: Rules, store: NetworkStore, *, bridge: str, subnet: str,
                 mtu: int = 1500) -> None:
        self.netlink, self.nft, self.store = netlink, nft, store
        self.bridge, self.subnet, self.mtu = bridge, str(ipaddress.ip_network(subnet)), mtu
        self.gateway = gateway_of(self.subnet)
        self.prefix = ipaddress.ip_network(self.subnet).prefixlen
        self._ready = False
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Create the bridge, its address and NAT rules once; refuse a subnet the node already routes."""
        with self._lock:
            if self._ready:
                return
            routes = [(r.dst, r.dev) for r in self.netlink.routes(None)]
            clash = overlapping_routes(self.subnet, self.bridge, routes)
            if clash:
                raise FailedPrecondition(
                    f"bridge subnet {self.subnet} overlaps the node's routes ({'; '.join(clash)}): "
                    "choose another network.subnet", category=Category.NETWORK,
                    details={"subnet": self.subnet, "routes": clash})
            self.netlink.ensure_bridge(self.bridge, f"{self.gateway}/{self.prefix}", self.mtu)
            # Forwarding for outbound NAT; route_localnet so DNAT from 127.0.0.1 may leave via the bridge.
            self.netlink.set_sysctl("net/ipv4/ip_forward", "1")
            self.netlink.set_sysctl(f"net/ipv4/conf/{self.bridge}/route_localnet", "1")
            self.nft.add_network(self.bridge, self.subnet)
            self._ready = True

    def attach(self, container_id: str, netns: str, ports: Sequence[PortMapping]) -> str:
        """Wire the container in; returns its CIDR. Undoes its own steps on failure."""
        self.ensure()
        host_if, _ = veth_names(self.bridge, container_id)
        address = self.store.allocate(self.bridge, self.subnet, container_id)
        try:
            self.netlink.delete_link(host_if)  # a leftover from a crash in the middle of a setup
            self.netlink.add_veth(host_if, "eth0", self.bridge, netns, self.mtu)
            self.netlink.configure(netns, "eth0", f"{address}/{self.prefix}", self.gateway)
            self.nft.add_container(container_id, address, ports)
        except BaseException as exc:
            self._undo(container_id, ports)
            if isinstance(exc, VappError):
                exc.with_phase("network setup")
            raise
        return f"{address}/{self.prefix}"

    def detach(self, container_id: str, ports: Sequence[PortMapping]) -> None:
        self._undo(container_id, ports)

    def _undo(self, container_id: str, ports: Sequence[PortMapping]) -> None:
        host_if, _ = veth_names(self.bridge, container_id)
        if ports:
            self.nft.remove_container(container_id, ports)
        self.netlink.delete_link(host_if)
        self.store.release(container_id)

    def destroy(self) -> None:
        """Uninstall/reset: the network's rules and the bridge itself."""
        self.nft.remove_network(self.bridge)
        self.netlink.delete_link(self.bridge)
        with self._lock:
            self._ready = False
