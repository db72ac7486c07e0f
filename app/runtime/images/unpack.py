"""Safe, streaming application of one OCI layer (a tar changeset) to a directory.

Two whiteout formats, chosen by the caller:

``overlay``  (layer snapshots used as overlayfs lower dirs; the snapshot starts empty)
    ``.wh.NAME``         → character device 0/0 named NAME (overlayfs whiteout);
                           when mknod is refused (unprivileged, no user namespace)
                           an empty regular file ``.wh.NAME`` is kept instead,
                           the format fuse-overlayfs and the copy snapshotter read
    ``.wh..wh..opq``     → xattr ``<opaque_xattr>=y`` on the directory
                           (``trusted.overlay.opaque``; ``user.overlay.opaque``
                           for overlay mounted with ``userxattr`` in a user namespace)
``apply``    (flattening: the layer is applied on top of the tree already there)
    ``.wh.NAME``         → NAME removed, unless this layer itself provides NAME
    ``.wh..wh..opq``     → every child of the directory not provided by this layer removed

Per the image spec a whiteout only hides lower content: a name the same layer
provides survives its whiteout, whatever the order in the archive.

Safety (see :mod:`safefs`): names are confined (no absolute, no ``..``), every
parent is opened with ``O_NOFOLLOW`` from the root, files are created with
``O_EXCL`` (an existing entry is unlinked first, never written through), hard
link targets are resolved the same way and must not be directories, and a name
repeated in one layer is refused. Anything refused raises :class:`UnsafeEntry`;
the caller extracts into a private directory and discards it on error.

Metadata order per entry: create → chown → xattrs → chmod (chown clears
setuid/setgid) → mtime. Directories get their mode and mtime at the very end,
deepest first, so creating their children neither fails (0555 dirs) nor bumps
their mtime.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import stat
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from app.errors import Category, Internal, ResourceExhausted
from app.runtime.images.safefs import RootDir, UnsafeEntry, clean_name
from app.runtime.images.stream import CHUNK, BadLayer, LayerStream

log = logging.getLogger(__name__)

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")
_XATTR_SOFT_ERRORS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES)

Parts = tuple[str, ...]


@dataclass(frozen=True)
class UnpackOptions:
    whiteouts: Literal["overlay", "apply"] = "overlay"
    opaque_xattr: str = "trusted.overlay.opaque"
    chown: bool = True  # False: unprivileged without a mapped user namespace (warn once)
    devices: bool = True  # False: rootless; device nodes are skipped with a warning
    id_limit: int | None = None  # highest uid/gid the namespace maps; above → refused
    hash_blob: bool = True  # False: the blob comes verified from the content store


@dataclass
class UnpackResult:
    diff_id: str
    compressed_digest: str
    size: int
    compressed_size: int
    entries: int
    warnings: list[str] = field(default_factory=list)


def apply_layer(src: BinaryIO, dest: str | os.PathLike[str], media_type: str, opts: UnpackOptions) -> UnpackResult:
    """Apply the layer read from ``src`` to the existing directory ``dest``."""
    stream = LayerStream(src, media_type, hash_blob=opts.hash_blob)
    try:
        with RootDir(dest) as root:
            ex = _Extractor(root, opts)
            try:
                with tarfile.open(fileobj=stream, mode="r:") as tf:  # type: ignore[call-overload]
                    while (member := tf.next()) is not None:
                        tf.members.clear()  # tarfile keeps every member otherwise
                        ex.entry(tf, member)
                        ex.count += 1
            except tarfile.ReadError as exc:
                if "empty file" not in str(exc):  # a zero-length layer is a valid empty changeset
                    raise BadLayer(f"layer is not a valid tar archive: {exc}") from exc
            except (tarfile.TarError, UnicodeError, ValueError) as exc:
                raise BadLayer(f"layer is not a valid tar archive: {exc}") from exc
            ex.finish()
        stream.drain()
    except OSError as exc:
        # Errors of this node, not of the layer: full disk, permissions of the state dir.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted("no space left for the layer snapshot", category=Category.IMAGE) from exc
        raise Internal(f"unpacking failed: {exc}", category=Category.IMAGE) from exc
    finally:
        stream.close()
    return UnpackResult(
        diff_id=stream.diff_id,
        compressed_digest=stream.compressed_digest,
        size=stream.size,
        compressed_size=stream.compressed_size,
        entries=ex.count,
        warnings=ex.warnings,
    )


def _xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            out[key[len("SCHILY.xattr.") :]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr.") :])
            out[name] = base64.b64decode(value + "=" * (-len(value) % 4))
    return out


class _Extractor:
    def __init__(self, root: RootDir, opts: UnpackOptions) -> None:
        self.root = root
        self.opts = opts
        self.count = 0
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.entries: set[Parts] = set()  # names this layer lists (duplicates refused)
        self.present: set[Parts] = set()  # ...plus their parents: what whiteouts must spare
        self.whiteouts: set[Parts] = set()  # overlay-format whiteouts created here
        self.dirs: list[tuple[Parts, int, int]] = []  # (path, mode, mtime_ns) applied at the end

    def warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warnings.append(message)
            log.warning("%s", message)

    # --- dispatch --------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = clean_name(m.name)
        if parts in self.entries:
            raise UnsafeEntry("entry repeated in one layer", details={"entry": m.name[:200]})
        self.entries.add(parts)
        if parts and parts[-1].startswith(WH_PREFIX):
            self._whiteout(parts)
            return
        if parts in self.present and not m.isdir():
            # An earlier entry of this layer was put under this name: replacing
            # the directory would silently drop it.
            raise UnsafeEntry("entry replaces a directory the same layer populated", details={"entry": m.name[:200]})
        self._mark_present(parts)
        if m.uid < 0 or m.gid < 0 or (self.opts.id_limit is not None and max(m.uid, m.gid) > self.opts.id_limit):
            raise UnsafeEntry(
                f"entry owned by {m.uid}:{m.gid}, outside the IDs this node maps (0-{self.opts.id_limit})",
                details={"entry": m.name[:200]},
            )
        if not parts:
            if not m.isdir():
                raise UnsafeEntry("root entry is not a directory", details={"entry": m.name})
            self._chown_fd(self.root.fd, m)
            self.dirs.append(((), m.mode, int(m.mtime * 1e9)))
            return
        if self.whiteouts:
            self._revive_parents(parts)
        parent = self.root.dir_fd(parts[:-1], create=True, created=self.present)
        name = parts[-1]
        if m.isdir():
            self._directory(parent, parts, m)
            return
        if m.isreg():
            # Create first, make room only on EEXIST: one syscall less per file
            # in the common case (an empty snapshot, or a new name in apply mode).
            try:
                fd = os.open(name, _CREATE, 0o600, dir_fd=parent)
            except FileExistsError:
                self._clear(parent, parts)
                fd = os.open(name, _CREATE, 0o600, dir_fd=parent)
            self._regular(tf, fd, m)
            return
        self._clear(parent, parts)
        if m.issym():
            os.symlink(m.linkname, name, dir_fd=parent)
            self._meta_at(parent, name, m, chmod=False)
        elif m.islnk():
            self._hardlink(parent, parts, m)
        elif m.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent)
            self._meta_at(parent, name, m)
        elif m.ischr() or m.isblk():
            self._device(parent, name, m)
        else:
            self.warn(f"type-{m.type!r}", f"skipped entry {m.name!r} of unsupported tar type {m.type!r}")

    def _revive_parents(self, parts: Parts) -> None:
        """``.wh.d`` then ``d/x`` in one layer: the layer's ``d`` wins, as a directory
        that still hides the lower ``d`` (opaque), instead of a walk through a whiteout."""
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if prefix in self.whiteouts:
                parent = self.root.dir_fd(prefix[:-1], create=False)
                os.unlink(prefix[-1], dir_fd=parent)
                self.whiteouts.discard(prefix)
                os.mkdir(prefix[-1], 0o755, dir_fd=parent)
                os.setxattr(self.root.dir_fd(prefix, create=False), self.opts.opaque_xattr, b"y")

    def _mark_present(self, parts: Parts) -> None:
        for i in range(len(parts), 0, -1):
            prefix = parts[:i]
            if prefix in self.present:
                break
            self.present.add(prefix)

    def _clear(self, parent: int, parts: Parts) -> None:
        """Make room for a new non-directory entry at ``parts``."""
        try:
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if self.opts.whiteouts == "overlay" and parts not in self.whiteouts:
            # The snapshot started empty: what is there is a parent this layer
            # already filled with children. Replacing it would drop them.
            raise UnsafeEntry("entry replaces a directory the same layer populated", details={"path": "/".join(parts)})
        if stat.S_ISDIR(st.st_mode):
            self.root.remove(parts)
        else:
            os.unlink(parts[-1], dir_fd=parent)
        self.whiteouts.discard(parts)

    # --- entry kinds -----------------------------------------------------------------
    def _directory(self, parent: int, parts: Parts, m: tarfile.TarInfo) -> None:
        name = parts[-1]
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self._clear(parent, parts)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = self.root.dir_fd(parts, create=False)
        self._chown_fd(fd, m)
        self._set_xattrs(fd, m)
        self.dirs.append((parts, m.mode, int(m.mtime * 1e9)))

    def _regular(self, tf: tarfile.TarFile, fd: int, m: tarfile.TarInfo) -> None:
        src = tf.fileobj
        assert src is not None
        try:
            if m.sparse:
                sparse: list[tuple[int, int]] = list(m.sparse)  # type: ignore[arg-type]
                for offset, length in sparse:
                    os.lseek(fd, offset, os.SEEK_SET)
                    _copy(src, fd, length, m.name)
                os.ftruncate(fd, m.size)
            else:
                _copy(src, fd, m.size, m.name)
            self._chown_fd(fd, m)
            self._set_xattrs(fd, m)
            os.fchmod(fd, stat.S_IMODE(m.mode))
            mtime = int(m.mtime * 1e9)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)

    def _hardlink(self, parent: int, parts: Parts, m: tarfile.TarInfo) -> None:
        target = clean_name(m.linkname)
        if not target:
            raise UnsafeEntry("hard link to the root", details={"entry": m.name[:200]})
        if target in self.whiteouts or target[-1].startswith(WH_PREFIX):
            raise UnsafeEntry("hard link to a whiteout", details={"entry": m.name[:200]})
        parent = os.dup(parent)  # the lookup below may evict it from the cache
        try:
            try:
                tparent = self.root.dir_fd(target[:-1], create=False)
                st = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
            except FileNotFoundError as exc:
                raise UnsafeEntry(
                    "hard link target is not in the layer", details={"entry": m.name[:200], "target": m.linkname[:200]}
                ) from exc
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeEntry("hard link to a directory", details={"entry": m.name[:200]})
            os.link(target[-1], parts[-1], src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def _device(self, parent: int, name: str, m: tarfile.TarInfo) -> None:
        if not self.opts.devices:
            self.warn("devices", f"device node {m.name!r} (and any others) skipped: rootless")
            return
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        try:
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
        except PermissionError:
            self.warn("devices", f"device node {m.name!r} (and any others) skipped: mknod not permitted")
            return
        self._meta_at(parent, name, m)

    def _whiteout(self, parts: Parts) -> None:
        name = parts[-1]
        directory = parts[:-1]
        if name == WH_OPAQUE:
            self._mark_present(directory)
            fd = self.root.dir_fd(directory, create=True, created=self.present)
            if self.opts.whiteouts == "overlay":
                os.setxattr(fd, self.opts.opaque_xattr, b"y")
            else:
                self._clear_lower(directory)
            return
        if name.startswith(WH_PREFIX + WH_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless here
        target = (*directory, name[len(WH_PREFIX) :])
        if target[-1] in ("", ".", ".."):
            raise UnsafeEntry("malformed whiteout", details={"entry": "/".join(parts)})
        if target in self.present:
            return  # this layer provides the name: the whiteout only hides lower content
        if self.opts.whiteouts == "apply":
            self.root.remove(target)
            return
        self._mark_present(directory)
        parent = self.root.dir_fd(directory, create=True, created=self.present)
        try:
            os.mknod(target[-1], stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
        except PermissionError:
            self.warn("whiteout-files", "whiteouts kept as .wh. files: mknod of 0/0 not permitted")
            os.close(os.open(name, _CREATE, 0o000, dir_fd=parent))
            return
        self.whiteouts.add(target)

    def _clear_lower(self, directory: Parts) -> None:
        """Opaque directory, apply mode: drop everything under it this layer does not provide."""
        for name in self.root.listdir(directory):
            child = (*directory, name)
            if child not in self.present:
                self.root.remove(child)
            elif (st := self.root.lstat(child)) is not None and stat.S_ISDIR(st.st_mode):
                self._clear_lower(child)

    # --- metadata --------------------------------------------------------------------
    def _chown_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.opts.chown:
            os.fchown(fd, m.uid, m.gid)
        elif m.uid or m.gid:
            self.warn("chown", "ownership not applied: unprivileged without a user namespace")

    def _set_xattrs(self, fd: int, m: tarfile.TarInfo) -> None:
        for key, value in _xattrs(m).items():
            if key.startswith(_OVERLAY_XATTRS):
                # overlayfs's own metadata (opaque, redirect, metacopy, origin) must come
                # from whiteouts we translate, never from a layer: a forged redirect or
                # metacopy would make overlay serve other paths' content.
                self.warn("xattr-overlay", f"overlay xattr {key} in layer dropped, first on {m.name!r}")
                continue
            try:
                os.setxattr(fd, key, value)
            except OSError as exc:
                if exc.errno not in _XATTR_SOFT_ERRORS:
                    raise
                self.warn(f"xattr-{key}", f"xattr {key} not applied ({exc.strerror}), first on {m.name!r}")

    def _meta_at(self, parent: int, name: str, m: tarfile.TarInfo, *, chmod: bool = True) -> None:
        """Metadata for entries that cannot be opened (symlinks, FIFOs, devices)."""
        if self.opts.chown:
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        elif m.uid or m.gid:
            self.warn("chown", "ownership not applied: unprivileged without a user namespace")
        if chmod:
            # Safe to follow: the name was created just now as a FIFO/device node.
            os.chmod(name, stat.S_IMODE(m.mode), dir_fd=parent)
        mtime = int(m.mtime * 1e9)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first, once their contents are in place."""
        for parts, mode, mtime in sorted(self.dirs, key=lambda d: len(d[0]), reverse=True):
            try:
                fd = self.root.dir_fd(parts, create=False)
            except (FileNotFoundError, UnsafeEntry):
                continue  # removed or replaced by a later entry of this layer
            os.fchmod(fd, stat.S_IMODE(mode))
            os.utime(fd, ns=(mtime, mtime))


def _copy(src: object, fd: int, size: int, entry: str) -> None:
    read = src.read_some  # type: ignore[attr-defined]  # LayerStream: zero-copy views
    remaining = size
    while remaining:
        chunk = read(min(CHUNK, remaining))
        if not chunk:
            raise BadLayer("layer ends inside a file", details={"entry": entry[:200]})
        remaining -= len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
