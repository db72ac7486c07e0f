"""Container root filesystems from layer snapshots: overlay, fuse-overlayfs, copy; root and rootless."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from app.runtime.snapshots import Mount, chain_ids
from app.runtime.snapshots.copy import CopySnapshotter
from app.runtime.snapshots.overlay import OverlaySnapshotter
from app.runtime.snapshots.probe import probe_snapshotter
from tests.helpers.users import run_as
from tests.images.conftest import PullEnv, tree, umoci_rootfs

REPO = Path(__file__).parents[2]


def _dump(prefix: list[str], mount: Mount, target: Path, run=subprocess.run) -> dict:  # type: ignore[no-untyped-def,type-arg]
    argv = [*prefix, sys.executable, "-m", "tests.images.nsdump", mount.type, mount.source, mount.data(), str(target)]
    proc = run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    return {"tree": {k: tuple(v) for k, v in doc["tree"].items()}, "mount_ms": doc["mount_ms"]}


def test_chain_ids() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    ids = chain_ids([a, b])
    assert ids[0] == a
    import hashlib

    assert ids[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()


@pytest.mark.parametrize("kind", ["overlay", "fuse-overlayfs", "copy"])
async def test_rootfs_matches_umoci(pull_env: PullEnv, test_images, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    img = test_images.multilayer
    res = await pull_env.puller().pull(img.ref)
    expected = tree(umoci_rootfs(img.oci_layout, tmp_path / "umoci"))
    if kind == "copy":
        snap = CopySnapshotter(pull_env.layers, pull_env.root / "snapshots")
    else:
        snap = OverlaySnapshotter(pull_env.layers, pull_env.root / "snapshots", kind=kind)  # type: ignore[assignment,arg-type]
    mounts = snap.prepare("c1", res.chain_ids)
    assert snap.prepare("c1", res.chain_ids) == mounts, "prepare is idempotent"
    target = snap.rootfs_dir("c1")
    if kind == "copy":
        assert tree(target) == expected
    else:
        assert _dump(["unshare", "-m"], mounts[0], target)["tree"] == expected
    snap.remove("c1")
    assert not (pull_env.root / "snapshots/containers/c1").exists()
    assert all(pull_env.layers.has(c) for c in res.chain_ids), "removing a container keeps the layers"


def test_probe_as_root(tmp_path: Path) -> None:
    assert probe_snapshotter(tmp_path) == ("overlay", "native overlayfs")


ROOTLESS_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from app.content.store import LocalContentStore
from app.oci.manifest import Platform
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.snapshots.layers import LayerSnapshots
from app.runtime.snapshots.copy import CopySnapshotter
from app.runtime.snapshots.overlay import OverlaySnapshotter
from app.runtime.snapshots.probe import probe_snapshotter
root, url, ref = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
store = LocalContentStore(root / "content")
unpacker = LayerUnpacker.for_this_process()
layers = LayerSnapshots(root / "snapshots", remover=unpacker.remove)
async def main():
    fetcher = RegistryFetcher(store, url)
    p = Puller(fetcher, store, layers, unpacker, platform=Platform("linux", "amd64"))
    res = await p.pull(ref)
    await fetcher.aclose()
    return res
res = asyncio.run(main())
snap = OverlaySnapshotter(layers, root / "snapshots", userxattr=True, remover=unpacker.remove)
m = snap.prepare("c1", res.chain_ids)[0]
copy = CopySnapshotter(layers, root / "snapshots", merger=unpacker.merge, remover=unpacker.remove)
copy.prepare("c2", res.chain_ids)
print(json.dumps({"mode": unpacker.mode, "type": m.type, "source": m.source, "data": m.data(),
                  "target": str(snap.rootfs_dir("c1")), "chains": res.chain_ids, "probe": probe_snapshotter(),
                  "copy": str(copy.rootfs_dir("c2"))}))
"""


@pytest.mark.parametrize("name", ["busybox", "multilayer"])
def test_rootless_unpack_and_overlay(unpriv_user, test_images, registry, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    img = test_images[name]
    work = Path(tempfile.mkdtemp(prefix="vapp-img-rootless-", dir="/tmp"))
    os.chown(work, unpriv_user.uid, unpriv_user.gid)
    try:
        proc = run_as(unpriv_user, [sys.executable, "-c", ROOTLESS_SCRIPT, work, registry.url, img.ref], cwd=REPO)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        assert doc["mode"] == "rootless-userns"
        assert doc["probe"][0] == "overlay"
        # On disk, container IDs are the user's own (0) and its subordinate range (1..).
        layer_fs = work / "snapshots/layers" / doc["chains"][0][7:] / "fs"
        owners = {os.lstat(p).st_uid for p in [layer_fs, *layer_fs.rglob("*")]}
        assert owners <= {unpriv_user.uid} | set(range(unpriv_user.subuid_start, unpriv_user.subuid_start + 65536))
        ns = [
            "unshare",
            "--user",
            "--map-root-user",
            f"--map-users={unpriv_user.subuid_start},1,65536",
            f"--map-groups={unpriv_user.subgid.start},1,65536",
            "--mount",
        ]
        mount = Mount(doc["type"], doc["source"], tuple(doc["data"].split(",")))
        got = _dump(ns, mount, Path(doc["target"]), run=lambda argv, **kw: run_as(unpriv_user, argv, **kw))
        expected = tree(umoci_rootfs(img.oci_layout, tmp_path / "umoci"))
        assert got["tree"] == expected

        # The copy snapshotter's merged tree, seen from the host: IDs shifted into the range.
        def to_container(host_id: int, start: int) -> int:
            return 0 if host_id in (unpriv_user.uid, unpriv_user.gid) else host_id - start + 1

        copied = {
            k: (t, m, to_container(u, unpriv_user.subuid_start), to_container(g, unpriv_user.subgid.start), x)
            for k, (t, m, u, g, x) in tree(Path(doc["copy"])).items()
        }
        assert copied == expected
    finally:
        subprocess.run(
            [
                "unshare",
                "--user",
                "--map-root-user",
                f"--map-users={unpriv_user.subuid_start},1,65536",
                f"--map-groups={unpriv_user.subgid.start},1,65536",
                "rm",
                "-rf",
                str(work),
            ],
            user=unpriv_user.uid,
            group=unpriv_user.gid,
            check=False,
            cwd="/",
        )
        shutil.rmtree(work, ignore_errors=True)


def test_snapshotter_contract(tmp_path: Path) -> None:
    """Ids are confined, unknown removals are no-ops, missing layers are a clear NotFound."""
    from app.errors import InvalidArgument, NotFound
    from app.runtime.snapshots.layers import LayerSnapshots

    layers = LayerSnapshots(tmp_path)
    for snap in (OverlaySnapshotter(layers, tmp_path), CopySnapshotter(layers, tmp_path)):
        for bad in ("", "..", "a/b", "x" * 300):
            with pytest.raises(InvalidArgument):
                snap.prepare(bad, [])
        snap.remove("never-prepared")
        with pytest.raises(NotFound):
            snap.prepare("c", ["sha256:" + "1" * 64])
        assert snap.prepare("empty", []), "an image without layers still gets a rootfs"
        snap.remove("empty")
        snap.remove("c")
        assert not (tmp_path / "containers" / "empty").exists()


def test_build_snapshotter_choice(tmp_path: Path) -> None:
    from app.runtime.snapshots.layers import LayerSnapshots
    from app.runtime.snapshots.select import build_snapshotter

    layers = LayerSnapshots(tmp_path)
    snap, why = build_snapshotter("auto", layers, tmp_path, rootless=False)
    assert snap.name == "overlay" and why == "native overlayfs"
    snap, why = build_snapshotter("auto", layers, tmp_path, rootless=True)
    assert snap.name == "copy" and "user namespace" in why
    snap, _ = build_snapshotter("auto", layers, tmp_path, rootless=True, mounts_in_userns=True)
    assert snap.name == "overlay" and isinstance(snap, OverlaySnapshotter) and snap.userxattr
    for choice in ("overlay", "fuse-overlayfs", "copy"):
        assert build_snapshotter(choice, layers, tmp_path)[0].name == choice


def test_copy_cleanup_of_interrupted_prepare(tmp_path: Path) -> None:
    from app.runtime.snapshots.layers import LayerSnapshots

    snap = CopySnapshotter(LayerSnapshots(tmp_path), tmp_path)
    half = tmp_path / "containers/c1/.tmp-rootfs-abcd/etc"
    half.mkdir(parents=True)
    assert snap.cleanup() == 1
    assert not half.parent.exists()
