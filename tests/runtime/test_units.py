"""Pure pieces and the fake kernel: mount options, CRI logs, cgroup files, state, setup sequences."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app.runtime import kernel as k
from app.runtime.kernel import caps, cgroups
from app.runtime.kernel.fake import FakeKernel
from app.runtime.oci import mountopts, process, rootfs, state
from app.runtime.supervise.logs import LogWriter, format_records


def test_mount_options() -> None:
    opts = mountopts.parse(["rbind", "ro", "nosuid", "rprivate", "mode=755", "size=1k"])
    assert opts.flags == k.MS_BIND | k.MS_REC | k.MS_RDONLY | k.MS_NOSUID
    assert opts.propagation == [k.MS_PRIVATE | k.MS_REC]
    assert opts.data == "mode=755,size=1k"
    assert opts.remount_flags == k.MS_RDONLY | k.MS_NOSUID
    assert mountopts.parse(["ro", "rw"]).flags == 0
    assert mountopts.parse([], "bind").is_bind


def test_cri_log_format_partial_and_rotation(tmp_path: Path) -> None:
    records, rest = format_records("stdout", b"a\nbb\ncc", now=0.5)
    assert records == b"1970-01-01T00:00:00.500000000Z stdout F a\n1970-01-01T00:00:00.500000000Z stdout F bb\n"
    assert rest == b"cc"
    long, _ = format_records("stderr", b"x" * 10 + b"\n", max_line=4)
    assert [line.split(b" ")[2] for line in long.splitlines()] == [b"P", b"P", b"F"]
    log = LogWriter(str(tmp_path / "c.log"), max_bytes=200, keep=3)
    for i in range(20):
        log.write("stdout", f"line-{i}\n".encode())
    log.write("stdout", b"tail-no-newline")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["c.log", "c.log.1", "c.log.2"]
    assert all(p.stat().st_size <= 200 for p in tmp_path.iterdir())
    assert (tmp_path / "c.log").read_text().splitlines()[-1].endswith("stdout P tail-no-newline")


def test_cgroup_files() -> None:
    res = {"memory": {"limit": 1000, "swap": 2000}, "cpu": {"quota": 5000, "period": 10000, "shares": 1024},
           "pids": {"limit": 0}}
    v1 = cgroups.v1_files(res)
    assert v1["memory"] == {"memory.limit_in_bytes": "1000", "memory.memsw.limit_in_bytes": "2000"}
    assert v1["cpu"] == {"cpu.shares": "1024", "cpu.cfs_period_us": "10000", "cpu.cfs_quota_us": "5000"}
    assert v1["pids"] == {"pids.max": "max"}
    v2 = cgroups.v2_files(res)
    assert v2["memory.max"] == "1000" and v2["memory.swap.max"] == "1000"
    assert v2["cpu.max"] == "5000 10000" and v2["cpu.weight"] == "39"
    assert cgroups.normalize_path("system.slice:vapp:abc", "x") == "/system.slice/vapp-abc"
    assert cgroups.normalize_path(None, "x") == "/vapp/x"


def test_cgroup_create_in_temp_hierarchy(tmp_path: Path) -> None:
    for ctrl in cgroups.V1_CONTROLLERS:
        (tmp_path / ctrl).mkdir()
    cg = cgroups.create("/vapp/c1", {"memory": {"limit": 4096}, "pids": {"limit": 5}}, root=str(tmp_path))
    assert (tmp_path / "memory/vapp/c1/memory.limit_in_bytes").read_text() == "4096"
    assert (tmp_path / "pids/vapp/c1/pids.max").read_text() == "5"
    assert len(cg.dirs) == 3
    for d in cg.dirs:  # a real cgroupfs removes its files itself
        for f in Path(d).iterdir():
            f.unlink()
    cgroups.remove(cg.dirs)
    assert not (tmp_path / "memory/vapp/c1").exists()


def test_state_liveness(tmp_path: Path) -> None:
    me = state.proc_stat(os.getpid())
    assert me is not None
    assert state.process_alive(os.getpid(), me[1])
    assert not state.process_alive(os.getpid(), me[1] + 1)  # pid reuse guard
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    time.sleep(0.1)
    assert not state.process_alive(pid, None)  # zombie = exited
    os.waitpid(pid, 0)
    st = {"id": "c", "bundle": "/b", "pid": os.getpid(), "pidStartTime": me[1], "status": "created"}
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "exec.sock").touch()
    assert state.public_state(str(tmp_path), st)["status"] == "created"
    (tmp_path / "c" / "exec.sock").unlink()
    assert state.public_state(str(tmp_path), st)["status"] == "running"
    assert state.public_state(str(tmp_path), st | {"pid": 999999999})["status"] == "stopped"


def test_capability_sequence_with_fake_kernel() -> None:
    fake = FakeKernel()
    caps.apply_bounding(fake, caps.cap_mask(["CAP_KILL"]))
    dropped = [args[1] for name, args in fake.calls if name == "prctl" and args[0] == k.PR_CAPBSET_DROP]
    assert 5 not in dropped and 21 in dropped and len(dropped) == k.cap_last_cap()
    fake = FakeKernel()
    mask = caps.cap_mask(["CAP_KILL", "CAP_CHOWN"])
    caps.apply_sets(fake, mask, mask, 0, 0)
    assert fake.calls[0] == ("capset", (mask, mask, 0))
    with pytest.raises(caps.UnknownCapability):
        caps.cap_mask(["CAP_NOPE"])


def test_rootfs_finish_with_fake_kernel(tmp_path: Path) -> None:
    fake = FakeKernel()
    secret = tmp_path / "secret"
    secret.touch()
    rootfs.finish(fake, {"maskedPaths": [str(secret), str(tmp_path), "/nonexistent"],
                         "readonlyPaths": [str(tmp_path)], "rootfsPropagation": "shared"}, True, False)
    mounts = [args for name, args in fake.calls if name == "mount"]
    assert mounts[0][:2] == ("/dev/null", str(secret))  # a file is masked with /dev/null
    assert mounts[1][2] == "tmpfs" and mounts[1][3] == k.MS_RDONLY  # a dir with a read-only tmpfs
    assert mounts[3][3] & k.MS_RDONLY and mounts[3][3] & k.MS_REMOUNT
    assert mounts[4][1] == "/" and mounts[4][3] & k.MS_RDONLY  # root.readonly
    assert mounts[5] == ("none", "/", None, k.MS_SHARED, None)


def test_mount_one_bind_userns_keeps_locked_flags(tmp_path: Path) -> None:
    fake = FakeKernel()
    (tmp_path / "root").mkdir()
    (tmp_path / "src").mkdir()
    ctx = rootfs.RootfsContext(str(tmp_path / "root"), in_userns=True, owns_netns=False, owns_ipcns=False)
    rootfs.mount_one(fake, ctx, {"destination": "/a/b", "type": "bind", "source": str(tmp_path / "src"),
                                 "options": ["rbind", "ro"]})
    assert (tmp_path / "root/a/b").is_dir()
    first, second = (args for name, args in fake.calls if name == "mount")
    assert first[3] == k.MS_BIND | k.MS_REC
    assert second[3] & (k.MS_REMOUNT | k.MS_RDONLY | k.MS_BIND) == k.MS_REMOUNT | k.MS_RDONLY | k.MS_BIND
    fake = FakeKernel()
    rootfs.mount_one(fake, ctx, {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]})
    assert fake.calls[0][1][:2] == ("/sys", str(tmp_path / "root/sys"))  # netns not owned: bind /sys


def test_rlimit_clamp_and_exec_lookup(tmp_path: Path) -> None:
    with pytest.raises(process.SetupError) as err:
        process.find_executable("definitely-missing", ["PATH=/bin"], "/")
    assert err.value.code == 127 and "executable file not found in $PATH" in str(err.value)
    assert process.find_executable("sh", ["PATH=/nope:/bin"], "/") == "/bin/sh"
    with pytest.raises(process.SetupError) as err:
        process.find_executable(str(tmp_path), [], "/")
    assert err.value.code == 126
    with pytest.raises(process.SetupError, match="not a known"):
        process.apply_rlimits([{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}])


def test_symlink_resolution_stays_in_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    os.symlink("/../../../../outside", root / "escape")
    os.symlink("../etc", root / "rel")
    assert rootfs._join(str(root), "/escape/x") == str(root / "outside/x")
    assert rootfs._join(str(root), "/rel/hosts") == str(root / "etc/hosts")


def test_overlay_annotation_is_mounted_on_the_root_first() -> None:
    """The init mounts the annotated overlay on root.path (in its own namespaces) before the bind."""
    import json

    desc = {"type": "overlay", "source": "overlay",
            "options": ["lowerdir=/l2:/l1", "upperdir=/c/upper", "workdir=/c/work", "userxattr"]}
    data = rootfs.overlay_data({rootfs.OVERLAY_ANNOTATION: json.dumps(desc)})
    assert data == "lowerdir=/l2:/l1,upperdir=/c/upper,workdir=/c/work,userxattr"
    fake = FakeKernel()
    ctx = rootfs.RootfsContext(rootfs="/c/rootfs", in_userns=True, owns_netns=True, owns_ipcns=True, overlay=data)
    rootfs.prepare_root(fake, ctx)
    assert [c[0] for c in fake.calls] == ["mount", "mount", "mount"]
    assert fake.calls[1][1] == ("overlay", "/c/rootfs", "overlay", 0, data)
    assert fake.calls[2][1][:2] == ("/c/rootfs", "/c/rootfs")  # then the usual self-bind
    assert rootfs.overlay_data({}) is None


@pytest.mark.parametrize("options", [
    ["lowerdir=/a,upperdir=/x"],  # a comma smuggling options
    ["upperdir=/u", "workdir=/w"],  # no lowerdir
    ["lowerdir=/a", "dax"],  # not an overlay option
])
def test_overlay_annotation_rejects_bad_descriptions(options: list[str]) -> None:
    import json

    with pytest.raises(rootfs.MountError):
        rootfs.overlay_data({rootfs.OVERLAY_ANNOTATION: json.dumps({"type": "overlay", "options": options})})
    with pytest.raises(rootfs.MountError):
        rootfs.overlay_data({rootfs.OVERLAY_ANNOTATION: "not json"})
