"""vapp-core check reports the snapshotter the daemon will choose, as root and rootless."""

from __future__ import annotations

import json

from app.check import CheckEnv, run_checks
from tests.helpers.daemon import PYTHON
from tests.helpers.users import run_as


def test_root_picks_native_overlay(tmp_path) -> None:
    result = {r.id: r for r in run_checks(CheckEnv(scratch_dir=tmp_path))}["snapshotter"]
    assert result.ok and result.detail.startswith("overlay: native overlayfs")


def test_rootless_native_picks_overlay_in_the_container(unpriv_user) -> None:
    """The native runtime's init mounts the userxattr overlay inside the container's user namespace."""
    r = run_as(unpriv_user, [PYTHON, "-m", "app.cli", "check", "--json"])
    doc = json.loads(r.stdout)
    snap = next(x for x in doc["results"] if x["id"] == "snapshotter")
    assert snap["detail"].startswith("overlay: "), snap
    assert "user namespace" in snap["detail"]


def test_rootless_external_runtime_reports_copy_with_the_reason(tmp_path) -> None:
    """crun/runc cannot mount the overlay in the container: copy, and why."""
    env = CheckEnv(scratch_dir=tmp_path, uid=1000, default_runtime="crun")
    snap = {r.id: r for r in run_checks(env)}["snapshotter"]
    assert snap.detail.startswith("copy: "), snap
    assert "user namespace" in snap.detail
