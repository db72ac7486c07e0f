"""The daemon is killed with -9 while containers run; a new one restores them (root and rootless)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.users import UnprivUser
from tests.runtime.conftest import kill_leftovers, user_rootfs
from tests.runtime.proc_client import ServiceProc


def _dirs(base: Path, user: UnprivUser | None) -> tuple[Path, Path]:
    state = base / "state"
    run = Path(f"/tmp/vrt-rs-{uuid.uuid4().hex[:8]}")
    for d in (state, run):
        d.mkdir(parents=True)
        if user is not None:
            os.chown(d, user.uid, user.gid)
    return state, run


@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_kill9_daemon_then_restore(rootless: bool, busybox_image: tuple[Path, Any], rootfs: Path, tmp_path: Path,
                                   user_tmp: Path, unpriv_user: UnprivUser) -> None:
    user = unpriv_user if rootless else None
    if user is not None:
        rootfs = user_rootfs(busybox_image[0], user_tmp / "rootfs", user)
    state, run = _dirs(user_tmp if user else tmp_path, user)
    try:
        _scenario(state, run, rootfs, user)
    finally:
        kill_leftovers(run)
        shutil.rmtree(run, ignore_errors=True)


def _scenario(state: Path, run: Path, rootfs: Path, user: UnprivUser | None) -> None:
    first = ServiceProc(state, run, user)
    try:
        a = first.call("create", spec={"id": "early", "command": ["sh", "-c", "sleep 1; exit 9"]},
                       rootfs=str(rootfs), start=True)
        b = first.call("create", spec={"id": "late", "command": ["sleep", "60"]}, rootfs=str(rootfs), start=True)
        assert a["status"] == b["status"] == "running"
    finally:
        first.kill9()
    assert Path(f"/proc/{b['pid']}").exists(), "container died with the daemon"
    time.sleep(1.5)  # "early" exits while no daemon runs
    second = ServiceProc(state, run, user)
    try:
        restored = {i["id"]: i for i in second.call("restore")}
        assert restored["early"]["status"] == "exited" and restored["early"]["exit_code"] == 9
        assert restored["late"]["status"] == "running" and restored["late"]["pid"] == b["pid"]
        result = second.call("exec", id="late", argv=["sh", "-c", "echo still-here"])
        assert result["stdout"].strip() == "still-here"
        os.kill(b["pid"], 9)  # a later exit is recorded by the restored watcher
        assert second.call("wait", id="late") == 137
        second.call("remove", id="late")
        second.call("remove", id="early")
        assert second.call("list") == []
    finally:
        second.close()
