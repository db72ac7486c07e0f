"""Rootless: the container service and vapp-oci run as the unprivileged test user."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.runtime.kernel import cgroups
from tests.helpers.users import UnprivUser, run_as
from tests.runtime.conftest import kill_leftovers, log_lines, user_rootfs, vapp_oci
from tests.runtime.proc_client import ServiceProc


@pytest.fixture
def svc(user_tmp: Path, unpriv_user: UnprivUser) -> Iterator[ServiceProc]:
    state, run = user_tmp / "state", user_tmp / "run"
    proc = ServiceProc(state, run, unpriv_user)
    yield proc
    try:
        for info in proc.call("list"):
            proc.call_error("remove", id=info["id"], force=True)
    finally:
        proc.close()
        kill_leftovers(run)


@pytest.fixture
def urootfs(busybox_image: tuple[Path, Any], user_tmp: Path, unpriv_user: UnprivUser) -> Path:
    return user_rootfs(busybox_image[0], user_tmp / "rootfs", unpriv_user)


def run(svc: ServiceProc, rootfs: Path, **spec: Any) -> tuple[int, list[str], list[str]]:
    spec.setdefault("id", f"u-{uuid.uuid4().hex[:8]}")
    info = svc.call("create", spec=spec, rootfs=str(rootfs), start=True)
    code = svc.call("wait", id=info["id"])
    out, err = log_lines(info["log_path"], "stdout"), log_lines(info["log_path"], "stderr")
    svc.call("remove", id=info["id"])
    return code, out, err


def test_rootless_basics(svc: ServiceProc, urootfs: Path) -> None:
    code, out, err = run(svc, urootfs, hostname="rl", command=[
        "sh", "-c", "echo $$; hostname; id -u; test -d /proc/1 && echo proc;"
        " mount -t tmpfs none /mnt 2>/dev/null || echo no-mount; echo e >&2; exit 3"])
    assert code == 3
    assert out == ["1", "rl", "0", "proc", "no-mount"]
    assert err == ["e"]


def test_rootless_subordinate_user(svc: ServiceProc, urootfs: Path) -> None:
    code, out, _ = run(svc, urootfs, user="app", command=["sh", "-c", "id -u; id -g"])
    assert (code, out) == (0, ["1000", "1000"])


def test_rootless_errors(svc: ServiceProc, urootfs: Path) -> None:
    reply = svc.call_error("create", spec={"id": "nf", "command": ["nope"]}, rootfs=str(urootfs))
    assert reply["error"] == "invalid_argument" and "executable file not found" in reply["message"]
    assert reply["details"]["exit_code"] == 127
    assert svc.call("list") == []


def test_rootless_shared_netns_and_exec(svc: ServiceProc, urootfs: Path) -> None:
    server = svc.call("create", spec={"id": "srv", "network": "new",
                                      "command": ["sh", "-c", "echo pong | nc -l -p 7071"]},
                      rootfs=str(urootfs), start=True)
    result = svc.call("exec", id="srv", argv=["sh", "-c", "sleep 0.2; echo $$"])
    assert result["exit_code"] == 0
    slow = svc.call("exec", id="srv", argv=["sleep", "20"], timeout=0.5)
    assert slow["timed_out"]
    _code, out, err = run(svc, urootfs, network=f"container:{server['id']}",
                         command=["sh", "-c", "echo ping | nc 127.0.0.1 7071"])
    assert out == ["pong"], err
    svc.call("remove", id="srv", force=True)


def test_rootless_vapp_oci_lifecycle(user_tmp: Path, urootfs: Path, unpriv_user: UnprivUser) -> None:
    bundle = user_tmp / "bundle"
    root = user_tmp / "oci-root"
    run_as(unpriv_user, ["mkdir", str(bundle)], check=True)
    run_as(unpriv_user, [vapp_oci(), "spec", "--rootless", "--bundle", str(bundle)], check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["path"] = str(urootfs)
    cfg["process"].update(terminal=False, args=["sleep", "30"])
    run_as(unpriv_user, ["sh", "-c", f"cat > {bundle}/config.json"], input=json.dumps(cfg), check=True)

    def oci(*args: str) -> Any:
        return run_as(unpriv_user, [vapp_oci(), "--root", str(root), *args], stdout=None, capture_output=False,
                      stdin=None) if args[0] == "create" else run_as(unpriv_user, [vapp_oci(), "--root", str(root),
                                                                                  *args])

    with open(user_tmp / "out", "w") as sink:
        created = run_as(unpriv_user, [vapp_oci(), "--root", str(root), "create", "--bundle", str(bundle), "c1"],
                         capture_output=False, stdout=sink, stderr=sink)
    assert created.returncode == 0, (user_tmp / "out").read_text()
    assert json.loads(oci("state", "c1").stdout)["status"] == "created"
    assert oci("start", "c1").returncode == 0
    assert json.loads(oci("state", "c1").stdout)["status"] == "running"
    assert oci("kill", "c1", "KILL").returncode == 0
    assert oci("delete", "--force", "c1").returncode == 0
    assert oci("state", "c1").returncode != 0


@pytest.fixture
def delegated_cgroup(unpriv_user: UnprivUser) -> Iterator[str]:
    """What an administrator does once: a subtree per v1 controller owned by the user."""
    name = f"vrt-deleg-{uuid.uuid4().hex[:6]}"
    dirs = [Path("/sys/fs/cgroup", ctrl, name) for ctrl in cgroups.V1_CONTROLLERS]
    for d in dirs:
        d.mkdir()
        for entry in [d, *d.iterdir()]:
            os.chown(entry, unpriv_user.uid, unpriv_user.gid)
    yield f"/{name}"
    cgroups.remove([str(p) for d in dirs for p in d.iterdir() if p.is_dir()] + [str(d) for d in dirs])


def test_rootless_memory_limit_in_delegated_subtree(delegated_cgroup: str, user_tmp: Path, urootfs: Path,
                                                    unpriv_user: UnprivUser) -> None:
    svc = ServiceProc(user_tmp / "state", user_tmp / "run", unpriv_user, {"cgroup_parent": delegated_cgroup})
    try:
        code, _, _ = run(svc, urootfs, resources={"memory_bytes": 32 * 1024 * 1024},
                         command=["sh", "-c", "dd if=/dev/zero of=/dev/null bs=200M count=1"])
        assert code == 137  # OOM-killed inside the user's own cgroup
        code, _, err = run(svc, urootfs, resources={"pids_limit": 10}, command=[
            "sh", "-c", "i=0; while [ $i -lt 20 ]; do sleep 5 & i=$((i+1)); done"])
        assert any("fork" in line for line in err), err  # the pids limit holds
    finally:
        svc.close()
