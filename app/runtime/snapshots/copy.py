"""Last-resort snapshotter: a merged, private copy of the layer stack per container.

Merging interprets what the unpacker stored in the layer snapshots, the way
overlayfs would: a character device 0/0 (or an empty ``.wh.NAME`` file) hides
NAME from lower layers, a directory marked opaque (``trusted.overlay.opaque``
or ``user.overlay.opaque`` = ``y``) hides everything below it. Hard links
inside one layer stay hard links. The destination is written through
:class:`~app.runtime.images.safefs.RootDir`, so a symlink a lower layer left
is replaced, never followed.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

from app.errors import Category, NotFound
from app.runtime.images.safefs import RootDir, remove_tree
from app.runtime.snapshots import Mount
from app.runtime.snapshots.layers import LayerSnapshots
from app.runtime.snapshots.overlay import check_container_id

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return os.path.lexists(os.path.join(path, ".wh..wh..opq"))


def _is_whiteout(st: os.stat_result, name: str) -> bool:
    return (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0) or name.startswith(".wh.")


def merge_layers(layer_dirs: list[Path], dest: Path) -> None:
    """Flatten ``layer_dirs`` (bottom first) into the empty directory ``dest``."""
    with RootDir(dest) as root:
        for layer in layer_dirs:
            _merge_one(str(layer), root)


def _merge_one(src_root: str, root: RootDir) -> None:
    links: dict[tuple[int, int], tuple[str, ...]] = {}
    dirs: list[tuple[tuple[str, ...], os.stat_result]] = []
    stack: list[tuple[str, ...]] = [()]
    while stack:
        rel = stack.pop()
        src_dir = os.path.join(src_root, *rel)
        st = os.lstat(src_dir)
        if rel:
            cur = root.lstat(rel)
            if cur is not None and not stat.S_ISDIR(cur.st_mode):
                root.remove(rel)
                cur = None
            if cur is None:
                os.mkdir(rel[-1], 0o700, dir_fd=root.dir_fd(rel[:-1], create=False))
            elif _is_opaque(src_dir):
                for child in root.listdir(rel):
                    root.remove((*rel, child))
        dirs.append((rel, st))
        fd = root.dir_fd(rel, create=False)
        _copy_meta(fd, st, src_dir)
        for entry in os.scandir(src_dir):
            est = entry.stat(follow_symlinks=False)
            path = (*rel, entry.name)
            if entry.name == ".wh..wh..opq":
                continue
            if _is_whiteout(est, entry.name):
                target = entry.name[4:] if entry.name.startswith(".wh.") else entry.name
                root.remove((*rel, target))
                continue
            if stat.S_ISDIR(est.st_mode):
                stack.append(path)
                continue
            _copy_entry(root, fd, path, entry.path, est, links)
    for rel, st in sorted(dirs, key=lambda d: len(d[0]), reverse=True):
        fd = root.dir_fd(rel, create=False)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_entry(
    root: RootDir,
    parent: int,
    path: tuple[str, ...],
    src: str,
    st: os.stat_result,
    links: dict[tuple[int, int], tuple[str, ...]],
) -> None:
    name = path[-1]
    if root.lstat(path) is not None:
        root.remove(path)
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in links:
        first = links[key]
        os.link(
            first[-1], name, src_dir_fd=root.dir_fd(first[:-1], create=False), dst_dir_fd=parent, follow_symlinks=False
        )
        return
    if stat.S_ISREG(st.st_mode):
        fd = os.open(name, _CREATE, 0o600, dir_fd=parent)
        try:
            with open(src, "rb") as fh:
                _copy_data(fh.fileno(), fd, st.st_size)
            _copy_meta(fd, st, src)
        finally:
            os.close(fd)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), name, dir_fd=parent)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)
    else:  # FIFO, device node
        os.mknod(name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev, dir_fd=parent)
        os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent)
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)
    if st.st_nlink > 1:
        links[key] = path


def _copy_data(src: int, dst: int, size: int) -> None:
    """In-kernel copy (reflink/copy_file_range on the same filesystem), read/write otherwise."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(src, dst, min(left, 1 << 30))
            if n == 0:
                break
            left -= n
        return
    except OSError:
        pass
    os.lseek(src, size - left, os.SEEK_SET)
    os.lseek(dst, size - left, os.SEEK_SET)
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]


def _copy_meta(fd: int, st: os.stat_result, src: str) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)
    for attr in os.listxattr(src, follow_symlinks=False):
        if attr in OPAQUE_XATTRS:
            continue
        try:
            os.setxattr(fd, attr, os.getxattr(src, attr, follow_symlinks=False))
        except OSError:
            continue
    if not stat.S_ISDIR(st.st_mode):
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


class CopySnapshotter:
    name: str = "copy"

    def __init__(self, layers: LayerSnapshots, root: Path, *, merger=None, remover=remove_tree) -> None:  # type: ignore[no-untyped-def]
        self.layers = layers
        self.root = Path(root) / "containers"
        self.root.mkdir(parents=True, exist_ok=True)
        self._merge = merger or merge_layers
        self._remove = remover

    def rootfs_dir(self, container_id: str) -> Path:
        return self.root / check_container_id(container_id) / "rootfs"

    def prepare(self, container_id: str, chain: list[str]) -> list[Mount]:
        rootfs = self.rootfs_dir(container_id)
        for chain_id in chain:
            if not self.layers.has(chain_id):
                raise NotFound(f"layer snapshot {chain_id} missing", category=Category.IMAGE)
        if not rootfs.exists():
            tmp = rootfs.parent / f".tmp-rootfs-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                self._merge([self.layers.fs(c) for c in chain], tmp)
                os.rename(tmp, rootfs)
            except BaseException:
                self._remove(tmp)
                raise
        return [Mount(type="bind", source=str(rootfs), options=("rbind", "rw"))]

    def cleanup(self) -> int:
        """Remove half-built copies an interrupted ``prepare`` left (start-up)."""
        n = 0
        for tmp in self.root.glob("*/.tmp-rootfs-*"):
            self._remove(tmp)
            n += 1
        return n

    def remove(self, container_id: str) -> None:
        base = self.root / check_container_id(container_id)
        if base.exists():
            self._remove(base)
