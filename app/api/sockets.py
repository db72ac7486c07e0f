"""Binding Unix sockets the same way for every front door.

A stale socket file from a crashed daemon is removed only when nothing answers
on it; a live one means another daemon owns the path, and we refuse to steal it.
Modes are explicit (0660 by default) and the owning group optional.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
from pathlib import Path

from app.errors import AlreadyExists, InvalidArgument


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def clear_stale_socket(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise InvalidArgument(f"{path} exists and is not a socket; refusing to replace it")
    if _is_live(path):
        raise AlreadyExists(f"{path} is in use by another process (is another vapp-core running?)")
    path.unlink()


def apply_socket_permissions(path: Path, mode: int, group: str | None) -> None:
    if group is not None:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise InvalidArgument(f"socket_group: no such group {group!r}") from exc
        os.chown(path, -1, gid)
    os.chmod(path, mode)


def bind_unix_socket(path: Path, mode: int = 0o660, group: str | None = None) -> socket.socket:
    """Return a listening SOCK_STREAM socket at ``path`` with the given mode and group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Create with no access, then widen: no window where the socket is world-connectable.
        old = os.umask(0o777)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        apply_socket_permissions(path, mode, group)
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return sock


def remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
