"""cgroups for containers: memory, cpu and pids limits on v2, v1 or hybrid hierarchies.

Layout used::

    v2:      <mount>/<cgroupsPath>/{memory.max, cpu.max, cpu.weight, pids.max, cgroup.procs}
    v1:      /sys/fs/cgroup/<controller>/<cgroupsPath>/{memory.limit_in_bytes, cpu.cfs_quota_us,
             cpu.shares, pids.max, cpuset.cpus, cpuset.mems, cgroup.procs}   one dir per controller
             we use (cpuset with any cpu resources: tools read them beside cpu's, as runc sets it up)

Rootless works only where the subtree is writable (delegated); :func:`capabilities`
says what can be applied, for ``vapp-core check``. ``cgroupsPath`` ``slice:prefix:name``
(systemd style) is mapped to ``/slice/prefix-name``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import Any

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "cpu", "pids", "cpuset")
LIMIT_CONTROLLERS = ("memory", "cpu", "pids")  # what `vapp-core check` reports on


class CgroupError(OSError):
    pass


class CgroupSet:
    """The directories one container's cgroup occupies (one per v1 controller, or one on v2).

    A plain class, not a dataclass: vapp-oci imports this on every call, and ``dataclasses``
    (with ``inspect``) costs several ms of start-up."""

    def __init__(self, dirs: list[str] | None = None, skipped: list[str] | None = None) -> None:
        self.dirs: list[str] = dirs or []
        self.skipped: list[str] = skipped or []  # why limits were not applied


def is_v2(root: str = CGROUP_ROOT) -> bool:
    return os.path.exists(os.path.join(root, "cgroup.controllers"))


def normalize_path(cgroups_path: str | None, container_id: str) -> str:
    if not cgroups_path:
        return f"/vapp/{container_id}"
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        slice_, prefix, name = [*cgroups_path.split(":"), "", ""][:3]
        return "/" + "/".join(p for p in (slice_, f"{prefix}-{name}" if prefix else name) if p)
    return cgroups_path if cgroups_path.startswith("/") else "/" + cgroups_path


def v1_files(resources: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Pure: controller -> {file: value} for v1."""
    out: dict[str, dict[str, str]] = {"memory": {}, "cpu": {}, "pids": {}, "cpuset": {}}
    mem = resources.get("memory") or {}
    if mem.get("limit") is not None:
        out["memory"]["memory.limit_in_bytes"] = str(mem["limit"])
    if mem.get("reservation") is not None:
        out["memory"]["memory.soft_limit_in_bytes"] = str(mem["reservation"])
    if mem.get("swap") is not None:
        out["memory"]["memory.memsw.limit_in_bytes"] = str(mem["swap"])
    if mem.get("swappiness") is not None:
        out["memory"]["memory.swappiness"] = str(mem["swappiness"])
    if mem.get("disableOOMKiller"):
        out["memory"]["memory.oom_control"] = "1"
    cpu = resources.get("cpu") or {}
    if cpu.get("shares") is not None:
        out["cpu"]["cpu.shares"] = str(cpu["shares"])
    if cpu.get("period") is not None:
        out["cpu"]["cpu.cfs_period_us"] = str(cpu["period"])
    if cpu.get("quota") is not None:
        out["cpu"]["cpu.cfs_quota_us"] = str(cpu["quota"])
    for key in ("cpus", "mems"):
        if cpu.get(key):
            out["cpuset"][f"cpuset.{key}"] = str(cpu[key])
    pids = resources.get("pids") or {}
    if pids.get("limit") is not None:
        out["pids"]["pids.max"] = "max" if int(pids["limit"]) <= 0 else str(pids["limit"])
    return out


def v2_files(resources: dict[str, Any]) -> dict[str, str]:
    """Pure: {file: value} for the unified hierarchy."""
    out: dict[str, str] = {}
    mem = resources.get("memory") or {}
    if mem.get("limit") is not None:
        out["memory.max"] = "max" if int(mem["limit"]) < 0 else str(mem["limit"])
    if mem.get("reservation") is not None:
        out["memory.low"] = str(mem["reservation"])
    if mem.get("swap") is not None and mem.get("limit") is not None and int(mem["swap"]) >= 0:
        out["memory.swap.max"] = str(max(0, int(mem["swap"]) - int(mem["limit"])))
    cpu = resources.get("cpu") or {}
    if cpu.get("shares") is not None:
        shares = int(cpu["shares"])  # the runc conversion of 2..262144 to 1..10000
        out["cpu.weight"] = str(1 + ((shares - 2) * 9999) // 262142) if shares else "100"
    if cpu.get("quota") is not None or cpu.get("period") is not None:
        quota = cpu.get("quota")
        out["cpu.max"] = f"{'max' if quota is None or int(quota) < 0 else quota} {cpu.get('period') or 100000}"
    pids = resources.get("pids") or {}
    if pids.get("limit") is not None:
        out["pids.max"] = "max" if int(pids["limit"]) <= 0 else str(pids["limit"])
    return out


def _write(path: str, value: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except OSError as exc:
        raise CgroupError(exc.errno, f"cgroup write {path}={value}: {exc.strerror}") from exc


def create(cgroups_path: str, resources: dict[str, Any] | None, root: str = CGROUP_ROOT) -> CgroupSet:
    """Create the container's cgroup dirs and write the limits; skip (noted) where not writable."""
    resources = resources or {}
    result = CgroupSet()
    rel = cgroups_path.lstrip("/")
    if is_v2(root):
        plan = {root: v2_files(resources)}
    else:
        files = v1_files(resources)
        plan = {os.path.join(root, ctrl): files[ctrl] for ctrl in V1_CONTROLLERS
                if ctrl != "cpuset" or resources.get("cpu")}
    for base, values in plan.items():
        target = os.path.join(base, rel)
        if not os.path.isdir(base):
            if values:
                result.skipped.append(f"{base}: controller not mounted")
            continue
        try:
            _makedirs(base, rel)
        except OSError as exc:
            if values:
                result.skipped.append(f"{base}: {exc.strerror} (no delegated cgroup subtree)")
            continue
        result.dirs.append(target)
        for name, value in values.items():
            if not os.path.exists(os.path.join(target, name)) and name.startswith("memory.memsw"):
                result.skipped.append(f"{name}: swap accounting disabled")
                continue
            _write(os.path.join(target, name), value)
    return result


def process_paths(pid: int, proc: Path = Path("/proc")) -> dict[str, str]:
    """controller → cgroup path of a process (v1 lines; v2's unnamed line is skipped)."""
    out: dict[str, str] = {}
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for ctrl in parts[1].split(","):
                out[ctrl] = parts[2]
    return out


def update_own(container_id: str, pid: int, resources: dict[str, Any], root: str = CGROUP_ROOT) -> None:
    """Apply new limits to the cgroup ``pid`` lives in, only when that cgroup is the container's own."""
    paths = process_paths(pid)
    path = paths.get("memory") or paths.get("cpu") or ""
    if not path.rstrip("/").endswith(container_id):  # never write limits on a cgroup we share
        raise CgroupError(errno.ENOENT, f"container {container_id} has no cgroup of its own on this node")
    create(path, resources, root)


def _makedirs(base: str, rel: str) -> None:
    """mkdir each level under ``base``; a new v1 cpuset level starts with empty cpus/mems (no
    task could join it), so it inherits its parent's."""
    current = base
    for part in [p for p in rel.split("/") if p]:
        parent, current = current, os.path.join(current, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
            if os.path.basename(base) == "cpuset":
                for name in ("cpuset.cpus", "cpuset.mems"):
                    with contextlib.suppress(FileNotFoundError), open(os.path.join(parent, name)) as fh:
                        _write(os.path.join(current, name), fh.read().strip() or "\n")


def add_process(cgroups: CgroupSet, pid: int) -> None:
    for target in cgroups.dirs:
        _write(os.path.join(target, "cgroup.procs"), str(pid))


def remove(dirs: list[str], timeout: float = 2.0) -> None:
    """rmdir each cgroup, retrying while the last processes finish exiting."""
    deadline = time.monotonic() + timeout
    for target in dirs:
        while True:
            try:
                os.rmdir(target)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)


def procs(dirs: list[str]) -> list[int]:
    pids: set[int] = set()
    for target in dirs:
        with contextlib.suppress(OSError), open(os.path.join(target, "cgroup.procs")) as fh:
            pids.update(int(line) for line in fh if line.strip())
    return sorted(pids)


def capabilities(root: str = CGROUP_ROOT) -> dict[str, str]:
    """For ``vapp-core check``: which limits this process can apply, and why not."""
    out: dict[str, str] = {}
    if is_v2(root):
        ok = os.access(root, os.W_OK)
        for ctrl in ("memory", "cpu", "pids"):
            out[ctrl] = "ok (v2)" if ok else "unavailable: cgroup2 root not writable (no delegation)"
        return out
    for ctrl in LIMIT_CONTROLLERS:
        base = os.path.join(root, ctrl)
        if not os.path.isdir(base):
            out[ctrl] = "unavailable: controller not mounted"
        elif os.access(base, os.W_OK):
            out[ctrl] = "ok (v1)"
        else:
            out[ctrl] = "unavailable: not writable by this user (rootless without a delegated subtree)"
    return out
