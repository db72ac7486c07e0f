"""``vapp-oci exec``: run another process in a running container (runc's contract, as containerd uses it).

    vapp-oci exec [--process process.json | COMMAND...] [--detach] [--pid-file F]
                  [--console-socket S] [--tty] [--cwd D] [--env K=V]... [--user UID[:GID]] ID

    cli ─fork─► helper: cgroups, setns (user first) ─fork─► process (lands in the pid ns) ─► execve
                helper ─pid─► cli: pid file; --detach: cli and helper exit (the process is
                re-parented to the caller's subreaper); else the helper waits and passes the status.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from app.runtime.kernel.linux import LinuxKernel
from app.runtime.oci import ops, state
from app.runtime.oci.init import send_fd
from app.runtime.supervise.execproc import exec_child, join_container
from app.runtime.supervise.shim import exit_code


def process_from_args(cfg: dict[str, Any], command: list[str], *, cwd: str | None, env: list[str],
                      user: str | None, tty: bool) -> dict[str, Any]:
    base = cfg.get("process") or {}
    proc: dict[str, Any] = {"args": command, "env": [*(base.get("env") or []), *env], "cwd": cwd or base.get("cwd")
                            or "/", "terminal": tty, "capabilities": base.get("capabilities"),
                            "noNewPrivileges": base.get("noNewPrivileges", False), "user": base.get("user") or {}}
    if user:
        uid, _, gid = user.partition(":")
        proc["user"] = {"uid": int(uid), "gid": int(gid or 0)}
    return proc


def exec_process(root: str, container_id: str, proc: dict[str, Any], *, detach: bool, pid_file: str | None,
                 console_socket: str | None) -> int:
    st = ops.get(root, container_id)
    current = state.live_status(root, st)
    if current != "running":
        raise ops.OpError(f"cannot exec in a container that is {current}")
    if not proc.get("args"):
        raise ops.OpError("exec: no command (args) given")
    with open(os.path.join(st["bundle"], "config.json"), "rb") as fh:
        cfg = json.loads(fh.read())
    req = {"pid": st["pid"], "pidStartTime": st.get("pidStartTime"), "cgroups": st.get("cgroups") or [],
           "argv": list(proc["args"]), "env": list(proc.get("env") or []), "cwd": proc.get("cwd") or "/",
           "user": proc.get("user") or {}, "capabilities": proc.get("capabilities"),
           "noNewPrivileges": bool(proc.get("noNewPrivileges")), "seccomp": (cfg.get("linux") or {}).get("seccomp")}
    console = None
    if proc.get("terminal"):
        if not console_socket:
            raise ops.OpError("exec with a terminal needs --console-socket")
        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        console.connect(console_socket)
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(r)
        _helper(req, w, console, detach)
    os.close(w)
    if console is not None:
        console.close()
    raw = b""
    while chunk := os.read(r, 64):
        raw += chunk
    os.close(r)
    if not raw.strip().isdigit():
        _, status = os.waitpid(helper, 0)
        raise ops.OpError(f"exec failed: {raw.decode(errors='replace').strip() or 'helper died'}",
                          exit_code(status) or 1)
    if pid_file:
        state.write_atomic(os.path.abspath(pid_file), raw.strip(), 0o644)
    _, status = os.waitpid(helper, 0)
    return 0 if detach else exit_code(status)


def _helper(req: dict[str, Any], w: int, console: socket.socket | None, detach: bool) -> None:
    kernel = LinuxKernel()
    try:
        join_container(kernel, req)
        master = slave = -1
        if console is not None:
            master, slave = os.openpty()  # the container's devpts: we are in its mount ns now
            send_fd(console, master, "/dev/ptmx")
            console.close()
        child = os.fork()
        if child == 0:
            os.close(w)
            exec_child(kernel, req, [0, 1, 2], master, slave)
        if slave >= 0:
            os.close(slave)
            os.close(master)
        os.write(w, str(child).encode())
        os.close(w)
        if detach:
            os._exit(0)
        _, status = os.waitpid(child, 0)
        os._exit(exit_code(status))
    except BaseException as exc:
        os.write(w, f"error: {exc}".encode())
        os._exit(1)
