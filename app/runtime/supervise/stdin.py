"""Stdin for supervised containers: the shim relays ``attach.sock`` connections into the container.

    <shims>/<id>/attach.sock   a client connects and writes; bytes go to the container's stdin
                               (a pipe, or the pty master when it has a terminal). With
                               ``stdin_once`` the first client's EOF closes the container's stdin.
"""

from __future__ import annotations

import contextlib
import os
import socket


def _bind(directory: str) -> socket.socket:
    dirfd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(f"/proc/self/fd/{dirfd}/attach.sock")  # under the 108-byte sun_path limit
        listener.listen(8)
    finally:
        os.close(dirfd)
    listener.setblocking(False)
    return listener


def connect(directory: str) -> socket.socket:
    """Client side (the daemon): a connected socket whose writes reach the container's stdin."""
    dirfd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(f"/proc/self/fd/{dirfd}/attach.sock")
    finally:
        os.close(dirfd)
    return sock


class StdinRelay:
    def __init__(self, directory: str, target: int, once: bool) -> None:
        self.listener: socket.socket | None = _bind(directory)
        self.target: int | None = target
        self.once = once
        self.conns: dict[int, socket.socket] = {}

    def fds(self) -> list[int]:
        out = list(self.conns)
        if self.listener is not None:
            out.append(self.listener.fileno())
        return out

    def handle(self, fd: int) -> None:
        if self.listener is not None and fd == self.listener.fileno():
            with contextlib.suppress(BlockingIOError):
                conn, _ = self.listener.accept()
                self.conns[conn.fileno()] = conn
            return
        conn = self.conns[fd]
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if data and self.target is not None:
            try:
                os.write(self.target, data)
            except OSError:  # the container closed its stdin
                self._close_target()
            return
        if not data:
            del self.conns[fd]
            conn.close()
            if self.once:
                self._close_target()

    def _close_target(self) -> None:
        if self.target is not None:
            with contextlib.suppress(OSError):
                if os.isatty(self.target):
                    os.write(self.target, b"\x04")  # the pty master is also the output: send EOF, keep it
                else:
                    os.close(self.target)
            self.target = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
