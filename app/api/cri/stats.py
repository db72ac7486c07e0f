"""Container and pod figures for the stats RPCs, read from cgroup v1 files (read-only, no kernel calls).

Where a container's cgroup lives comes from ``/proc/<pid>/cgroup`` of its init
(``<n>:<controllers>:<path>``), looked up under ``/sys/fs/cgroup/<controller>``:

    cpuacct.usage                       → cpu.usage_core_nano_seconds
    memory.usage_in_bytes               → memory.usage_bytes
    usage - memory.stat total_inactive_file → memory.working_set_bytes
    memory.stat total_rss               → memory.rss_bytes
    memory.stat total_pgfault / total_pgmajfault → page_faults / major_page_faults

Missing files (cgroups not available, container not running, or a container without a
cgroup of its own) leave the fields unset rather than report someone else's usage.
"""

from __future__ import annotations

import time
from pathlib import Path

from cri_api.v1 import api_pb2 as pb

from app.runtime.kernel import cgroups

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _memory_stat(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.isdigit():
            out[key] = int(value)
    return out


def usage(pid: int | None, container_id: str, root: Path = CGROUP_ROOT) -> tuple[pb.CpuUsage, pb.MemoryUsage]:
    """Figures of the container's own cgroups; a cgroup it shares (no limits asked) is not reported."""
    now = time.time_ns()
    cpu, mem = pb.CpuUsage(timestamp=now), pb.MemoryUsage(timestamp=now)
    if not pid:
        return cpu, mem
    paths = {k: v for k, v in cgroups.process_paths(pid).items() if v.rstrip("/").endswith(container_id)}
    if "cpuacct" in paths:
        ns = _read_int(root / "cpuacct" / paths["cpuacct"].lstrip("/") / "cpuacct.usage")
        if ns is not None:
            cpu.usage_core_nano_seconds.value = ns
    if "memory" in paths:
        base = root / "memory" / paths["memory"].lstrip("/")
        used = _read_int(base / "memory.usage_in_bytes")
        stat = _memory_stat(base / "memory.stat")
        if used is not None:
            mem.usage_bytes.value = used
            mem.working_set_bytes.value = max(0, used - stat.get("total_inactive_file", 0))
        if "total_rss" in stat:
            mem.rss_bytes.value = stat["total_rss"]
        if "total_pgfault" in stat:
            mem.page_faults.value = stat["total_pgfault"]
            mem.major_page_faults.value = stat.get("total_pgmajfault", 0)
    return cpu, mem
