"""Starting, finding and stopping pod holder processes (the daemon side of :mod:`.pod_holder`).

A holder is identified by (pid, start time in clock ticks from ``/proc/<pid>/stat``)
so that a pid reused after a reboot or a crash is never mistaken for it (and
never killed).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from app.errors import FailedPrecondition, Internal, Unavailable

HOLDER = Path(__file__).with_name("pod_holder.py")
READY_TIMEOUT = 30.0  # generous: a loaded node can take seconds to start an interpreter


def is_rootless() -> bool:
    return os.geteuid() != 0


def start_time(pid: int) -> int | None:
    """The process' start time (field 22 of /proc/PID/stat), or None if gone or a zombie."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    return pid > 0 and start_time(pid) == started


def holder_argv(sock: Path, *, hostname: str | None, net: bool, ipc: bool, pid: bool, uts: bool,
                loopback: bool, userns: bool) -> list[str]:
    """The command line that creates the namespaces and runs the holder in them. Pure."""
    flags = []
    if userns:
        flags += ["--user", "--map-root-user"]
    if net:
        flags.append("--net")
    if ipc:
        flags.append("--ipc")
    if uts:
        flags.append("--uts")
    if pid:
        flags += ["--pid", "--fork", "--kill-child"]
    argv = ["setsid", "-f", "unshare", *flags, sys.executable, "-I", "-S", str(HOLDER), "--socket", str(sock)]
    if hostname and uts:
        argv += ["--hostname", hostname]
    if loopback and net:
        argv.append("--lo")
    return argv


async def spawn(sock: Path, **opts: bool | str | None) -> tuple[int, int]:
    """Start a holder and wait until it serves; returns (host pid, start time)."""
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = holder_argv(sock, **opts)  # type: ignore[arg-type]
    pid = await asyncio.to_thread(_start_blocking, argv, sock.with_suffix(".err"))
    if not pid:  # PID 1 of its own namespace: ask the kernel who it is from here
        pid = await asyncio.to_thread(_peer_pid, sock)
    started = start_time(pid)
    if started is None:
        raise Internal(f"pod holder {pid} vanished right after starting")
    return pid, started


def _start_blocking(argv: list[str], err_path: Path) -> int:
    """Run ``setsid -f ...`` and wait for the holder's ``ready <pid>`` line (in a worker thread).

    Returns the pid the holder reported (0 inside a new PID namespace)."""
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                close_fds=True)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
    finally:
        proc.stdout.close()
        proc.wait()  # setsid -f returns at once; the holder is not our child
    try:
        word, _, pid = line.decode(errors="replace").strip().partition(" ")
        if word != "ready":
            why = err_path.read_text(errors="replace").strip()[-2000:] or "no output"
            raise FailedPrecondition(f"pod holder did not start: {why}")
        return int(pid or 0)
    finally:
        with contextlib.suppress(OSError):
            err_path.unlink()


def _peer_pid(sock: Path) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(READY_TIMEOUT)
        s.connect(str(sock))
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        s.sendall(b"ping\n")
        s.recv(16)
    return int(struct.unpack("3i", creds)[0])


async def kill(pid: int, started: int, timeout: float = 5.0) -> None:
    """SIGKILL the holder (its namespaces go with it) and wait until it is gone."""
    if not alive(pid, started):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while alive(pid, started):
        if loop.time() > deadline:
            raise Unavailable(f"pod holder {pid} did not exit after SIGKILL")
        await asyncio.sleep(0.002)


def dial(sock: Path, port: int) -> socket.socket:
    """Ask the holder for a connection to 127.0.0.1:port in its netns (blocking; run in a thread)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        try:
            s.connect(str(sock))
        except OSError as exc:
            raise Unavailable(f"pod holder unreachable: {exc.strerror or exc}") from exc
        s.sendall(f"dial {port}\n".encode())
        fds = array.array("i")
        msg, anc, _flags, _addr = s.recvmsg(256, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        text = msg.decode(errors="replace").strip()
        if not text.startswith("ok") or not fds:
            for fd in fds:
                os.close(fd)
            raise Unavailable(f"cannot connect to port {port} in the pod: {text.removeprefix('err ').strip()}")
        conn = socket.socket(fileno=fds[0])
        conn.setblocking(False)
        return conn
