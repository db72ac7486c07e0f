"""Rootless pod networking as the unprivileged test user: pasta (and slirp4netns), real namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.users import REPO_ROOT, UnprivUser, run_as

pytestmark = pytest.mark.root


@pytest.fixture
def user_tmp(unpriv_user: UnprivUser) -> Iterator[Path]:
    """A temp dir the test user can reach (pytest's own tmp_path is root's 0700 tree)."""
    path = Path(tempfile.mkdtemp(prefix="vapp-net-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def scenario(user: UnprivUser, tmp_path: Path, name: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    work = tmp_path / f"rootless-{name}"
    work.mkdir()
    os.chown(work, user.uid, user.gid)
    proc = run_as(user, [sys.executable, "-m", "tests.network.rootless_scenario", name, str(work), *args],
                  timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_none_mode_has_only_loopback(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    out = scenario(unpriv_user, user_tmp, "none")
    assert out["links"] == ["lo"] and "UP" in out["lo_flags"]


@pytest.mark.parametrize("helper", ["pasta", "slirp4netns"])
def test_pod_mode(unpriv_user: UnprivUser, user_tmp: Path, helper: str) -> None:
    out = scenario(unpriv_user, user_tmp, "pod", helper)
    att = out["attachment"]
    assert att["driver"] == helper and att["addresses"] == ["10.0.2.100/24"] and len(att["helper_pids"]) == 1
    assert "10.0.2.100/24" in out["ns_addr"]
    assert out["outbound"] == "from-the-node"  # the node's loopback, through the gateway address
    assert out["published"] == "hello-from-the-pod"  # published on the node's loopback
    assert "nameserver" in out["resolv"] and "127.0.0.53" not in out["resolv"]
    assert "10.0.2.100\trootless" in out["hosts"]
    assert out["helpers_after"] == [] and out["attachments_after"] == []


def test_pod_mode_ipv6(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    out = scenario(unpriv_user, user_tmp, "pod6")
    assert any(":" in a for a in out["attachment"]["addresses"]), out["attachment"]
    assert out["gateway6"] and out["outbound6"] == "over-ipv6"


def test_container_mode(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    out = scenario(unpriv_user, user_tmp, "container")
    assert out["joined"]["netns"] == out["owner"]["netns"] and out["joined"]["driver"] == "shared"
    assert out["joined"]["addresses"] == out["owner"]["addresses"]


def test_errors_are_clear_and_leave_nothing(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    out = scenario(unpriv_user, user_tmp, "errors")
    assert out["port_taken"]["kind"] == "already_exists" and "already in use" in out["port_taken"]["message"]
    assert out["after_clash"] == []
    assert out["no_pasta"]["kind"] == "failed_precondition" and "passt" in out["no_pasta"]["message"]
    assert out["helpers_after"] == []


def test_unusable_tun_says_how_to_fix(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    """A 0600 /dev/net/tun, as on a machine without udev, bind-mounted in a private mount namespace."""
    work = user_tmp / "tun"
    work.mkdir()
    os.chown(work, unpriv_user.uid, unpriv_user.gid)
    node = user_tmp / "tun-node"
    subprocess.run(["mknod", str(node), "c", "10", "200"], check=True)
    os.chmod(node, 0o600)
    script = (f"mount --bind {node} /dev/net/tun && exec setpriv --reuid {unpriv_user.uid} "
              f"--regid {unpriv_user.gid} --clear-groups env HOME=/tmp PYTHONPATH={REPO_ROOT} "
              f"{sys.executable} -m tests.network.rootless_scenario tun {work}")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error["kind"] == "failed_precondition" and "chmod 666 /dev/net/tun" in error["message"]


def test_restart_reconciles_helpers(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    out = scenario(unpriv_user, user_tmp, "restart")
    assert out["removed"] == ["dead"]
    assert out["alive"]["dead"] == [] and len(out["alive"]["live"]) == 1
    assert out["remaining"] == []


def test_200_cycles_leave_nothing(unpriv_user: UnprivUser, user_tmp: Path) -> None:
    out = scenario(unpriv_user, user_tmp, "cycles", "200", timeout=170)
    assert out["helpers_after"] == [] and out["attachments"] == [] and out["files"] == []
