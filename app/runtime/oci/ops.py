"""The other lifecycle verbs on a container under ``--root``: start, kill, delete, state."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from typing import Any

from app.runtime.kernel import cgroups
from app.runtime.oci import state


class OpError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def get(root: str, container_id: str) -> dict[str, Any]:
    st = state.load(root, container_id)
    if st is None:
        raise OpError(f"container {container_id!r} does not exist")
    return st


def start(root: str, container_id: str) -> dict[str, Any]:
    """Release the init blocked on exec.sock; wait until it has exec'd (or report its error)."""
    st = get(root, container_id)
    status = state.live_status(root, st)
    if status != "created":
        raise OpError(f"cannot start a container that is {status}")
    directory = state.container_dir(root, container_id)
    dirfd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(f"/proc/self/fd/{dirfd}/exec.sock")
            os.unlink(os.path.join(directory, "exec.sock"))
            reply = b""
            while chunk := conn.recv(4096):  # EOF: exec closed the CLOEXEC connection
                reply += chunk
    finally:
        os.close(dirfd)
    if reply:
        code, _, message = reply.decode(errors="replace").partition(" ")
        raise OpError(message, int(code) if code.isdigit() else 1)
    poststart = (st.get("hooks") or {}).get("poststart")
    if poststart:
        from app.runtime.oci import hooks  # only with hooks: keeps `vapp-oci start` quick

        # The process was running when exec happened; a quick one may be gone already, but the
        # hook is told about the start it follows (status running, the container's pid).
        public = state.public_state(root, st) | {"status": "running", "pid": st["pid"]}
        hooks.run_hooks_warn(poststart, public, "poststart")
    return st


def kill(root: str, container_id: str, sig: int, all_processes: bool = False) -> None:
    st = get(root, container_id)
    status = state.live_status(root, st)
    if status not in ("created", "running"):
        raise OpError(f"cannot kill a container that is {status}")
    pids = processes(st) if all_processes else []
    for pid in pids or [int(st["pid"])]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def processes(st: dict[str, Any]) -> list[int]:
    """The container's processes: its cgroups' members, else everything in its pid namespace."""
    pids = cgroups.procs(list(st.get("cgroups") or []))
    if not pids and st.get("pid") and state.process_alive(int(st["pid"]), st.get("pidStartTime")):
        own = os.readlink("/proc/self/ns/pid")
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{st['pid']}/ns/pid") != own:  # only a pid namespace of its own
                pids = state.pids_in_pid_namespace(int(st["pid"]))
    return pids


def wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    """True once ``pid`` (that incarnation) has exited (zombie counts; reaped if ours).

    Sleeps on a pidfd (readable at exit, for non-children too) instead of polling; where
    pidfds are missing it falls back to a 2 ms poll."""
    deadline = time.monotonic() + timeout
    pidfd = -1
    with contextlib.suppress(OSError):
        pidfd = os.pidfd_open(pid)
    try:
        while state.process_alive(pid, start_time):  # checked after the open: no pid reuse race
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if pidfd >= 0:
                select.select([pidfd], [], [], remaining)
            else:
                time.sleep(0.002)
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def delete(root: str, container_id: str, force: bool = False) -> None:
    st = get(root, container_id)
    status = state.live_status(root, st)
    if status == "running" and not force:
        raise OpError(f"cannot delete container {container_id!r} that is not stopped: {status}")
    pid = int(st.get("pid") or 0)
    if status in ("created", "running", "creating") and pid:
        for target in processes(st) or [pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        if not wait_gone(pid, st.get("pidStartTime"), 5.0):
            raise OpError(f"container {container_id!r} init (pid {pid}) did not die after SIGKILL")
    cgroups.remove(list(st.get("cgroups") or []))
    public = state.public_state(root, st) | {"status": "stopped"}
    state.remove(root, container_id)
    poststop = (st.get("hooks") or {}).get("poststop")
    if poststop:
        from app.runtime.oci import hooks

        hooks.run_hooks_warn(poststop, public, "poststop")


SIGNALS = {name[3:]: getattr(signal, name) for name in dir(signal)
           if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(getattr(signal, name), int)}


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise OpError(f"unknown signal {text!r}")
    return int(SIGNALS[name])
