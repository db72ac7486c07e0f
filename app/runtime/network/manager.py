"""NetworkManager: the :class:`~app.runtime.network.NetworkHook` the container service calls.

State per container (``net_attachment`` row + ``<run_dir>/network/<id>/``)::

    setup ─▶ lease, veth, nft chain / helper (+pidfile) ─▶ row written (mode, driver, netns + inode)
             │ reconcile() at start: rows whose namespace died are torn down; leases, veths on
             ▼ our bridge, nft chains and run dirs without a live row are swept (crash mid-setup)
    teardown ─▶ helper stopped, bridge detached, files removed, row + lease deleted

    <run_dir>/network/<id>/  resolv.conf  hosts  hostname   (bind these into the container)
                             helper.pid (pasta)  slirp.sock slirp.pid slirp.log (slirp4netns)

Blocking work (netlink, nft, helpers, SQLite) runs in worker threads; one asyncio lock
per container id serialises setup/teardown of the same container.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.config import NetworkSettings, Settings
from app.errors import AlreadyExists, Category, InvalidArgument, NotFound, VappError
from app.runtime.network import dns, netns, usermode
from app.runtime.network.bridge import BridgeNetwork, veth_names
from app.runtime.network.netlink import Netlink, PyrouteNetlink
from app.runtime.network.nft import Nft, Rules, chain_name
from app.runtime.network.store import NetworkStore, dump
from app.runtime.network.types import NetworkMode, PortMapping, parse_mode, parse_port
from app.state.db import Database
from app.state.models.network import NetAttachment


def attachment_dict(att: NetAttachment) -> dict[str, Any]:
    """The JSON shape documented on :class:`NetworkHook` (admin API, RunDiagnostic)."""
    return {"container_id": att.container_id, "mode": att.mode, "driver": att.driver,
            "network": att.network or None, "netns": att.netns, "addresses": json.loads(att.addresses),
            "gateway": att.gateway, "ports": json.loads(att.ports), "helper_pids": json.loads(att.helper_pids),
            "shared_with": att.shared_with, "hostname": att.hostname}


class NetworkManager:
    def __init__(self, settings: NetworkSettings, store: NetworkStore, run_dir: Path, netlink: Netlink,
                 nft: Rules, *, rootless: bool | None = None, host_resolv_conf: Path = Path("/etc/resolv.conf"),
                 host_hosts: Path = Path("/etc/hosts")) -> None:
        self.settings, self.store, self.netlink, self.nft = settings, store, netlink, nft
        self.dir = run_dir / "network"
        self.rootless = os.geteuid() != 0 if rootless is None else rootless
        self.host_resolv_conf = host_resolv_conf
        self.host_hosts = host_hosts
        self.bridge = BridgeNetwork(netlink, nft, store, bridge=settings.bridge, subnet=settings.subnet,
                                    mtu=settings.mtu)
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def pod_driver(self) -> str:
        if self.settings.pod_driver == "auto":
            return "usermode" if self.rootless else "bridge"
        return self.settings.pod_driver

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    # --- the hook ---------------------------------------------------------------------
    async def setup(self, container_id: str, mode: str, ports: Sequence[PortMapping | str | dict[str, Any]] = (),
                    target: int | str | None = None, *, hostname: str | None = None) -> dict[str, Any]:
        kind, shared = parse_mode(mode)
        mappings = [parse_port(p).with_host_ip(self.settings.publish_address) for p in ports]
        if mappings and kind is not NetworkMode.POD:
            raise InvalidArgument(f"ports can only be published in pod mode, not {mode!r}",
                                  category=Category.NETWORK)
        _check_unique(mappings)
        async with self._lock(container_id):
            existing = await asyncio.to_thread(self.store.get, container_id)
            if existing is not None:
                if existing.mode != kind.value:
                    raise InvalidArgument(f"{container_id} is already attached in mode {existing.mode}",
                                          category=Category.NETWORK)
                return attachment_dict(existing)
            try:
                att = await asyncio.to_thread(self._setup, container_id, kind, shared, mappings, target, hostname)
            except VappError as exc:
                raise exc.with_phase("network setup") from None
            return attachment_dict(att)

    async def teardown(self, container_id: str) -> None:
        async with self._lock(container_id):
            await asyncio.to_thread(self._teardown, container_id)
        self._locks.pop(container_id, None)

    def netns_path(self, container_id: str) -> str | None:
        att = self.store.get(container_id)
        return att.netns if att else None

    # --- introspection, reconcile, reset ----------------------------------------------------
    async def attachments(self) -> list[dict[str, Any]]:
        return [attachment_dict(a) for a in await asyncio.to_thread(self.store.all)]

    async def get(self, container_id: str) -> dict[str, Any]:
        att = await asyncio.to_thread(self.store.get, container_id)
        if att is None:
            raise NotFound(f"no network attachment for {container_id}", category=Category.NETWORK)
        return attachment_dict(att)

    def diagnostics(self) -> dict[str, str]:
        """RunDiagnostic's network sections (blocking; the caller runs it in a thread):
        ``interfaces``, ``routes`` and one ``attachments`` line per container."""
        from app.runtime.network.diag import network_diagnostics

        return network_diagnostics(self.netlink, [attachment_dict(a) for a in self.store.all()])

    async def reconcile(self) -> list[str]:
        """At start: tear down attachments whose namespace is gone; drop orphan rules/links/leases."""
        return await asyncio.to_thread(self._reconcile)

    async def reset(self) -> None:
        """Uninstall/reset: every attachment, the nft table and the bridge."""
        for att in await asyncio.to_thread(self.store.all):
            await self.teardown(att.container_id)
        if not self.rootless:  # rootless nodes never create rules or bridges
            await asyncio.to_thread(self.nft.destroy)
            await asyncio.to_thread(self.bridge.destroy)

    # --- blocking internals ---------------------------------------------------------------
    def _setup(self, cid: str, kind: NetworkMode, shared: str | None, ports: list[PortMapping],
               target: int | str | None, hostname: str | None) -> NetAttachment:
        att = NetAttachment(container_id=cid, mode=kind.value, driver=kind.value, created_at=time.time(),
                            hostname=hostname, ports=dump([p.to_dict() for p in ports]))
        if isinstance(target, int):
            att.pid = target
        if kind is NetworkMode.CONTAINER:
            assert shared is not None
            other = self.store.get(shared)
            if other is None or other.netns is None:
                raise NotFound(f"container {shared} has no network namespace to join",
                               category=Category.NETWORK, details={"container": shared})
            att.driver, att.shared_with, att.netns, att.netns_ino = "shared", shared, other.netns, other.netns_ino
            att.addresses, att.gateway, att.network = other.addresses, other.gateway, other.network
            self.store.save(att)
            self._write_files(att)
            return att
        if kind is not NetworkMode.HOST:
            if target is None:
                raise InvalidArgument(f"mode {kind.value} needs the container's pid or netns path",
                                      category=Category.NETWORK)
            att.netns = netns.netns_path(target)
            att.netns_ino = netns.netns_inode(att.netns)
        if kind is NetworkMode.POD:
            att.driver = "bridge" if self.pod_driver == "bridge" else "usermode"
            att.network = self.settings.bridge if att.driver == "bridge" else ""
            self._check_ports(cid, ports)
        # No intent row first (a commit costs setup time): whatever a crash leaves before the row is
        # saved (lease, veth, nft chain, helper pidfile) has no live owner and reconcile() sweeps it.
        try:
            if kind is NetworkMode.NONE:
                self._loopback_up(att)
            elif kind is NetworkMode.POD and att.driver == "bridge":
                cidr = self.bridge.attach(cid, att.netns or "", ports)
                att.addresses, att.gateway = dump([cidr]), self.bridge.gateway
            elif kind is NetworkMode.POD:
                self._start_helper(att, ports, target)
            self.store.save(att)
            self._write_files(att)
        except BaseException:
            self._teardown(cid)
            raise
        return att

    def _check_ports(self, cid: str, ports: list[PortMapping]) -> None:
        """A host port is published once per node: by another attachment, or by any other program."""
        wanted = {(p.protocol, p.host_port): p for p in ports}
        for other in self.store.all():
            for raw in json.loads(other.ports):
                taken = parse_port(raw)
                if other.container_id != cid and (taken.protocol, taken.host_port) in wanted:
                    raise AlreadyExists(
                        f"host port {taken.host_port}/{taken.protocol} is already published by {other.container_id}",
                        category=Category.NETWORK, details={"port": taken.to_dict(), "by": other.container_id})
        usermode.check_ports_free(ports)

    def _loopback_up(self, att: NetAttachment) -> None:
        if self.rootless and att.pid is not None:
            netns.loopback_up_via_nsenter(att.pid)
        else:
            self.netlink.set_up("lo", att.netns)

    def _start_helper(self, att: NetAttachment, ports: list[PortMapping], target: int | str | None) -> None:
        assert target is not None
        driver, binary = usermode.find_helper(self.settings.usermode_helper)
        usermode.check_tun()
        work = self.dir / att.container_id
        if driver == "pasta":
            info = usermode.start_pasta(binary, work, target, ports, ipv6=self.settings.ipv6)
        else:
            info = usermode.start_slirp4netns(binary, work, target, ports)
            (work / "slirp.pid").write_text(str(info.pid))
        att.driver = info.driver
        addresses = [info.address]
        if self.settings.ipv6 and driver == "pasta":
            addresses += self._host_v6()  # pasta gives the namespace the node's own IPv6 address
        att.helper_pids, att.addresses, att.gateway = dump([info.pid]), dump(addresses), info.gateway

    def _host_v6(self) -> list[str]:
        """Global IPv6 addresses of the interface holding the node's IPv6 default route."""
        devs = {r.dev for r in self.netlink.routes(None) if r.dst == "default" and r.gateway and ":" in r.gateway}
        return [a.cidr for a in self.netlink.addresses(None)
                if a.ifname in devs and ":" in a.cidr and not a.cidr.lower().startswith("fe80")]

    def _write_files(self, att: NetAttachment) -> None:
        work = self.dir / att.container_id
        try:
            host_text = self.host_resolv_conf.read_text()
        except OSError:
            host_text = ""
        fallback = [usermode.DNS] if att.driver in ("pasta", "slirp4netns") else []
        resolv = dns.build_resolv_conf(host_text, servers=self.settings.dns_servers,
                                       search=self.settings.dns_search, options=self.settings.dns_options,
                                       fallback=fallback, keep_loopback=att.mode == NetworkMode.HOST.value)
        addresses = json.loads(att.addresses) if att.mode != NetworkMode.HOST.value else []
        dns.write_in_place(work / "resolv.conf", resolv)
        dns.write_in_place(work / "hosts", dns.build_hosts(att.hostname, addresses, self.settings.extra_hosts))
        dns.write_in_place(work / "hostname", (att.hostname or att.container_id[:12]) + "\n")

    def prepare_files(self, container_id: str, mode: str, hostname: str | None = None) -> dict[str, str]:
        """Write a container's /etc/{resolv.conf,hosts,hostname} before it is created; return them to bind.

        Every mode gets them (host mode too: the host's resolvers and hosts file plus
        ``extra_hosts`` such as ``docker-proxy.internal``). ``setup`` later rewrites
        them in place with the container's addresses, so binds made now stay valid;
        ``teardown`` removes them. ``container:<id>`` shares the target's files.
        """
        if mode.startswith(("container:", "app:")):
            shared = self.files(mode.split(":", 1)[1])
            if all(Path(p).exists() for p in shared.values()):
                return shared
        host = mode == NetworkMode.HOST.value
        try:
            host_resolv = self.host_resolv_conf.read_text()
        except OSError:
            host_resolv = ""
        resolv = dns.build_resolv_conf(host_resolv, servers=self.settings.dns_servers, search=self.settings.dns_search,
                                       options=self.settings.dns_options, fallback=[], keep_loopback=host)
        if host:
            try:
                base = self.host_hosts.read_text()
            except OSError:
                base = dns.build_hosts(None, [])
            # build_hosts validates the extra entries; keep only those lines after the localhost pair.
            extra = dns.build_hosts(None, [], self.settings.extra_hosts).splitlines()[2:]
            hosts = base.rstrip("\n") + "\n" + "".join(line + "\n" for line in extra)
        else:
            hosts = dns.build_hosts(hostname, [], self.settings.extra_hosts)
        work = self.dir / container_id
        dns.write_in_place(work / "resolv.conf", resolv)
        dns.write_in_place(work / "hosts", hosts)
        dns.write_in_place(work / "hostname", (hostname or container_id[:12]) + "\n")
        return self.files(container_id)

    def files(self, container_id: str) -> dict[str, str]:
        """Where the container's /etc files are (to bind-mount them)."""
        work = self.dir / container_id
        return {f"/etc/{name}": str(work / name) for name in ("resolv.conf", "hosts", "hostname")}

    def _teardown(self, cid: str) -> None:
        att = self.store.get(cid)
        work = self.dir / cid
        ports = [parse_port(p) for p in json.loads(att.ports)] if att else []
        for pid in json.loads(att.helper_pids) if att else []:
            marker = str(work / ("helper.pid" if att and att.driver == "pasta" else "slirp.sock"))
            netns.stop_helper(int(pid), marker, wait=bool(ports))
        self._stop_orphan_helpers(work)
        if (att is None or att.driver == "bridge") and not self.rootless:
            self.bridge.detach(cid, ports)
        self.store.forget(cid)
        shutil.rmtree(work, ignore_errors=True)

    def _stop_orphan_helpers(self, work: Path) -> None:
        """Helpers started but not yet recorded (a crash between start and save) leave a pidfile."""
        for name, marker in (("helper.pid", "helper.pid"), ("slirp.pid", "slirp.sock")):
            try:
                pid = int((work / name).read_text().strip())
            except (OSError, ValueError):
                continue
            netns.stop_helper(pid, str(work / marker))

    def _reconcile(self) -> list[str]:
        removed = []
        live = []
        for att in self.store.all():
            gone = att.netns is not None and not netns.netns_alive(att.netns, att.netns_ino)
            if att.mode == NetworkMode.HOST.value and att.pid is not None:
                gone = not os.path.exists(f"/proc/{att.pid}")
            if gone:
                self._teardown(att.container_id)
                removed.append(att.container_id)
            else:
                live.append(att)
        # Orphans: leases without an attachment, our chains and veths without a live owner.
        owners = {a.container_id for a in live}
        for lease in self.store.leases():
            if lease.container_id not in owners:
                self.store.release(lease.container_id)
        if not self.rootless:
            wanted = {chain_name(a.container_id) for a in live if a.driver == "bridge"}
            stale = self.nft.chains() - wanted
            if stale:
                self.nft.remove_stale(stale)
            ours = {veth_names(self.settings.bridge, a.container_id)[0] for a in live}
            for link in self.netlink.links(None):
                if link.master == self.settings.bridge and link.name.startswith("vv") and link.name not in ours:
                    self.netlink.delete_link(link.name)
        if self.dir.is_dir():
            for work in self.dir.iterdir():
                if work.name not in owners:
                    self._stop_orphan_helpers(work)
                    shutil.rmtree(work, ignore_errors=True)
        return removed


def _check_unique(ports: list[PortMapping]) -> None:
    seen: set[tuple[str, int]] = set()
    for p in ports:
        key = (p.protocol, p.host_port)
        if key in seen:
            raise InvalidArgument(f"host port {p.host_port}/{p.protocol} published twice", category=Category.NETWORK)
        seen.add(key)


def build_network_manager(settings: Settings, db: Database) -> NetworkManager:
    """What ``app/wiring.py`` calls: the real netlink seam and nftables, paths from ``settings``."""
    net = settings.network
    return NetworkManager(net, NetworkStore(db), settings.run_dir, PyrouteNetlink(), Nft(net.nft_table))
