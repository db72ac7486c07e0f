"""Checks against injected files, fake helper binaries and canned /proc text."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from app.check import CheckEnv, CheckResult, Severity, exit_code, probes, render_json, render_text, run_checks
from app.check.cgroups import classify, inspect, parse_mountinfo, parse_proc_cgroup
from tests.helpers.procs import pid_alive

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /proc rw - proc proc rw
"""
HYBRID_CGROUP = "9:name=systemd:/\n8:pids:/\n4:memory:/a/b\n1:cpu:/\n0::/\n"
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/user.slice/user-1000.slice/session-1.scope\n"
V1_NESTED = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,relatime - cgroup cgroup rw,cpu,cpuacct\n"


def test_parse_hybrid() -> None:
    report = classify(parse_mountinfo(HYBRID_MOUNTINFO), parse_proc_cgroup(HYBRID_CGROUP))
    assert report.layout == "hybrid"
    assert report.own["memory"] == "/sys/fs/cgroup/memory/a/b"
    assert report.own["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert report.own["unified"] == "/sys/fs/cgroup/unified"


def test_parse_v2_and_v1_nested_root() -> None:
    report = classify(parse_mountinfo(V2_MOUNTINFO), parse_proc_cgroup(V2_CGROUP))
    assert report.layout == "v2"
    assert report.own == {"unified": "/sys/fs/cgroup/user.slice/user-1000.slice/session-1.scope"}
    mounts = parse_mountinfo(V1_NESTED)
    assert mounts[0].controllers == ("cpu", "cpuacct") and mounts[0].readonly
    nested = classify(mounts, parse_proc_cgroup("2:cpu,cpuacct:/docker/abc/sub\n"))
    assert nested.layout == "v1" and nested.own["cpu"] == "/sys/fs/cgroup/cpu,cpuacct/sub"


def test_v2_delegation_from_directory_permissions(tmp_path: Path) -> None:
    """A cgroup2 tree faked in a directory: writable cgroup.procs means delegated."""
    own = tmp_path / "user.slice"
    own.mkdir()
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    (own / "cgroup.procs").write_text("")
    mountinfo = f"30 23 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    report = inspect(mountinfo, "0::/user.slice\n")
    assert report.layout == "v2" and report.limits_possible
    assert report.writable == ["cpu", "memory", "pids"]


def test_subids(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("other:100000:65536\nbob:200000:1000\n1234:300000:70000\n")
    env = CheckEnv(uid=1234, user="bob", subuid_file=subuid, subgid_file=tmp_path / "absent")
    result = probes.check_subids(env, "subuid")
    assert result.ok and "71000 ids from 200000" in result.detail  # name and uid lines add up
    small = probes.check_subids(CheckEnv(uid=5, user="bob", subuid_file=tmp_path / "x"), "subuid")
    assert not small.ok and small.severity is Severity.WARN and "usermod --add-subuids" in small.fix
    missing_gid = probes.check_subids(env, "subgid")
    assert not missing_gid.ok and "single id" in missing_gid.detail
    subuid.write_text("bob:200000:1000\n")
    too_few = probes.check_subids(CheckEnv(uid=7, user="bob", subuid_file=subuid), "subuid")
    assert not too_few.ok and "fewer than 65536" in too_few.detail


def _fake_bin(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_userns_failure_is_fatal_rootless(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "unshare", "echo 'unshare: unshare failed: Operation not permitted' >&2; exit 1\n")
    env = CheckEnv(uid=1000, user="u", search_path=str(tmp_path))
    result = probes.check_userns(env)
    assert not result.ok and result.severity is Severity.FATAL
    assert "Operation not permitted" in result.detail and result.fix
    assert exit_code(run_checks(env)) == 1
    as_root = probes.check_userns(CheckEnv(uid=0, user="root", search_path=str(tmp_path)))
    assert not as_root.ok and as_root.severity is Severity.WARN


def test_missing_helpers_give_fixes(tmp_path: Path) -> None:
    env = CheckEnv(uid=1000, user="u", search_path=str(tmp_path))  # an empty PATH
    results = {r.name: r for r in run_checks(env)}
    assert results["pasta"].fix == "apt-get install passt"
    assert results["newuidmap/newgidmap"].fix.startswith("apt-get install uidmap")
    assert results["crun/runc"].fix == "apt-get install crun runc"
    assert results["fuse-overlayfs"].fix == "apt-get install fuse-overlayfs"
    assert results["user namespaces"].status == "fail"


def test_idmap_helper_without_setuid(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "newuidmap", "exit 0\n")
    _fake_bin(tmp_path, "newgidmap", "exit 0\n")
    result = probes.check_idmap_helpers(CheckEnv(uid=1000, user="u", search_path=str(tmp_path)))
    assert not result.ok and "neither setuid root nor has file capabilities" in result.detail
    (tmp_path / "newuidmap").chmod(0o4755)
    (tmp_path / "newgidmap").chmod(0o4755)
    ok = probes.check_idmap_helpers(CheckEnv(uid=1000, user="u", search_path=str(tmp_path)))
    assert ok.ok and "setuid root" in ok.detail


@pytest.mark.parametrize(("eff", "ok"), [("0000000001000000", True), ("000001fffeffffff", False)])
def test_sys_resource(tmp_path: Path, eff: str, ok: bool) -> None:
    status = tmp_path / "status"
    status.write_text(f"Name:\tx\nCapEff:\t{eff}\nCapBnd:\t000001fffeffffff\n")
    result = probes.check_sys_resource(CheckEnv(proc_status=status))
    assert result.ok is ok
    if not ok:
        assert "bounding set" in result.detail and "clamped" in result.detail


def test_probe_timeout_kills_the_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    start = time.monotonic()
    code, out = probes.run_probe(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; sleep 30"], 0.5)
    assert code is None and "timed out" in out
    assert time.monotonic() - start < 5
    background = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and pid_alive(background):
        time.sleep(0.02)
    assert not pid_alive(background)  # the whole session was killed, not just the shell


def test_probe_timeout_bounds_a_hanging_check(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "unshare", "exec sleep 30\n")
    start = time.monotonic()
    result = probes.check_userns(CheckEnv(uid=1000, user="u", search_path=str(tmp_path), timeout=0.3))
    assert not result.ok and "timed out after 0.3s" in result.detail
    assert time.monotonic() - start < 5


def test_rendering_and_exit_codes() -> None:
    ok = CheckResult("a", True, Severity.FATAL, "fine")
    warn = CheckResult("b", False, Severity.WARN, "degraded", "do x")
    fatal = CheckResult("c", False, Severity.FATAL, "broken", "do y")
    assert exit_code([ok, warn]) == 0
    assert exit_code([ok, warn, fatal]) == 1
    text = render_text([ok, warn, fatal])
    assert "[ ok ] a" in text and "[warn] b" in text and "[FAIL] c" in text
    assert "fix: do y" in text and "fix: do x" in text and "1 ok, 1 warnings, 1 fatal" in text
    doc = json.loads(render_json([ok, fatal]))
    assert doc["ok"] is False
    assert doc["results"][1] == {"name": "c", "ok": False, "severity": "fatal", "detail": "broken",
                                 "fix": "do y", "status": "fail", "id": ""}


def test_results_in_documented_order() -> None:
    results = run_checks(CheckEnv(search_path=os.devnull))
    names = [r.name for r in results]
    assert names[:3] == ["user namespaces", "/etc/subuid range", "/etc/subgid range"]
    assert names[-1] == "snapshotter" and len(names) == 13
    assert [r.id for r in results] == ["userns", "subuid", "subgid", "idmap_helpers", "pasta", "tun", "fuse",
                                       "overlay_userns", "fuse_overlayfs", "cgroups", "cap_sys_resource",
                                       "oci_runtimes", "snapshotter"]
