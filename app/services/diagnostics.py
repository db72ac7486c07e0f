"""RunDiagnostic and GetInterfaceIp: real facts about this node, each bounded in time.

Every diagnostic item is a function returning text. Items run concurrently,
each in a worker thread under its own time limit; one that hangs (a stuck
NFS state dir, a wedged netlink socket) reports ``timed out after Ns`` and the
others still answer. A failing item reports ``error: ...`` instead of failing
the whole command: the agent calls this when something is already wrong.

Items::

    kernel        uname, uptime, load
    interfaces    links (state, kind) and their addresses, via netlink
    routes        the node's routes, via netlink
    namespaces    which namespace kinds exist and user-namespace limits
    tun           /dev/net/tun presence, mode and whether it opens
    cgroups       v1 / v2 / hybrid layout and controllers
    disk          free/total space of the state dir
    containers    the apps this daemon manages and their states (from the app service)
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

ItemFn = Callable[[], str]
ContainersFn = Callable[[], Awaitable[str]]


class AddressSource(Protocol):
    """The part of the network seam (``app.runtime.network.netlink.Netlink``) used here."""

    def links(self, netns: str | None = None) -> list[Any]: ...
    def addresses(self, netns: str | None = None) -> list[Any]: ...
    def routes(self, netns: str | None = None) -> list[Any]: ...


def pick_interface_ip(addresses: Iterable[Any], pattern: str) -> str | None:
    """The IP of the first interface matching ``pattern`` (``zt*`` is a prefix match).

    IPv4 first, then global IPv6; link-local addresses are skipped. Addresses
    are ``.ifname`` / ``.cidr`` records in link order, as netlink returns them.
    """
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        matches: Callable[[str], bool] = lambda name: name.startswith(prefix)  # noqa: E731
    else:
        matches = pattern.__eq__
    v4: list[str] = []
    v6: list[str] = []
    for addr in addresses:
        if not matches(addr.ifname):
            continue
        ip = ipaddress.ip_interface(addr.cidr).ip
        if ip.is_link_local:
            continue
        (v4 if ip.version == 4 else v6).append(str(ip))
    found = v4 or v6
    return found[0] if found else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        return f"unavailable ({exc.strerror})"


def kernel_item() -> str:
    u = os.uname()
    uptime = _read("/proc/uptime").split()[0]
    return f"{u.sysname} {u.release} {u.machine}; uptime {uptime}s; load {_read('/proc/loadavg')}"


def namespaces_item() -> str:
    kinds = sorted(os.listdir("/proc/self/ns"))
    lines = [f"kinds: {' '.join(kinds)}"]
    lines.append(f"max_user_namespaces: {_read('/proc/sys/user/max_user_namespaces')}")
    clone = "/proc/sys/kernel/unprivileged_userns_clone"
    if os.path.exists(clone):
        lines.append(f"unprivileged_userns_clone: {_read(clone)}")
    lines.append(f"euid: {os.geteuid()}")
    return "\n".join(lines)


def tun_item() -> str:
    path = "/dev/net/tun"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: missing ({exc.strerror})"
    if not stat.S_ISCHR(st.st_mode):
        return f"{path}: not a character device"
    try:
        fd = os.open(path, os.O_RDWR)
        os.close(fd)
        usable = "opens read-write"
    except OSError as exc:
        usable = f"cannot open ({exc.strerror})"
    return f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, {usable}"


def cgroups_item() -> str:
    mounts = [line.split() for line in _read("/proc/self/mounts").splitlines()]
    v1 = sorted({opt for m in mounts if len(m) > 3 and m[2] == "cgroup" for opt in m[3].split(",")
                 if opt not in ("rw", "ro", "nosuid", "nodev", "noexec", "relatime")})
    v2 = [m[1] for m in mounts if len(m) > 2 and m[2] == "cgroup2"]
    layout = "hybrid" if v1 and v2 else "v2" if v2 else "v1" if v1 else "none"
    lines = [f"layout: {layout}"]
    if v1:
        lines.append(f"v1 controllers: {' '.join(v1)}")
    for mnt in v2:
        lines.append(f"v2 at {mnt}: {_read(os.path.join(mnt, 'cgroup.controllers')) or '(no controllers)'}")
    lines.append(f"self: {_read('/proc/self/cgroup').replace(chr(10), '; ')}")
    return "\n".join(lines)


def disk_item(path: Path) -> Callable[[], str]:
    def item() -> str:
        target = path
        while not target.exists():
            target = target.parent
        usage = shutil.disk_usage(target)
        gib = 1024**3
        return (f"{path}: {usage.free / gib:.2f} GiB free of {usage.total / gib:.2f} GiB "
                f"({100 * usage.used / max(usage.total, 1):.0f}% used)")
    return item


def interfaces_item(net: AddressSource) -> Callable[[], str]:
    def item() -> str:
        addrs: dict[str, list[str]] = {}
        for a in net.addresses():
            addrs.setdefault(a.ifname, []).append(a.cidr)
        lines = []
        for link in net.links():
            state = "UP" if link.up else "DOWN"
            kind = f" {link.kind}" if link.kind else ""
            lines.append(f"{link.name}{kind} {state} {' '.join(addrs.get(link.name, []))}".rstrip())
        return "\n".join(lines) or "(none)"
    return item


def routes_item(net: AddressSource) -> Callable[[], str]:
    def item() -> str:
        lines = []
        for r in net.routes():
            via = f" via {r.gateway}" if r.gateway else ""
            dev = f" dev {r.dev}" if r.dev else ""
            lines.append(f"{r.dst}{via}{dev}")
        return "\n".join(lines) or "(none)"
    return item


class Diagnostics:
    """Runs the diagnostic items; ``net`` is the network seam, ``containers`` a summary."""

    def __init__(
        self,
        state_dir: Path,
        net: AddressSource | None,
        containers: ContainersFn | None = None,
        item_timeout: float = 3.0,
    ) -> None:
        self.state_dir = state_dir
        self.net = net
        self.containers = containers
        self.item_timeout = item_timeout

    def items(self) -> dict[str, ItemFn]:
        items: dict[str, ItemFn] = {
            "kernel": kernel_item,
            "namespaces": namespaces_item,
            "tun": tun_item,
            "cgroups": cgroups_item,
            "disk": disk_item(self.state_dir),
        }
        if self.net is not None:
            items["interfaces"] = interfaces_item(self.net)
            items["routes"] = routes_item(self.net)
        return items

    async def _bounded(self, name: str, job: Awaitable[str]) -> tuple[str, str]:
        try:
            return name, await asyncio.wait_for(job, self.item_timeout)
        except TimeoutError:
            return name, f"timed out after {self.item_timeout:g}s"
        except Exception as exc:  # one broken fact must not hide the others
            return name, f"error: {type(exc).__name__}: {exc}"

    async def run(self) -> dict[str, str]:
        jobs = [self._bounded(name, asyncio.to_thread(fn)) for name, fn in self.items().items()]
        if self.containers is not None:
            jobs.append(self._bounded("containers", self.containers()))
        return dict(sorted(await asyncio.gather(*jobs)))

    async def interface_ip(self, pattern: str) -> str | None:
        if self.net is None:
            return None
        net = self.net
        addresses = await asyncio.wait_for(asyncio.to_thread(net.addresses), self.item_timeout)
        return pick_interface_ip(addresses, pattern)
