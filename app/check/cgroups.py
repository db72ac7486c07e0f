"""Which cgroup layout this machine has, and what this process may write in it.

Pure parsing of ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` (both passed
in as text) plus ``os.access`` probes on the resulting directories::

    v2       /sys/fs/cgroup is cgroup2; our cgroup is <mount>/<path from "0::">;
             delegated when its cgroup.procs and cgroup.subtree_control are writable
    v1       one cgroup (v1) mount per controller; our cgroup in each is
             <mount>/<path from "N:ctrl:path" minus the mount's root>
    hybrid   v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified)
             that holds few or no controllers
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Layout = Literal["v1", "v2", "hybrid", "none"]
LIMIT_CONTROLLERS = ("memory", "cpu", "pids")
# cgroup v1 super options that are not controller names.
_V1_OPTIONS = frozenset({"rw", "ro", "noprefix", "clone_children", "xattr", "cpuset_v2_mode", "none",
                         "favordynmods"})


@dataclass(frozen=True)
class CgroupMount:
    mountpoint: str
    root: str  # the mount's root inside the hierarchy (field 4 of mountinfo)
    fstype: str  # "cgroup" or "cgroup2"
    controllers: tuple[str, ...]  # v1: from the super options; v2: empty here
    readonly: bool


@dataclass
class CgroupReport:
    layout: Layout
    mounts: list[CgroupMount]
    own: dict[str, str] = field(default_factory=dict)  # controller (or "unified") -> our dir
    writable: list[str] = field(default_factory=list)  # controllers whose own dir we may write
    v2_controllers: list[str] = field(default_factory=list)

    @property
    def limits_possible(self) -> bool:
        return any(c in self.writable for c in LIMIT_CONTROLLERS)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        opts = fields[5].split(",") + tail[2].split(",")
        controllers: tuple[str, ...] = ()
        if tail[0] == "cgroup":
            controllers = tuple(o for o in tail[2].split(",")
                                if o.startswith("name=") or ("=" not in o and o not in _V1_OPTIONS))
        mounts.append(CgroupMount(fields[4].replace("\\040", " "), fields[3], tail[0], controllers,
                                  "ro" in opts))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``{"memory": "/a/b", ..., "unified": "/x"}`` from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            out["unified"] = path
        for ctrl in ctrls.split(","):
            if ctrl:
                out[ctrl] = path
    return out


def _join(mount: CgroupMount, path: str) -> str:
    rel = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        rel = path[len(mount.root):]
    return os.path.normpath(mount.mountpoint + "/" + rel.lstrip("/"))


def classify(mounts: list[CgroupMount], membership: dict[str, str]) -> CgroupReport:
    """Layout and our own directory per controller (no filesystem access)."""
    v1 = [m for m in mounts if m.fstype == "cgroup"]
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    layout: Layout = "none"
    if v1 and v2:
        layout = "hybrid"
    elif v1:
        layout = "v1"
    elif v2:
        layout = "v2"
    report = CgroupReport(layout, mounts)
    for mount in v1:
        for ctrl in mount.controllers:
            if ctrl in membership:
                report.own[ctrl] = _join(mount, membership[ctrl])
    if v2 and "unified" in membership:
        report.own["unified"] = _join(v2[0], membership["unified"])
    return report


def inspect(mountinfo: str, proc_cgroup: str, *, access: bool = True) -> CgroupReport:
    """Classify, then probe which of our cgroup directories we could create children in."""
    report = classify(parse_mountinfo(mountinfo), parse_proc_cgroup(proc_cgroup))
    if not access:
        return report
    unified = report.own.get("unified")
    if unified:
        try:
            report.v2_controllers = Path(unified, "cgroup.controllers").read_text().split()
        except OSError:
            report.v2_controllers = []
    for ctrl, directory in sorted(report.own.items()):
        if ctrl == "unified":
            continue
        if os.access(directory, os.W_OK) and os.access(os.path.join(directory, "cgroup.procs"), os.W_OK):
            report.writable.append(ctrl)
    if unified and os.access(unified, os.W_OK) and os.access(os.path.join(unified, "cgroup.procs"), os.W_OK):
        report.writable.extend(c for c in report.v2_controllers if c not in report.writable)
        if report.layout == "v2" and not report.v2_controllers:
            report.writable.append("unified")
    return report


def describe(report: CgroupReport) -> str:
    v1 = sorted({c for m in report.mounts if m.fstype == "cgroup" for c in m.controllers})
    parts = [f"layout {report.layout}"]
    if v1:
        parts.append("v1 controllers: " + ",".join(v1))
    if "unified" in report.own:
        parts.append(f"cgroup2 at {report.own['unified']} with controllers: "
                     + (",".join(report.v2_controllers) or "none"))
    parts.append("writable (delegated) for limits: " + (",".join(sorted(report.writable)) or "none"))
    return "; ".join(parts)
