"""Confined file operations under one root directory, for layer extraction.

Every path a tar entry names is resolved component by component from an open
file descriptor of the root (``openat`` with ``O_NOFOLLOW | O_DIRECTORY``), so
a symlink anywhere in the parent chain is an error instead of a detour, and the
final component is always created or changed through its parent's descriptor
with the ``*at`` calls (``mkdirat``, ``symlinkat``, ``linkat``, ``mknodat``,
``fchownat(AT_SYMLINK_NOFOLLOW)``...). Nothing here ever resolves a path
string from ``/``, so no entry can reach outside the root whatever it names.

Names are checked before any call (:func:`clean_name`):

* absolute names and ``..`` components are refused (not clamped: a layer that
  needs them is hostile or broken, and refusing leaves nothing half-written);
* NUL bytes, components longer than ``NAME_MAX`` and names longer than
  ``PATH_MAX`` are refused;
* ``.`` components and repeated slashes are dropped (``./usr//bin`` = ``usr/bin``).

Open directory descriptors are cached (bounded LRU) because tar streams visit
the same directories over and over; anything that removes a directory drops
the cached descriptors under it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator

from app.errors import Category, InvalidArgument

NAME_MAX = 255
PATH_MAX = 4096
MAX_DEPTH = 256  # deeper trees are hostile; removal code recurses per level
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeEntry(InvalidArgument):
    """A layer entry that would escape or corrupt the snapshot; the layer is refused."""

    default_category = Category.IMAGE


def clean_name(name: str) -> tuple[str, ...]:
    """Split a tar entry name into safe components; ``()`` is the root itself."""
    if "\x00" in name:
        raise UnsafeEntry("entry name contains NUL", details={"entry": name[:200]})
    if len(name.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise UnsafeEntry("entry name longer than PATH_MAX", details={"entry": name[:200]})
    if name.startswith("/"):
        raise UnsafeEntry("absolute entry name", details={"entry": name[:200]})
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeEntry("entry name contains '..'", details={"entry": name[:200]})
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise UnsafeEntry("entry name component longer than NAME_MAX", details={"entry": name[:200]})
        parts.append(part)
    return tuple(parts)


class RootDir:
    """An open root directory and the confined operations the extractor needs."""

    def __init__(self, path: str | os.PathLike[str], *, cache_size: int = 128) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, _DIR_FLAGS)
        self._cache: OrderedDict[tuple[str, ...], int] = OrderedDict()
        self._cache_size = cache_size

    # --- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()
        os.close(self.fd)

    def __enter__(self) -> RootDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- directory resolution --------------------------------------------------------
    def dir_fd(self, parts: tuple[str, ...], *, create: bool, created: set[tuple[str, ...]] | None = None) -> int:
        """Descriptor of the directory ``parts`` (borrowed: do not close).

        With ``create`` missing directories are made (0755, owned by the caller)
        and their paths added to ``created``. A component that exists but is not
        a directory (a symlink included) raises :class:`UnsafeEntry`.
        """
        if not parts:
            return self.fd
        if len(parts) > MAX_DEPTH:
            raise UnsafeEntry("path too deep", details={"depth": len(parts)})
        hit = self._cache.get(parts)
        if hit is not None:
            self._cache.move_to_end(parts)
            return hit
        # Start from the deepest cached ancestor, then walk down one openat at a time.
        fd, start = self.fd, 0
        for i in range(len(parts) - 1, 0, -1):
            cached = self._cache.get(parts[:i])
            if cached is not None:
                fd, start = cached, i
                break
        for i in range(start, len(parts)):
            fd = self._open_child(fd, parts[: i + 1], create, created)
        return fd

    def _open_child(
        self, parent: int, parts: tuple[str, ...], create: bool, created: set[tuple[str, ...]] | None
    ) -> int:
        name = parts[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            if created is not None:
                created.add(parts)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeEntry(
                    "path goes through a symlink or a non-directory", details={"path": "/".join(parts)}
                ) from exc
            raise
        self._cache[parts] = fd
        if len(self._cache) > self._cache_size:
            # Evicting never closes ``fd`` (just inserted, newest); callers that
            # hold a descriptor across another lookup dup it first.
            _, old = self._cache.popitem(last=False)
            os.close(old)
        return fd

    def forget(self, parts: tuple[str, ...]) -> None:
        """Drop cached descriptors of ``parts`` and everything under it."""
        n = len(parts)
        for key in [k for k in self._cache if k[:n] == parts]:
            os.close(self._cache.pop(key))

    # --- entries ---------------------------------------------------------------------
    def lstat(self, parts: tuple[str, ...]) -> os.stat_result | None:
        """``lstat`` of an entry, or None when it (or a parent) does not exist."""
        if not parts:
            return os.fstat(self.fd)
        try:
            parent = self.dir_fd(parts[:-1], create=False)
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def remove(self, parts: tuple[str, ...]) -> None:
        """Remove an entry (a directory with all its contents); missing is fine."""
        if not parts:
            raise UnsafeEntry("refusing to remove the snapshot root")
        try:
            parent = self.dir_fd(parts[:-1], create=False)
        except FileNotFoundError:
            return
        self.forget(parts)
        _remove_at(parent, parts[-1])

    def listdir(self, parts: tuple[str, ...]) -> list[str]:
        return os.listdir(self.dir_fd(parts, create=False))

    def walk_names(self, parts: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        """Every entry under ``parts`` (depth first, children before the directory)."""
        for name in self.listdir(parts):
            child = (*parts, name)
            st = self.lstat(child)
            if st is not None and stat.S_ISDIR(st.st_mode):
                yield from self.walk_names(child)
            yield child


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` recursively without following any symlink."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # A directory left without read/write/exec permission (mode 0555, overlay's
    # work/work 000) can be neither opened nor emptied; fix it first, it is going
    # anyway. (lstat said directory: chmod by name cannot follow a symlink here.)
    if st.st_mode & 0o700 != 0o700:
        os.chmod(name, 0o700, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for child in os.listdir(fd):
            _remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def remove_tree(path: str | os.PathLike[str]) -> None:
    """``rm -rf`` that never follows symlinks and copes with unwritable directories."""
    path = os.fspath(path)
    parent, name = os.path.split(path.rstrip("/"))
    fd = os.open(parent or ".", _DIR_FLAGS)
    try:
        _remove_at(fd, name)
    finally:
        os.close(fd)
