"""``vapp-core check`` on this machine, as root and as the unprivileged user.

Expectations are this machine's real state (see /work/shared/docs/machine-notes.md,
prepared by scripts/setup-system.sh): user namespaces work, vapptest has subid
ranges, tun/fuse are 0666, overlay with userxattr and fuse-overlayfs mount in a
user namespace, cgroups are hybrid and writable only by root.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from app.check import CheckEnv, exit_code, probes, run_checks
from tests.helpers.users import UnprivUser, run_as

REPO = Path(__file__).resolve().parents[2]

CHECK_AS_JSON = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from app.check import CheckEnv, render_json, run_checks\n"
    "kw = json.loads(sys.argv[1])\n"
    "env = CheckEnv(**{k: Path(v) for k, v in kw.items()})\n"
    "print(render_json(run_checks(env)))\n"
)


def _by_name(results: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(r["name"]): r for r in results}


def _check_as(user: UnprivUser, **paths: str) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    proc = run_as(user, [".venv/bin/python", "-c", CHECK_AS_JSON, json.dumps(paths)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return doc, _by_name(doc["results"])


def _has_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> probes.CAP_SYS_RESOURCE & 1)
    return False


def test_as_root() -> None:
    results = {r.name: r for r in run_checks()}
    assert exit_code(list(results.values())) == 0
    for name in ("user namespaces", "newuidmap/newgidmap", "pasta", "/dev/net/tun", "/dev/fuse",
                 "overlayfs in a user namespace", "fuse-overlayfs", "crun/runc"):
        assert results[name].ok, results[name]
    assert "not needed as root" in results["/etc/subuid range"].detail
    cg = results["cgroups"]
    assert cg.ok and "layout hybrid" in cg.detail and "memory" in cg.detail
    cap = results["CAP_SYS_RESOURCE"]
    assert cap.ok == _has_sys_resource()
    if not cap.ok:
        assert cap.severity == "warn" and "clamped" in cap.detail


def test_as_unprivileged_user(unpriv_user: UnprivUser) -> None:
    doc, results = _check_as(unpriv_user)
    assert doc["ok"] is True  # warnings only
    assert results["user namespaces"]["ok"] is True
    assert f"uid {unpriv_user.uid}" in str(results["user namespaces"]["detail"])
    sub = results["/etc/subuid range"]
    assert sub["ok"] is True
    assert f"{unpriv_user.subuid_count} ids from {unpriv_user.subuid_start}" in str(sub["detail"])
    assert results["/etc/subgid range"]["ok"] is True
    for name in ("newuidmap/newgidmap", "/dev/net/tun", "/dev/fuse", "overlayfs in a user namespace",
                 "fuse-overlayfs"):
        assert results[name]["ok"] is True, results[name]
    # Nothing is delegated to vapptest here: limits unavailable, a warning with a fix.
    cg = results["cgroups"]
    assert cg["ok"] is False and cg["status"] == "warn" and "Delegate=yes" in str(cg["fix"])
    assert results["CAP_SYS_RESOURCE"]["status"] == "warn"


def test_fuse_device_not_usable_by_user(unpriv_user: UnprivUser, open_tmp: Path) -> None:
    """A /dev/fuse twin with mode 0600: the user is told to chmod 666; 0666 passes."""
    real = os.stat("/dev/fuse")
    node = open_tmp / "fuse"
    os.mknod(node, stat.S_IFCHR | 0o600, real.st_rdev)
    node.chmod(0o600)
    _, results = _check_as(unpriv_user, fuse_device=str(node))
    fuse = results[str(node)]
    assert fuse["id"] == "fuse" and fuse["ok"] is False and fuse["status"] == "warn"
    assert "mode 0600" in str(fuse["detail"]) and "Permission denied" in str(fuse["detail"])
    assert fuse["fix"] == f"chmod 666 {node} (as root; udev does this on most systems)"
    node.chmod(0o666)
    _, results = _check_as(unpriv_user, fuse_device=str(node))
    assert results[str(node)]["ok"] is True


def test_tun_device_missing_or_not_a_device(unpriv_user: UnprivUser, open_tmp: Path) -> None:
    regular = open_tmp / "tun"
    regular.write_text("")
    _, results = _check_as(unpriv_user, tun_device=str(open_tmp / "absent"), fuse_device=str(regular))
    assert "missing" in str(results[str(open_tmp / "absent")]["detail"])
    assert "not a character device" in str(results[str(regular)]["detail"])


def test_overlay_probe_uses_scratch_dir(unpriv_user: UnprivUser, open_tmp: Path) -> None:
    scratch = open_tmp / "scratch"
    scratch.mkdir()
    os.chown(scratch, unpriv_user.uid, unpriv_user.gid)
    _, results = _check_as(unpriv_user, scratch_dir=str(scratch))
    overlay = results["overlayfs in a user namespace"]
    assert overlay["ok"] is True and str(scratch) in str(overlay["detail"])
    assert list(scratch.iterdir()) == []  # probe dirs (even work/work mode 000) cleaned up


def test_cli_check_json(unpriv_user: UnprivUser) -> None:
    as_root = run_checks(CheckEnv())
    proc = run_as(unpriv_user, [str(REPO / ".venv/bin/vapp-core"), "check", "--json"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["name"] for r in doc["results"]] == [r.name for r in as_root]
