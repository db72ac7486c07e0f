"""vapp-core check reports the snapshotter the daemon will choose, as root and rootless."""

from __future__ import annotations

import json

from app.check import CheckEnv, run_checks
from tests.helpers.daemon import PYTHON
from tests.helpers.users import run_as


def test_root_picks_native_overlay(tmp_path) -> None:
    result = {r.id: r for r in run_checks(CheckEnv(scratch_dir=tmp_path))}["snapshotter"]
    assert result.ok and result.detail.startswith("overlay: native overlayfs")


def test_rootless_reports_copy_with_the_reason(unpriv_user) -> None:
    r = run_as(unpriv_user, [PYTHON, "-m", "app.cli", "check", "--json"])
    doc = json.loads(r.stdout)
    snap = next(x for x in doc["results"] if x["id"] == "snapshotter")
    assert snap["detail"].startswith("copy: "), snap
    assert "user namespace" in snap["detail"]
