"""Regressions for OCI runtime-tools validation checks (`bench/oci_validation.py`), driven
through the ``vapp-oci`` command line the way the suite drives a runtime."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.runtime.kernel import cgroups
from tests.runtime.test_oci_cli import RUNTIMES, Cli, edit, make_bundle


@pytest.fixture
def vcli() -> Iterator[Cli]:
    root = Path(f"/tmp/vrt-val-{uuid.uuid4().hex[:8]}")
    yield Cli(RUNTIMES["vapp-oci"], root)
    subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.parametrize("version", ["invalid", "2.0.0", "1.0"])
def test_invalid_oci_version_rejected(vcli: Cli, rootfs: Path, tmp_path: Path, version: str) -> None:
    # misc_props: "MUST generate an error when invalid or unsupported values are encountered"
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    edit(bundle, lambda c: c.update(ociVersion=version))
    cid = f"v-{uuid.uuid4().hex[:6]}"
    result = vcli("create", "--bundle", str(bundle), cid, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "ociVersion" in result.stderr
    assert vcli("state", cid, check=False).returncode != 0  # nothing half-created


def test_unknown_properties_and_annotations_accepted(vcli: Cli, rootfs: Path, tmp_path: Path) -> None:
    # misc_props: unknown properties and annotation keys MUST NOT be an error; annotations reach state
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    edit(bundle, lambda c: c.update(ociVersion="1.0.2-dev", unknown="x", annotations={"org.x.y": ""}))
    cid = f"u-{uuid.uuid4().hex[:6]}"
    vcli("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    assert vcli.state(cid)["annotations"] == {"org.x.y": ""}
    vcli("delete", "--force", cid)


def test_prestart_hook_sees_created_state(vcli: Cli, rootfs: Path, tmp_path: Path) -> None:
    # hooks_stdin: the prestart hook gets the state (id, bundle, pid, annotations, status "created")
    out = tmp_path / "prestart.json"
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}"], "timeout": 5}
    edit(bundle, lambda c: c.update(annotations={"org.k": "v"}, hooks={"prestart": [hook]}))
    cid = f"h-{uuid.uuid4().hex[:6]}"
    vcli("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    seen = json.loads(out.read_text())
    st = vcli.state(cid)
    assert seen["status"] == "created" and seen["pid"] == st["pid"] > 0
    assert seen["id"] == cid and seen["bundle"] == str(bundle) and seen["annotations"] == {"org.k": "v"}
    vcli("delete", "--force", cid)


def test_failing_poststop_hook_warns_and_the_rest_still_run(vcli: Cli, rootfs: Path, tmp_path: Path) -> None:
    # poststop_fail: a failing poststop hook is a warning; the remaining hooks and delete go on
    out = tmp_path / "poststop.out"
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    hooks = [{"path": "/bin/false", "args": ["false"]},
             {"path": "/bin/sh", "args": ["sh", "-c", f"echo post-stop called >> {out}"]}]
    edit(bundle, lambda c: c.update(hooks={"poststop": hooks}))
    cid = f"p-{uuid.uuid4().hex[:6]}"
    vcli("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    vcli("start", cid)
    vcli.wait_status(cid, "stopped")
    done = vcli("delete", cid)
    assert "warning" in done.stderr and "/bin/false" in done.stderr
    assert out.read_text() == "post-stop called\n"
    assert vcli("state", cid, check=False).returncode != 0


def test_poststart_hook_state_of_a_process_that_already_exited(vcli: Cli, rootfs: Path, tmp_path: Path) -> None:
    # hooks_stdin: poststart gets status "running" and the pid even when the process exits at once
    out = tmp_path / "poststart.json"
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    hook = {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}"]}  # `true` often exits before start returns
    edit(bundle, lambda c: c.update(hooks={"poststart": [hook]}))
    cid = f"s-{uuid.uuid4().hex[:6]}"
    vcli("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    pid = vcli.state(cid)["pid"]
    vcli("start", cid)
    seen = json.loads(out.read_text())
    assert seen["status"] == "running" and seen["pid"] == pid > 0 and seen["id"] == cid
    vcli.wait_status(cid, "stopped")
    vcli("delete", cid)


def test_cpu_limits_join_a_cpuset_cgroup_on_v1(vcli: Cli, rootfs: Path, tmp_path: Path) -> None:
    # linux_cgroups_cpus: cpu limits are read beside cpuset.cpus/mems at the same cgroupsPath
    if cgroups.is_v2():
        pytest.fail("this check is for the v1/hybrid hierarchy of this machine")
    rel = f"vrt-val/{uuid.uuid4().hex[:8]}/c"
    bundle = make_bundle(rootfs, tmp_path, ["sleep", "30"])
    cpu = {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"}
    edit(bundle, lambda c: c["linux"].update(cgroupsPath="/" + rel, resources={"cpu": cpu}))
    cid = f"c-{uuid.uuid4().hex[:6]}"
    vcli("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    try:
        pid = str(vcli.state(cid)["pid"])
        cpuset, cpudir = Path("/sys/fs/cgroup/cpuset", rel), Path("/sys/fs/cgroup/cpu", rel)
        assert pid in (cpuset / "cgroup.procs").read_text().split()
        assert (cpuset / "cpuset.cpus").read_text().strip() == "0"
        assert (cpuset / "cpuset.mems").read_text().strip() != ""  # inherited, so a task could join
        assert (cpudir / "cpu.cfs_quota_us").read_text().strip() == "50000"
        vcli("delete", "--force", cid)
        assert not cpuset.exists() and not cpudir.exists()  # delete removes what create made
    finally:
        vcli("delete", "--force", cid, check=False)
        for ctrl in ("cpuset", "cpu", "memory", "pids"):  # the parents are ours too
            for level in (rel, rel.rsplit("/", 1)[0], rel.split("/")[0]):
                with contextlib.suppress(OSError):
                    Path("/sys/fs/cgroup", ctrl, level).rmdir()
