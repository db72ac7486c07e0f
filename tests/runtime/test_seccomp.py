"""Seccomp: the compiled BPF really filters (installed in a forked child), and containers get it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.runtime.kernel import PR_SET_NO_NEW_PRIVS, seccomp
from app.runtime.kernel.linux import LinuxKernel
from tests.runtime.conftest import vapp_oci
from tests.runtime.test_oci_cli import Cli, make_bundle


def _in_child(profile: dict[str, Any], probe: Any) -> int:
    """Install ``profile`` in a forked child, run ``probe`` there; return its errno (0 = allowed)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            LinuxKernel().prctl(PR_SET_NO_NEW_PRIVS, 1)
            seccomp.install(profile)
            try:
                probe()
                code = 0
            except OSError as exc:
                code = exc.errno or 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _prio(value: int) -> Any:
    return lambda: os.setpriority(os.PRIO_PROCESS, 0, value)


@pytest.mark.parametrize(
    ("op", "value", "two", "blocked", "allowed"),
    [
        ("SCMP_CMP_EQ", 5, 0, 5, 6),
        ("SCMP_CMP_NE", 5, 0, 6, 5),
        ("SCMP_CMP_GT", 5, 0, 6, 5),
        ("SCMP_CMP_GE", 5, 0, 5, 4),
        ("SCMP_CMP_LT", 5, 0, 4, 5),
        ("SCMP_CMP_LE", 5, 0, 5, 6),
        ("SCMP_CMP_MASKED_EQ", 0x4, 0x4, 7, 3),
    ],
)
def test_argument_operators(op: str, value: int, two: int, blocked: int, allowed: int) -> None:
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
         "args": [{"index": 2, "value": value, "valueTwo": two, "op": op}]}]}
    assert _in_child(profile, _prio(blocked)) == errno.EXDEV
    assert _in_child(profile, _prio(allowed)) == 0


def test_default_errno_and_allow_list() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": sorted(set(seccomp.SYSCALLS) - {"mkdir", "mkdirat"}), "action": "SCMP_ACT_ALLOW"}]}
    assert _in_child(profile, lambda: os.mkdir("/tmp/never-made-" + uuid.uuid4().hex)) == errno.EPERM
    assert _in_child(profile, os.getcwd) == 0
    with pytest.raises(seccomp.SeccompError):
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_NOTIFY"})


def test_container_gets_the_filter(rootfs: Path, tmp_path: Path) -> None:
    cli = Cli(vapp_oci(), Path(f"/tmp/vrt-sc-{uuid.uuid4().hex[:6]}"))
    script = "grep Seccomp: /proc/self/status; mkdir /tmp/d || echo denied"
    bundle = make_bundle(rootfs, tmp_path, ["sh", "-c", script])
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    (bundle / "config.json").write_text(json.dumps(cfg))
    try:
        result = cli("run", "--bundle", str(bundle), f"sc-{uuid.uuid4().hex[:6]}", check=False,
                     stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(cli.root, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0].split() == ["Seccomp:", "2"]
    assert "denied" in result.stdout
