"""Rootless extraction as vapptest: the mapped user-namespace helper, devices, IDs, hostile layers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from app.runtime.images.safefs import UnsafeEntry
from app.runtime.images.unpack import UnpackOptions
from tests.helpers.users import run_as
from tests.images.tarbuild import E, compress, d, f, sym, tar_bytes
from tests.images.test_unpack import HOSTILE, apply

REPO = Path(__file__).parents[2]

SCRIPT = """
import json, sys
from pathlib import Path
from app.errors import VappError
from app.runtime.images.unpacker import LayerUnpacker
u = LayerUnpacker.for_this_process()
blob, media, dest = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
dest.mkdir()
try:
    r = u(blob, media, dest)
    out = {"ok": True, "mode": u.mode, "warnings": r.warnings, "entries": r.entries}
except VappError as e:
    out = {"ok": False, "mode": u.mode, "type": type(e).__name__, "message": e.message}
if len(sys.argv) > 4:
    u.remove(dest)
    out["removed"] = not dest.exists()
print(json.dumps(out))
"""


@pytest.fixture
def work(unpriv_user):  # type: ignore[no-untyped-def]
    path = Path(tempfile.mkdtemp(prefix="vapp-img-rl-", dir="/tmp"))
    os.chown(path, unpriv_user.uid, unpriv_user.gid)
    yield path
    u = unpriv_user
    subprocess.run(
        ["unshare", "--user", "--map-root-user", f"--map-users={u.subuid_start},1,65536",
         f"--map-groups={u.subgid.start},1,65536", "rm", "-rf", str(path)],
        user=u.uid, group=u.gid, check=False, cwd="/",
    )  # fmt: skip
    shutil.rmtree(path, ignore_errors=True)


def unpack_as(user, work: Path, entries: list[E], *, remove: bool = False) -> dict:  # type: ignore[no-untyped-def,type-arg]
    blob, media = compress(tar_bytes(entries), "gzip")
    path = work / f"layer-{len(list(work.iterdir()))}.tgz"
    path.write_bytes(blob)
    os.chmod(path, 0o644)
    dest = work / f"out-{path.stem}"
    argv = [sys.executable, "-c", SCRIPT, path, media, dest] + (["rm"] if remove else [])
    proc = run_as(user, argv, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "dest": dest}


def test_ownership_devices_whiteouts(unpriv_user, work: Path) -> None:  # type: ignore[no-untyped-def]
    u = unpriv_user
    out = unpack_as(u, work, [
        d("etc", uid=0), f("etc/app.conf", b"x", uid=33, gid=33, mode=0o640),
        f("bin/su", b"s", mode=0o4755), E("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        f("etc/.wh.gone"), f("var/.wh..wh..opq"), sym("lnk", "/etc/app.conf", uid=5),
    ])  # fmt: skip
    assert out["ok"] and out["mode"] == "rootless-userns"
    root = out["dest"]
    st = os.lstat(root / "etc/app.conf")
    assert (st.st_uid, st.st_gid) == (u.subuid_start + 32, u.subgid.start + 32), "container 33 → subordinate 33"
    assert os.lstat(root / "etc").st_uid == u.uid, "container root → the user"
    assert os.lstat(root / "bin/su").st_mode & 0o7777 == 0o4755
    assert os.lstat(root / "lnk").st_uid == u.subuid_start + 4
    assert not (root / "dev/null").exists() and any("device node" in w for w in out["warnings"])
    wh = os.lstat(root / "etc/gone")
    assert wh.st_rdev == 0 and (wh.st_mode & 0o170000) == 0o020000, "overlay whiteout made in the namespace"
    assert os.getxattr(root / "var", "user.overlay.opaque") == b"y"


def test_removal_in_namespace(unpriv_user, work: Path) -> None:  # type: ignore[no-untyped-def]
    out = unpack_as(unpriv_user, work, [d("x", mode=0o500, uid=7), f("x/y", uid=7, mode=0o400)], remove=True)
    assert out["ok"] and out["removed"]


def test_ids_beyond_the_map_refused(unpriv_user, work: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = unpack_as(unpriv_user, work, [f("big", uid=70000)])
    assert not out["ok"] and out["type"] == "UnsafeEntry" and "70000" in out["message"]
    with pytest.raises(UnsafeEntry):
        apply([f("big", uid=70000)], tmp_path / "r", UnpackOptions(id_limit=65536))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_as_unprivileged(unpriv_user, work: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    outside = work / "outside"
    if not outside.exists():
        outside.mkdir()
        (outside / "keep").write_bytes(b"original")
        os.chown(outside, unpriv_user.uid, unpriv_user.gid)
        os.chown(outside / "keep", unpriv_user.uid, unpriv_user.gid)
    entries = [
        E(e.name.replace("{outside}", str(outside)), e.type, e.data, e.mode, e.uid, e.gid, e.mtime,
          e.linkname.replace("{outside}", str(outside)))
        for e in HOSTILE[case]
    ]  # fmt: skip
    out = unpack_as(unpriv_user, work, entries)
    assert not out["ok"] and out["type"] == "UnsafeEntry", out
    assert os.listdir(outside) == ["keep"] and (outside / "keep").read_bytes() == b"original"
