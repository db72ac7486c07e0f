"""200 create/start/delete cycles leave nothing behind: processes, mounts, cgroups, fds, files, rows."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from app.runtime.kernel import cgroups
from app.runtime.oci import state as oci_state
from app.runtime.oci.spec import ContainerSpec, Resources
from app.services.container_types import CreateRequest
from app.services.containers import ContainerService

pytestmark = pytest.mark.root


def _mounts_mentioning(text: str) -> int:
    return sum(text in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


async def test_200_cycles_no_leaks(service: ContainerService, rootfs: Path, tmp_path: Path) -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    prefix = f"leak-{uuid.uuid4().hex[:6]}"
    pids: list[int] = []
    for i in range(200):
        spec = ContainerSpec(id=f"{prefix}-{i}", command=("sh", "-c", "exit 0"),
                             network="new" if i % 2 else "host",
                             resources=Resources(pids_limit=64) if i % 10 == 0 else Resources())
        info = await service.create(CreateRequest(spec=spec, rootfs=str(rootfs)))
        row = service._row(info.id)
        pids += [p for p in (row.pid, row.shim_pid) if p]
        if i % 3:  # also delete some that were never started
            await service.start(info.id)
            assert await service.wait(info.id, 10) == 0
        await service.remove(info.id, force=True)
    assert [p for p in pids if oci_state.process_alive(p, None)] == []
    assert await service.list() == []
    assert os.listdir(service.runtime_dir / "native") == []
    assert os.listdir(service.shims_root) == []
    assert os.listdir(service.containers_dir) == []
    assert _mounts_mentioning(str(rootfs)) == 0
    for ctrl in cgroups.V1_CONTROLLERS:
        leftovers = list(Path(cgroups.CGROUP_ROOT, ctrl, "vapp").glob(f"{prefix}-*"))
        assert leftovers == [], leftovers
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
