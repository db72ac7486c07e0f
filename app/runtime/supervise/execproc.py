"""Exec into a running container (forked from the fork server; never from the daemon).

exec helper: join the container's cgroups ─► open /proc/<pid>/ns/* ─► setns(user) first,
then mnt, pid, net, ipc, uts, cgroup ─► fork (the child lands in the pid namespace) ─►
child: pty or the caller's stdio · cwd · user · caps · no_new_privs · execve (127/126)
helper: reply {"type": "started", "pid"} … waitpid … {"type": "exit", "status"}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import termios  # imported up front: after pivot_root the stdlib is out of reach
from typing import Any, NoReturn

from app.runtime import kernel as k
from app.runtime.forkserver import send_message
from app.runtime.kernel import seccomp
from app.runtime.kernel.linux import LinuxKernel
from app.runtime.oci import process, state
from app.runtime.supervise.shim import exit_code

_ORDER = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
_FLAGS = {name: flag for flag, name in k.NAMESPACES.values()}


def _open_namespaces(pid: int) -> list[tuple[int, int]]:
    """(fd, flag) for each namespace of ``pid`` that differs from ours, user first."""
    out: list[tuple[int, int]] = []
    for name in _ORDER:
        theirs = f"/proc/{pid}/ns/{name}"
        try:
            if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue
            out.append((os.open(theirs, os.O_RDONLY | os.O_CLOEXEC), _FLAGS[name]))
        except FileNotFoundError:
            continue
    return out


def run_exec(req: dict[str, Any], reply: socket.socket, stdio: list[int]) -> NoReturn:
    code = 1
    try:
        code = _run(req, reply, stdio)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            reply.send(json.dumps({"type": "error", "message": str(exc)}).encode())
    finally:
        os._exit(code)


def _run(req: dict[str, Any], reply: socket.socket, stdio: list[int]) -> int:
    kernel = LinuxKernel()
    join_container(kernel, req)
    master = slave = -1
    if req.get("tty"):
        master, slave = os.openpty()  # from the container's /dev/ptmx: `tty` names it inside
    child = os.fork()
    if child == 0:
        exec_child(kernel, req, stdio, master, slave)
    if master >= 0:
        os.close(slave)
        send_message(reply, {"type": "pty"}, [master])
        os.close(master)
    for fd in stdio:
        os.close(fd)
    reply.send(json.dumps({"type": "started", "pid": child}).encode())
    _, status = os.waitpid(child, 0)
    reply.send(json.dumps({"type": "exit", "status": exit_code(status)}).encode())
    return 0


def join_container(kernel: LinuxKernel, req: dict[str, Any]) -> None:
    """Enter the cgroups and every namespace of the container's init (``req["pid"]``)."""
    pid = int(req["pid"])
    if not state.process_alive(pid, req.get("pidStartTime")):
        raise RuntimeError(f"container process {pid} is not running")
    for directory in req.get("cgroups") or []:
        with contextlib.suppress(OSError), open(os.path.join(directory, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))
    for fd, flag in _open_namespaces(pid):
        kernel.setns(fd, flag)
        os.close(fd)


def exec_child(kernel: LinuxKernel, req: dict[str, Any], stdio: list[int], master: int, slave: int) -> NoReturn:
    """In the forked process inside the namespaces: stdio or pty, user, caps, nnp, seccomp, execve."""
    try:
        if slave >= 0:
            os.close(master)
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            targets = [slave, slave, slave]
        else:
            devnull = os.open("/dev/null", os.O_RDWR)
            targets = [*stdio, *[devnull] * (3 - len(stdio))]
        for number, fd in enumerate(targets):
            os.dup2(fd, number)
        caps = req.get("capabilities")
        profile = req.get("seccomp")
        if profile and not req.get("noNewPrivileges"):
            seccomp.install(profile)
        if caps is not None:
            process.drop_bounding(kernel, caps)
        process.switch_user(kernel, req.get("user") or {}, keep_caps=True)
        cwd = req.get("cwd") or "/"
        os.chdir(cwd)
        if caps is not None:
            process.apply_capabilities(kernel, caps)
        env = list(req.get("env") or [])
        path = process.find_executable(req["argv"][0], env, cwd)
        if req.get("noNewPrivileges"):
            kernel.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
            if profile:
                seccomp.install(profile)
        process.execute(path, list(req["argv"]), env)
    except process.SetupError as exc:
        os.write(2, f"vapp-oci exec failed: {exc}\n".encode())
        os._exit(exc.code)
    except BaseException as exc:
        os.write(2, f"vapp-oci exec failed: {exc}\n".encode())
        os._exit(126)
    os._exit(127)
