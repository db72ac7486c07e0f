"""Layer application: entry kinds, metadata, whiteouts, compressions, hostile layers."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from app.runtime.images.safefs import UnsafeEntry
from app.runtime.images.stream import BadLayer
from app.runtime.images.unpack import UnpackOptions, apply_layer
from tests.images.tarbuild import E, compress, d, f, hard, sym, tar_bytes

OVERLAY = UnpackOptions(whiteouts="overlay")
APPLY = UnpackOptions(whiteouts="apply")


def apply(entries: list[E] | bytes, dest: Path, opts: UnpackOptions = OVERLAY, kind: str = "none"):
    raw = entries if isinstance(entries, bytes) else tar_bytes(entries)
    blob, media = compress(raw, kind)
    dest.mkdir(exist_ok=True)
    return apply_layer(io.BytesIO(blob), dest, media, opts)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "none"])
def test_entry_kinds_and_metadata(tmp_path: Path, kind: str) -> None:
    entries = [
        d("bin", 0o755, mtime=1000),
        f("bin/tool", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        f("etc/shadow", b"secret", mode=0o640, uid=0, gid=42),
        d("tmp", 0o1777, mtime=2000),
        d("ro", 0o555),
        f("ro/file", b"inside read-only dir", mode=0o444),
        sym("bin/sh", "tool"),
        sym("abs", "/etc/shadow"),
        hard("bin/tool-link", "bin/tool", mode=0o4755),
        E("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        f("sgid", b"", mode=0o2711, uid=1000, gid=1000),
        f("attr", b"a", xattrs={"user.comment": "hello"}),
    ]
    res = apply(entries, tmp_path / "root", kind=kind)
    root = tmp_path / "root"
    assert res.entries == len(entries)
    assert res.diff_id.startswith("sha256:") and res.size > 0
    st = os.lstat(root / "bin/tool")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_mtime == 1_600_000_000
    assert (root / "bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert os.lstat(root / "etc/shadow").st_gid == 42
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert os.lstat(root / "tmp").st_mtime == 2000
    assert os.lstat(root / "bin").st_mtime == 1000, "dir mtime set after its contents"
    assert stat.S_IMODE(os.lstat(root / "ro").st_mode) == 0o555
    assert os.readlink(root / "bin/sh") == "tool"
    assert os.readlink(root / "abs") == "/etc/shadow"
    assert os.lstat(root / "bin/tool-link").st_ino == st.st_ino
    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(root / "run/fifo").st_mode) == 0o620
    sg = os.lstat(root / "sgid")
    assert (stat.S_IMODE(sg.st_mode), sg.st_uid, sg.st_gid) == (0o2711, 1000, 1000)
    assert os.getxattr(root / "attr", "user.comment") == b"hello"


def test_digests_match_blob(tmp_path: Path) -> None:
    import hashlib

    raw = tar_bytes([f("a", b"1")])
    blob, media = compress(raw, "gzip")
    (tmp_path / "r").mkdir()
    res = apply_layer(io.BytesIO(blob), tmp_path / "r", media, OVERLAY)
    assert res.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert res.compressed_digest == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_sparse_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as fh:
        fh.seek(64 << 20)
        fh.write(b"end")
    archive = tmp_path / "s.tar"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(src), "-cf", str(archive), "sparse"], check=True)
    res = apply(archive.read_bytes(), tmp_path / "root")
    out = tmp_path / "root/sparse"
    assert out.stat().st_size == (64 << 20) + 3
    assert out.stat().st_blocks * 512 < 1 << 20, "holes kept"
    with open(out, "rb") as fh:
        fh.seek(64 << 20)
        assert fh.read() == b"end"
    assert res.entries == 1


def test_device_nodes_root_and_skipped(tmp_path: Path) -> None:
    null = E("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    apply([null], tmp_path / "root")
    st = os.lstat(tmp_path / "root/dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    res = apply([null], tmp_path / "rootless", UnpackOptions(devices=False))
    assert not (tmp_path / "rootless/dev/null").exists()
    assert any("device node" in w for w in res.warnings)


def test_overlay_whiteouts(tmp_path: Path) -> None:
    apply([d("etc"), f("etc/.wh.gone"), f("var/.wh..wh..opq"), f("var/keep"), f(".wh.x"), f("x")], tmp_path / "l")
    wh = os.lstat(tmp_path / "l/etc/gone")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(tmp_path / "l/var", "trusted.overlay.opaque") == b"y"
    assert (tmp_path / "l/var/keep").exists()
    assert stat.S_ISREG(os.lstat(tmp_path / "l/x").st_mode), "a name the layer provides survives its whiteout"
    assert not (tmp_path / "l/etc/.wh.gone").exists()


def test_apply_whiteouts_and_opaque(tmp_path: Path) -> None:
    root = tmp_path / "r"
    apply([f("a/old"), f("a/sub/deep"), f("b/gone"), f("b/stay"), f("c"), sym("l", "/etc")], root, APPLY)
    # opaque marker after and before the layer's own entries of the same dir
    apply([f("a/new"), f("a/.wh..wh..opq"), f("a/sub/fresh"), f("b/.wh.gone"), f(".wh.c"), d("l")], root, APPLY)
    assert sorted(os.listdir(root / "a")) == ["new", "sub"]
    assert os.listdir(root / "a/sub") == ["fresh"]
    assert os.listdir(root / "b") == ["stay"]
    assert not (root / "c").exists()
    assert (root / "l").is_dir() and not (root / "l").is_symlink()


def test_corrupt_and_wrong_type(tmp_path: Path) -> None:
    blob, _ = compress(tar_bytes([f("a", b"1" * 100_000)]), "gzip")
    with pytest.raises(BadLayer):
        apply_layer(
            io.BytesIO(blob[:200] + b"\0" * 50 + blob[250:]),
            _mk(tmp_path / "c1"),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            OVERLAY,
        )
    with pytest.raises(BadLayer):
        apply_layer(io.BytesIO(blob), _mk(tmp_path / "c2"), "application/vnd.oci.image.layer.v1.tar+zstd", OVERLAY)
    with pytest.raises(BadLayer):
        apply_layer(io.BytesIO(blob), _mk(tmp_path / "c3"), "application/x-unknown", OVERLAY)
    raw = tar_bytes([f("a", b"1" * 100_000)])
    with pytest.raises(BadLayer):
        apply(raw[:20_000], tmp_path / "c4")


def _mk(p: Path) -> Path:
    p.mkdir()
    return p


# --- hostile layers ----------------------------------------------------------------------

HOSTILE: dict[str, list[E]] = {
    "absolute": [f("{outside}/pwned")],
    "dotdot": [f("../outside/pwned")],
    "dotdot-inner": [d("a"), f("a/../../outside/pwned")],
    "symlink-then-write": [sym("l", "{outside}"), f("l/pwned")],
    "symlink-relative-then-write": [sym("l", "../outside"), f("l/pwned")],
    "symlink-then-dir": [sym("l", "{outside}"), d("l/sub")],
    "symlink-then-hardlink-through": [sym("l", "{outside}"), hard("h", "l/keep")],
    "symlink-then-overwrite": [sym("victim", "{outside}/keep"), f("victim", b"pwned")],
    "hardlink-absolute": [hard("h", "{outside}/keep")],
    "hardlink-dotdot": [hard("h", "../outside/keep")],
    "hardlink-to-symlink-then-write": [sym("s", "{outside}/keep"), hard("h", "s"), f("h", b"pwned")],
    "hardlink-missing": [hard("h", "nope")],
    "hardlink-dir": [d("dir"), hard("h", "dir")],
    "duplicate": [f("a", b"1"), f("a", b"2")],
    "duplicate-dotslash": [f("a", b"1"), f("./a", b"2")],
    "long-component": [f("a" * 300)],
    "long-path": [f("/".join(["abcdefgh"] * 600))],
    "deep-path": [f("/".join(["a"] * 1000))],
    "whiteout-dotdot": [f("../outside/.wh.keep")],
    "whiteout-dot": [f("a/.wh..")],
    "opaque-through-symlink": [sym("l", "{outside}"), f("l/.wh..wh..opq")],
    "whiteout-through-symlink": [sym("l", "{outside}"), f("l/.wh.keep")],
    "file-over-populated-dir": [f("d/child"), f("d")],
}


def _outside_snapshot(outside: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.lstat().st_mode, p.read_bytes()) for p in outside.iterdir()}


@pytest.mark.parametrize("mode", ["overlay", "apply"])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer_refused_host_untouched(tmp_path: Path, case: str, mode: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"original")
    before = _outside_snapshot(outside)
    entries = [
        E(
            e.name.replace("{outside}", str(outside)),
            e.type,
            e.data,
            e.mode,
            e.uid,
            e.gid,
            e.mtime,
            e.linkname.replace("{outside}", str(outside)),
        )
        for e in HOSTILE[case]
    ]
    root = tmp_path / "root"
    with pytest.raises(UnsafeEntry):
        apply(entries, root, UnpackOptions(whiteouts=mode))  # type: ignore[arg-type]
    assert _outside_snapshot(outside) == before
    assert os.listdir(outside) == ["keep"]
    assert not (tmp_path / "pwned").exists()


def test_whiteout_then_content_in_the_same_layer(tmp_path: Path) -> None:
    """``.wh.d`` and ``d/x`` in one layer: ``d`` is the layer's own, opaque over the lower ``d``."""
    apply([f(".wh.d"), f("d/x", b"new")], tmp_path / "l")
    assert (tmp_path / "l/d/x").read_bytes() == b"new"
    assert os.getxattr(tmp_path / "l/d", "trusted.overlay.opaque") == b"y"
    root = tmp_path / "r"
    apply([f("d/old")], root, APPLY)
    apply([f(".wh.d"), f("d/x", b"new")], root, APPLY)
    assert os.listdir(root / "d") == ["x"]


ENOSPC_SCRIPT = """
import io, subprocess, sys, tempfile
from app.errors import ResourceExhausted
from app.runtime.images.unpack import UnpackOptions, apply_layer
from tests.images.tarbuild import compress, f, tar_bytes
d = tempfile.mkdtemp()
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], check=True)
blob, media = compress(tar_bytes([f("big", b"x" * (3 << 20))]), "gzip")
try:
    apply_layer(io.BytesIO(blob), d, media, UnpackOptions())
except ResourceExhausted as exc:
    print("ResourceExhausted", exc.message)
"""


def test_full_disk_is_resource_exhausted() -> None:
    proc = subprocess.run(
        ["unshare", "-m", sys.executable, "-c", ENOSPC_SCRIPT], cwd=Path(__file__).parents[2],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.startswith("ResourceExhausted"), proc.stdout + proc.stderr


def test_forged_overlay_xattrs_dropped(tmp_path: Path) -> None:
    res = apply(
        [d("dir", xattrs={"trusted.overlay.redirect": "/etc", "user.keep": "1"}),
         f("dir/f", xattrs={"trusted.overlay.metacopy": "", "user.overlay.opaque": "y"})],
        tmp_path / "r",
    )  # fmt: skip
    assert os.listxattr(tmp_path / "r/dir") == ["user.keep"]
    assert os.listxattr(tmp_path / "r/dir/f") == []
    assert any("overlay xattr" in w for w in res.warnings)
