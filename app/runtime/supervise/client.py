"""Daemon-side supervision helpers: spawn shims, exec sessions, exit watching (no fork here).

Everything that forks goes through the :class:`~app.runtime.forkserver.ForkServer`; this
module only sends requests, reads replies, and watches processes with pidfds (which work
for processes that are not our children, e.g. shims adopted after a daemon restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

from app.runtime.forkserver import ForkServer


class SuperviseError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


async def spawn_shim(forkserver: ForkServer, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Ask for a shim that creates the container; return its "created" record or raise."""
    sock = forkserver.request({"op": "shim", **request})
    try:
        message, _ = await forkserver.reply(sock, timeout)
    finally:
        sock.close()
    if message is None:
        raise SuperviseError("the shim exited before creating the container")
    if message.get("type") == "error":
        raise SuperviseError(str(message.get("message")), int(message.get("code") or 1))
    return message


async def wait_pid(pid: int, timeout: float | None = None) -> bool:
    """Wait until ``pid`` exits (pidfd); True if it did within ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    def fire() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, fire)
    try:
        await asyncio.wait_for(done, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@dataclass
class ExecSession:
    """A process running inside a container: our ends of its stdio (or its pty), its pid, its exit.

    ``stdin``/``stdout``/``stderr`` are non-blocking sockets (None where not asked, or when a
    pty is used: then ``pty`` is the master fd carrying both directions).
    """

    pid: int
    control: socket.socket
    forkserver: ForkServer
    stdin: socket.socket | None = None
    stdout: socket.socket | None = None
    stderr: socket.socket | None = None
    pty: int | None = None
    _exit: int | None = field(default=None, init=False)

    async def wait(self, timeout: float | None = None) -> int:
        """The exit status (128+signal when killed); raises TimeoutError after ``timeout``."""
        if self._exit is not None:
            return self._exit
        while True:
            message, _ = await self.forkserver.reply(self.control, timeout)
            if message is None:
                raise SuperviseError("exec helper died without reporting the exit status")
            if message.get("type") == "exit":
                self._exit = int(message["status"])
                return self._exit

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def resize(self, rows: int, cols: int) -> None:
        if self.pty is not None:
            import fcntl
            import struct
            import termios

            fcntl.ioctl(self.pty, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        for sock in (self.stdin, self.stdout, self.stderr, self.control):
            if sock is not None:
                sock.close()
        if self.pty is not None:
            with contextlib.suppress(OSError):
                os.close(self.pty)
            self.pty = None


async def start_exec(forkserver: ForkServer, request: dict[str, Any], *, tty: bool, stdin: bool,
                     timeout: float = 30.0) -> ExecSession:
    """Start a process in a container through the fork server."""
    ours: dict[str, socket.socket | None] = {"stdin": None, "stdout": None, "stderr": None}
    theirs: list[socket.socket] = []
    if not tty:
        for name in ("stdin", "stdout", "stderr"):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            theirs.append(b)
            if name == "stdin" and not stdin:
                a.close()  # the process reads EOF immediately
                continue
            a.setblocking(False)
            ours[name] = a
    control = forkserver.request({"op": "exec", "tty": tty, **request}, [s.fileno() for s in theirs])
    for sock in theirs:
        sock.close()
    pty: int | None = None
    try:
        while True:
            message, fds = await forkserver.reply(control, timeout)
            if message is None:
                raise SuperviseError("exec helper exited before starting the process")
            if message.get("type") == "error":
                raise SuperviseError(str(message.get("message")))
            if fds:
                pty = fds[0]
                os.set_blocking(pty, False)
                continue
            if message.get("type") == "started":
                break
    except BaseException:
        control.close()
        for mine in ours.values():
            if mine is not None:
                mine.close()
        raise
    return ExecSession(int(message["pid"]), control, forkserver, ours["stdin"], ours["stdout"], ours["stderr"], pty)


async def read_all(sock: socket.socket | None, limit: int = 16 * 1024 * 1024) -> bytes:
    if sock is None:
        return b""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while chunk := await loop.sock_recv(sock, 65536):
        if len(out) < limit:
            out += chunk[: limit - len(out)]
    return bytes(out)
