"""RunDiagnostic: real facts about this node, each bounded in time.

Every diagnostic item is a function returning text. Items run concurrently,
each in a worker thread under its own time limit; one that hangs (a stuck
NFS state dir, a wedged netlink socket) reports ``timed out after Ns`` and the
others still answer. A failing item reports ``error: ...`` instead of failing
the whole command: the agent calls this when something is already wrong.

Items::

    kernel        uname, uptime, load
    interfaces    links and addresses  ┐ via netlink, from the network engine
    routes        the node's routes    ┘ (app.runtime.network.diag)
    namespaces    which namespace kinds exist and user-namespace limits
    tun           /dev/net/tun presence, mode and whether it opens
    cgroups       v1 / v2 / hybrid layout and controllers
    disk          free/total space of the state dir
    containers    the apps this daemon manages and their states (from the app service)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ItemFn = Callable[[], str]
NetworkFacts = Callable[[], dict[str, str]]
ContainersFn = Callable[[], Awaitable[str]]


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


class Diagnostics:
    """Runs the diagnostic items.

    ``network`` returns several sections at once (``interfaces``, ``routes``,
    ``attachments``: ``app.runtime.network.diag.network_diagnostics``) and is
    bounded like one item; ``containers`` summarises the apps.
    """

    def __init__(
        self,
        state_dir: Path,
        network: NetworkFacts | None = None,
        containers: ContainersFn | None = None,
        item_timeout: float = 3.0,
    ) -> None:
        self.state_dir = state_dir
        self.network = network
        self.containers = containers
        self.item_timeout = item_timeout

    def items(self) -> dict[str, ItemFn]:
        return {
            "kernel": kernel_item,
            "namespaces": namespaces_item,
            "tun": tun_item,
            "cgroups": cgroups_item,
            "disk": disk_item(self.state_dir),
        }

    async def _bounded(self, name: str, job: Awaitable[Any]) -> dict[str, str]:
        try:
            value = await asyncio.wait_for(job, self.item_timeout)
        except TimeoutError:
            return {name: f"timed out after {self.item_timeout:g}s"}
        except Exception as exc:  # one broken fact must not hide the others
            return {name: f"error: {type(exc).__name__}: {exc}"}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {name: str(value)}

    async def run(self) -> dict[str, str]:
        jobs = [self._bounded(name, asyncio.to_thread(fn)) for name, fn in self.items().items()]
        if self.network is not None:
            jobs.append(self._bounded("network", asyncio.to_thread(self.network)))
        if self.containers is not None:
            jobs.append(self._bounded("containers", self.containers()))
        out: dict[str, str] = {}
        for part in await asyncio.gather(*jobs):
            out.update(part)
        return dict(sorted(out.items()))
