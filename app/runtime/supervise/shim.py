"""The per-container shim: creates the container, copies its output to CRI logs, records its exit.

Forked from the fork server (in a session of its own, so it outlives the daemon), it is
the container init's subreaper. Files (``<shims>/<id>/``)::

    shim.json   {"shimPid", "shimStart", "pid", "pidStartTime", "runtime", "logPath"}
    attach.sock stdin relay (containers created with stdin), see supervise/stdin.py
    exit        {"status", "exitedAt", "pid"}   written atomically once the init is reaped

Lifetime::

    fork server ─fork─► setsid ─► shim: subreaper · stdio pipes (or console socket)
      ─fork─► creator: backend.create() (the init, orphaned, is re-parented to the shim) ─►
      shim.json + reply {"type": "created", pid} on the request's socket (by the creator
      itself unless a stdin relay must exist first: the daemon does not wait for its exit) ─►
      copy loop (select: stdout, stderr, SIGCHLD wakeup) ─► init reaped ─► drain ─►
      exit record ─► _exit(0)

The daemon learns about the exit through a pidfd on the shim (works across restarts).
"""

from __future__ import annotations

import array
import contextlib
import gc
import json
import os
import select
import signal
import socket
import time
from typing import Any, NoReturn

from app.runtime.kernel import PR_SET_CHILD_SUBREAPER
from app.runtime.kernel.linux import LinuxKernel
from app.runtime.oci import state
from app.runtime.supervise.logs import LogWriter
from app.runtime.supervise.stdin import StdinRelay


def shim_dir(shims_root: str, container_id: str) -> str:
    return os.path.join(shims_root, container_id)


def read_record(shims_root: str, container_id: str, name: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(shim_dir(shims_root, container_id), name), "rb") as fh:
            data: dict[str, Any] = json.loads(fh.read())
            return data
    except (FileNotFoundError, ValueError):
        return None


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _recv_fd(sock: socket.socket) -> int | None:
    fds = array.array("i")
    _, ancdata, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return fds[0] if fds else None


def run_shim(req: dict[str, Any], reply: socket.socket) -> NoReturn:
    """Entry point in the forked shim process; never returns."""
    code = 1
    try:
        code = _run(req, reply)
    finally:
        os._exit(code)


def _run(req: dict[str, Any], reply: socket.socket) -> int:
    gc.disable()  # a long-lived, allocation-light process: no collections, no copied pages
    kernel = LinuxKernel()
    kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
    directory = shim_dir(req["shims_root"], req["id"])
    os.makedirs(directory, exist_ok=True)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    reopen = [False]
    signal.signal(signal.SIGUSR1, lambda *_: reopen.__setitem__(0, True))
    devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    streams: dict[int, str] = {}
    console_parent = console_child = None
    if req.get("tty"):
        console_parent, console_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_out = child_err = devnull
    else:
        out_r, child_out = os.pipe2(os.O_CLOEXEC)
        err_r, child_err = os.pipe2(os.O_CLOEXEC)
        streams = {out_r: "stdout", err_r: "stderr"}
    stdin_r = stdin_w = -1
    if req.get("stdin") and not req.get("tty"):
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
    os.dup2(stdin_r if stdin_r >= 0 else devnull, 0)
    os.dup2(child_out, 1)
    os.dup2(child_err, 2)
    base_record = {
        "shimPid": os.getpid(),
        "shimStart": (state.proc_stat(os.getpid()) or ("", 0))[1],
        "runtime": req.get("runtime", "native"),
        "logPath": req["log_path"],
    }
    # Without a stdin relay (whose attach.sock must exist before the daemon hears "created"),
    # the creator child answers the daemon itself: the reply does not wait for that child's exit.
    early = None if req.get("stdin") else (directory, base_record, reply)
    try:
        result = _create_in_child(kernel, req, console_child, early)
        if "error" in result:
            reply.send(json.dumps({"type": "error", "message": result["error"], "code": result["code"]}).encode())
            return 1
        pid, start_time = int(result["pid"]), result.get("start")
    finally:
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        for fd in {child_out, child_err, stdin_r} - {devnull, -1}:
            os.close(fd)
    stdin_target = stdin_w
    if console_parent is not None:
        master = _recv_fd(console_parent)
        console_parent.close()
        if master is not None:
            streams = {master: "stdout"}
            stdin_target = master if req.get("stdin") else -1
    relay = StdinRelay(directory, stdin_target, bool(req.get("stdin_once"))) if stdin_target >= 0 else None
    if not result.get("replied"):
        _record_and_reply(directory, base_record | {"pid": pid, "pidStartTime": start_time}, reply)
    reply.close()
    writer = LogWriter(req["log_path"], int(req.get("log_max_bytes") or 0), int(req.get("log_max_files") or 1))
    status = _copy_loop(streams, wake_r, pid, writer, reopen, relay)
    writer.close()
    if relay is not None:
        relay.close()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
    state.write_atomic(
        os.path.join(directory, "exit"), json.dumps({"status": status, "exitedAt": stamp, "pid": pid}).encode()
    )
    return 0


def _record_and_reply(directory: str, record: dict[str, Any], reply: socket.socket) -> None:
    """shim.json first (what restore() reads), then "created" to the daemon."""
    state.write_atomic(os.path.join(directory, "shim.json"), json.dumps(record).encode())
    reply.send(json.dumps({"type": "created"} | record).encode())


def _create_in_child(kernel: LinuxKernel, req: dict[str, Any], console: socket.socket | None,
                     early: tuple[str, dict[str, Any], socket.socket] | None) -> dict[str, Any]:
    """Run the create in a short-lived child: the busy setup code then copies pages in that
    child, not in this long-lived shim (its private memory is what every container costs).
    The container init is orphaned when that child's stage exits and lands here (subreaper).
    With ``early`` (directory, shim record, reply socket) the child writes shim.json and
    answers the daemon as soon as the container is created ("replied" in its result)."""
    from app.runtime.backends.native import shim_create  # pre-imported by the fork server

    # A datagram, read after the child exited: the container init inherits (until its exec)
    # every fd of this process, so waiting for EOF here would wait for the container.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()
    if child == 0:
        ours.close()
        try:
            pid, start_time = shim_create(kernel, req, console)
            out: dict[str, Any] = {"pid": pid, "start": start_time}
            if early is not None:
                directory, record, reply = early
                _record_and_reply(directory, record | {"pid": pid, "pidStartTime": start_time}, reply)
                out["replied"] = True
        except Exception as exc:
            out = {"error": str(exc), "code": getattr(exc, "code", 1)}
        theirs.send(json.dumps(out).encode())
        os._exit(0)
    theirs.close()
    os.waitpid(child, 0)
    try:
        data = ours.recv(1 << 16, socket.MSG_DONTWAIT)
    except BlockingIOError:
        data = b""
    finally:
        ours.close()
    if not data:
        return {"error": "container creation died", "code": 1}
    result: dict[str, Any] = json.loads(data)
    return result


def _copy_loop(streams: dict[int, str], wake_r: int, pid: int, writer: LogWriter, reopen: list[bool],
               relay: StdinRelay | None = None) -> int:
    status: int | None = None
    drain_deadline = 0.0
    while True:
        timeout = 1.0 if status is None else max(0.0, drain_deadline - time.monotonic())
        extra = relay.fds() if relay is not None and status is None else []
        ready, _, _ = select.select([*streams, wake_r, *extra], [], [], timeout)
        for fd in ready:
            if relay is not None and fd in extra:
                relay.handle(fd)
                continue
            if fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the pty's last slave closed
                data = b""
            if data:
                writer.write(streams[fd], data)
            else:
                writer.flush()
                os.close(fd)
                del streams[fd]
        if reopen[0]:
            reopen[0] = False
            writer.reopen()
        while status is None:
            try:
                reaped, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                if not state.process_alive(pid, None):
                    status, drain_deadline = 255, time.monotonic() + 0.5  # not ours: code unknown
                break
            if reaped == 0:
                break
            if reaped == pid:
                status = exit_code(raw)
                drain_deadline = time.monotonic() + 2.0
        if status is not None:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            if not streams or time.monotonic() >= drain_deadline:
                return status
