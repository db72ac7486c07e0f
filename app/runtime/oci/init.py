"""The container init: the two forked stages that build the container (single-threaded only).

Processes and the sync messages they exchange over one SOCK_SEQPACKET pair::

    creator P (vapp-oci create, or a shim)
      └─fork─► stage1 S: join cgroups · join ns paths (user first) · unshare(USER) ·
               │         own single-ID map written by S itself, or ─"stage1"─► P runs newuidmap/
               │         newgidmap (or writes, as root) ◄─"go"─ · setresuid(0) · unshare(other ns)
               └─fork─► init I (pid 1 of a new pid ns) ; S ─"pid"─► P ; S exits
                        I: mounts, devices ─"hooks"─► P runs prestart/createRuntime ◄─"ok"(state)─
                           (that round trip only when such hooks exist: each costs a wakeup)
                           createContainer hooks · pivot_root · masked/ro paths · console ·
                           sysctl/hostname/rlimits · exe lookup ─"ready"─► P (creator returns)
                           accept(exec.sock)  ◄── `start`
                           startContainer hooks · user, caps, nnp · execve

Any failure sends {"type": "error", "message", "code"} and exits; P cleans up.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import socket
import termios  # imported up front: after pivot_root the stdlib is out of reach
import traceback
from typing import Any, NoReturn

from app.runtime import kernel as k
from app.runtime.kernel import Kernel, seccomp
from app.runtime.oci import hooks, process, rootfs
from app.runtime.oci.process import SetupError


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


def recv(sock: socket.socket) -> dict[str, Any] | None:
    data = sock.recv(1 << 20)
    if not data:
        return None
    result: dict[str, Any] = json.loads(data)
    return result


def send_fd(sock: socket.socket, fd: int, name: str) -> None:
    sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def _expect(sock: socket.socket, kind: str) -> dict[str, Any]:
    message = recv(sock)
    if message is None or message.get("type") != kind:
        raise SetupError(f"container creator went away (expected {kind!r}, got {message!r})")
    return message


def describe(exc: BaseException) -> tuple[str, int]:
    """The message and exit code a setup failure is reported with."""
    if isinstance(exc, SetupError):
        return str(exc), exc.code
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}", 1
    return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", 1


def _fail(sock: socket.socket, exc: BaseException) -> NoReturn:
    message, code = describe(exc)
    try:
        send(sock, {"type": "error", "message": message, "code": code})
    finally:
        os._exit(code)


def _namespaces(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return list((cfg.get("linux") or {}).get("namespaces") or [])


def stage1(kernel: Kernel, cfg: dict[str, Any], sync: socket.socket, listener: socket.socket,
           console: socket.socket | None, plan: dict[str, Any]) -> NoReturn:
    """Runs in S: enter/create namespaces, fork the init, report its pid, exit.

    ``plan``: ``cgroups`` (dirs to join), ``self_maps`` ({"uid_map", "gid_map"} S may write
    itself: the caller's own single ID) or ``parent_maps`` (P must write them: "stage1"/"go")."""
    try:
        user = enter_namespaces(kernel, cfg, sync, plan)
        pid = os.fork()
        if pid == 0:
            init(kernel, cfg, sync, listener, console, in_userns=user)
        send(sync, {"type": "pid", "pid": pid})
        os._exit(0)
    except BaseException as exc:
        _fail(sync, exc)


def enter_namespaces(kernel: Kernel, cfg: dict[str, Any], sync: socket.socket | None, plan: dict[str, Any],
                     *, mount: bool = True) -> bool:
    """Join cgroups, then the user namespace (mapped, and root in it), then the others; True
    when a user namespace was entered. ``mount=False`` leaves the mount namespace to the init
    (:func:`enter_mount_namespace`): a caller that keeps working on host paths afterwards (the
    single-stage create) must not share the mount namespace whose root the init pivots."""
    for directory in plan.get("cgroups") or []:
        kernel.write_file(os.path.join(directory, "cgroup.procs"), str(os.getpid()))
    namespaces = _namespaces(cfg)
    by_type = {ns["type"]: ns for ns in namespaces}
    user = by_type.get("user")
    if user and user.get("path"):
        _join(kernel, user["path"], k.CLONE_NEWUSER)
    elif user:
        kernel.unshare(k.CLONE_NEWUSER)
        if plan.get("self_maps"):
            kernel.write_file("/proc/self/setgroups", "deny")
            kernel.write_file("/proc/self/uid_map", plan["self_maps"]["uid_map"])
            kernel.write_file("/proc/self/gid_map", plan["self_maps"]["gid_map"])
    if plan.get("parent_maps"):
        assert sync is not None
        send(sock=sync, message={"type": "stage1", "pid": os.getpid()})
        _expect(sync, "go")
    if user:
        _become_root()
    unshare_flags = 0
    for ns in namespaces:
        flag, _ = k.NAMESPACES.get(ns["type"], (0, ""))
        if ns["type"] == "user" or not flag or (ns["type"] == "mount" and not mount):
            continue
        if ns.get("path"):
            _join(kernel, ns["path"], flag)
        else:
            unshare_flags |= flag
    if unshare_flags:
        kernel.unshare(unshare_flags)
    return bool(user)


def enter_mount_namespace(kernel: Kernel, cfg: dict[str, Any]) -> None:
    for ns in _namespaces(cfg):
        if ns["type"] == "mount":
            if ns.get("path"):
                _join(kernel, ns["path"], k.CLONE_NEWNS)
            else:
                kernel.unshare(k.CLONE_NEWNS)


def _join(kernel: Kernel, path: str, flag: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"namespace path {path}: {exc.strerror}") from exc
    try:
        kernel.setns(fd, flag)
    except OSError as exc:
        raise SetupError(f"joining namespace {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _become_root() -> None:
    """In a fresh user namespace: act as its root when uid/gid 0 are mapped."""
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    except OSError:
        return  # 0 not mapped (e.g. a joined namespace): keep the mapped identity
    with contextlib.suppress(OSError):  # setgroups is denied in a single-ID namespace
        os.setgroups([])


def init(kernel: Kernel, cfg: dict[str, Any], sync: socket.socket, listener: socket.socket,
         console: socket.socket | None, *, in_userns: bool, own_mount_ns: bool = False) -> NoReturn:
    """Runs in I (pid 1 of the container when a pid namespace was asked); ``own_mount_ns``:
    enter the mount namespace here (single-stage create, see :func:`enter_namespaces`)."""
    try:
        if own_mount_ns:
            enter_mount_namespace(kernel, cfg)
        linux = cfg.get("linux") or {}
        types = {ns["type"]: ns for ns in _namespaces(cfg)}
        if "mount" not in types:
            raise SetupError("a mount namespace is required (linux.namespaces has no \"mount\")")
        ctx = rootfs.RootfsContext(
            rootfs=cfg["root"]["path"],
            in_userns=in_userns or _in_child_userns(),
            owns_netns="network" in types and not types["network"].get("path"),
            owns_ipcns="ipc" in types and not types["ipc"].get("path"),
            overlay=rootfs.overlay_data(cfg.get("annotations")),
        )
        if ctx.owns_netns:
            kernel.loopback_up()  # a new netns starts with lo down; containers expect 127.0.0.1
        rootfs.prepare_root(kernel, ctx)
        dev_tmpfs = False
        for m in cfg.get("mounts") or []:
            rootfs.mount_one(kernel, ctx, m)
            dev_tmpfs = dev_tmpfs or (m.get("destination") == "/dev" and m.get("type") == "tmpfs")
        rootfs.setup_devices(kernel, ctx, list(linux.get("devices") or []), dev_tmpfs)
        state: dict[str, Any] = {}
        if needs_hook_sync(cfg):
            import subprocess  # noqa: F401  hooks.run_hooks needs it; after pivot_root it is out of reach
            send(sync, {"type": "hooks"})
            state = _expect(sync, "ok")["state"]
            hooks.run_hooks((cfg.get("hooks") or {}).get("createContainer"), state, "createContainer")
        rootfs.pivot(kernel, ctx.rootfs)
        process.apply_sysctl(kernel, linux.get("sysctl") or {})  # before /proc/sys turns read-only
        rootfs.finish(kernel, linux, bool(cfg["root"].get("readonly")), ctx.in_userns)
        proc = cfg["process"]
        if proc.get("terminal"):
            _setup_console(console)
        if cfg.get("hostname"):
            kernel.sethostname(cfg["hostname"])
        if cfg.get("domainname"):
            kernel.setdomainname(cfg["domainname"])
        process.apply_rlimits(proc.get("rlimits") or [])
        process.apply_oom_score_adj(kernel, proc.get("oomScoreAdj"))
        args = list(proc.get("args") or [])
        if not args:
            raise SetupError("process.args must not be empty")
        env = list(proc.get("env") or [])
        cwd = proc.get("cwd") or "/"
        path = process.find_executable(args[0], env, cwd)
        send(sync, {"type": "ready"})
    except BaseException as exc:
        _fail(sync, exc)
    sync.close()
    _wait_start_and_exec(kernel, cfg, listener, state, path, args, env)


def needs_hook_sync(cfg: dict[str, Any]) -> bool:
    h = cfg.get("hooks") or {}
    return any(h.get(stage) for stage in ("prestart", "createRuntime", "createContainer", "startContainer"))


def _in_child_userns() -> bool:
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return True


def _setup_console(console: socket.socket | None) -> None:
    if console is None:
        raise SetupError("process.terminal is true but no --console-socket was given")
    master, slave = os.openpty()
    send_fd(console, master, "/dev/ptmx")
    os.close(master)
    console.close()
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def _wait_start_and_exec(kernel: Kernel, cfg: dict[str, Any], listener: socket.socket,
                         state: dict[str, Any], path: str, args: list[str], env: list[str]) -> NoReturn:
    conn, _ = listener.accept()
    listener.close()
    try:
        state = dict(state, status="created")
        hooks.run_hooks((cfg.get("hooks") or {}).get("startContainer"), state, "startContainer")
        proc = cfg["process"]
        profile = (cfg.get("linux") or {}).get("seccomp")
        if profile and not proc.get("noNewPrivileges"):
            seccomp.install(profile)  # without no_new_privs this needs CAP_SYS_ADMIN: before the drop
        process.drop_bounding(kernel, proc.get("capabilities"))
        process.switch_user(kernel, proc.get("user") or {}, keep_caps=True)
        cwd = proc.get("cwd") or "/"
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise SetupError(f"chdir to cwd ({cwd!r}) set in config.json failed: {exc.strerror}") from exc
        process.apply_capabilities(kernel, proc.get("capabilities"))
        if proc.get("noNewPrivileges"):
            kernel.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
            if profile:
                seccomp.install(profile)  # as late as possible: fewer syscalls to allow
        process.execute(path, args, env)
    except BaseException as exc:
        code = exc.code if isinstance(exc, SetupError) else 1
        try:
            conn.send(f"{code} {exc}".encode())
            os.write(2, f"vapp-oci: {exc}\n".encode())
        finally:
            os._exit(code)
    os._exit(1)
