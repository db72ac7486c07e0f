"""``create``: the creator side (P) of the native runtime. See :mod:`app.runtime.oci.init`.

Runs in a single-threaded process (the vapp-oci command or a shim). Leaves the
container ``created``: its init blocked in accept() on ``<root>/<id>/exec.sock``.
A failure at any step kills what was started, removes the cgroups and state dir,
and raises :class:`CreateError` carrying the init's message and exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import time
from typing import Any

from app.runtime.kernel import PR_SET_CHILD_SUBREAPER, Kernel, caps, cgroups, seccomp
from app.runtime.oci import hooks, ops, state
from app.runtime.oci.init import describe, enter_namespaces, init, needs_hook_sync, recv, send, stage1
from app.runtime.oci.process import RLIMITS


class CreateError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load_config(bundle: str) -> dict[str, Any]:
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as fh:
            cfg: dict[str, Any] = json.loads(fh.read())
    except FileNotFoundError as exc:
        raise CreateError(f"bundle {bundle}: config.json not found") from exc
    except ValueError as exc:
        raise CreateError(f"{path}: invalid JSON: {exc}") from exc
    validate(cfg, bundle)
    return cfg


# SemVer 2.0.0: MAJOR.MINOR.PATCH[-prerelease][+build]
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")


def validate(cfg: dict[str, Any], bundle: str) -> None:
    """Reject what we cannot honour, naming the field; resolve root.path against the bundle."""
    if not isinstance(cfg.get("ociVersion"), str):
        raise CreateError("config.json: ociVersion is required")
    version = _SEMVER.fullmatch(cfg["ociVersion"])
    if version is None or version.group(1) != "1":  # the spec: SemVer, and we speak 1.x only
        raise CreateError(f"config.json: ociVersion {cfg['ociVersion']!r} is not a supported 1.x SemVer version")
    root = cfg.get("root") or {}
    if not root.get("path"):
        raise CreateError("config.json: root.path is required")
    path = root["path"] if os.path.isabs(root["path"]) else os.path.join(bundle, root["path"])
    if not os.path.isdir(path):
        raise CreateError(f"config.json: root.path {path}: rootfs directory does not exist")
    cfg["root"]["path"] = os.path.realpath(path)
    proc = cfg.get("process")
    if not isinstance(proc, dict) or not proc.get("args"):
        raise CreateError("config.json: process.args is required")
    if proc.get("cwd") and not os.path.isabs(proc["cwd"]):
        raise CreateError(f"config.json: process.cwd {proc['cwd']!r} must be absolute")
    _validate_process(proc)
    for m in cfg.get("mounts") or []:
        if not str(m.get("destination", "")).startswith("/"):
            raise CreateError(f"config.json: mounts: destination {m.get('destination')!r} must be absolute")
    for stage, items in (cfg.get("hooks") or {}).items():
        for hook in items or []:
            if not str(hook.get("path", "")).startswith("/"):
                raise CreateError(f"config.json: hooks.{stage}: path {hook.get('path')!r} must be absolute")
    linux = cfg.get("linux") or {}
    seen: set[str] = set()
    for ns in linux.get("namespaces") or []:
        if ns.get("type") not in ("user", "mount", "pid", "network", "uts", "ipc", "cgroup", "time"):
            raise CreateError(f"config.json: linux.namespaces: unknown type {ns.get('type')!r}")
        if ns["type"] in seen:
            raise CreateError(f"config.json: linux.namespaces: {ns['type']} listed twice")
        seen.add(ns["type"])
        if ns["type"] == "time":
            raise CreateError("config.json: time namespaces are not supported by vapp-oci")
    if (linux.get("uidMappings") or linux.get("gidMappings")) and "user" not in seen:
        raise CreateError("config.json: uidMappings/gidMappings need a user namespace")
    if os.geteuid() != 0 and "user" not in seen:
        raise CreateError("config.json: running as non-root needs a user namespace (try `spec --rootless`)")
    if linux.get("seccomp"):
        try:
            seccomp.compile_filter(linux["seccomp"])
        except (seccomp.SeccompError, KeyError, TypeError, ValueError) as exc:
            raise CreateError(f"config.json: linux.seccomp: {exc}") from exc


def _validate_process(proc: dict[str, Any]) -> None:
    for key, names in (proc.get("capabilities") or {}).items():
        try:
            caps.cap_mask(names or [])
        except caps.UnknownCapability as exc:
            raise CreateError(f"config.json: process.capabilities.{key}: unknown capability {exc.args[0]!r}") from exc
    for item in proc.get("rlimits") or []:
        if item.get("type") not in RLIMITS:
            raise CreateError(f"config.json: process.rlimits: unknown type {item.get('type')!r}")
        if int(item.get("soft", 0)) > int(item.get("hard", 0)):
            raise CreateError(f"config.json: process.rlimits: {item['type']} soft limit above the hard limit")


def _maps(linux: dict[str, Any], key: str, own: int) -> list[tuple[int, int, int]]:
    entries = linux.get(key) or [{"containerID": 0, "hostID": own, "size": 1}]
    return [(int(e["containerID"]), int(e["hostID"]), int(e["size"])) for e in entries]


def write_id_maps(kernel: Kernel, pid: int, linux: dict[str, Any]) -> None:
    """Single own-ID maps (or any map as root) are written directly; ranges go through
    newuidmap/newgidmap (setuid helpers, run side by side)."""
    import subprocess  # only for ranges (see hooks.py for why not at module level)

    uid, gid = os.geteuid(), os.getegid()
    helpers: list[tuple[str, subprocess.Popen[bytes]]] = []
    for key, own, tool, file in (("uidMappings", uid, "newuidmap", "uid_map"),
                                 ("gidMappings", gid, "newgidmap", "gid_map")):
        maps = _maps(linux, key, own)
        if uid == 0 or maps == [(maps[0][0], own, 1)]:
            if file == "gid_map" and uid != 0:
                kernel.write_file(f"/proc/{pid}/setgroups", "deny")
            try:
                kernel.write_file(f"/proc/{pid}/{file}", "".join(f"{c} {h} {s}\n" for c, h, s in maps))
            except OSError as exc:
                raise CreateError(f"writing {file} {maps}: {exc.strerror}") from exc
            continue
        argv = [tool, str(pid)] + [str(v) for triple in maps for v in triple]
        helpers.append((tool, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE)))
    for tool, proc in helpers:
        _, err = proc.communicate(timeout=10)
        if proc.returncode != 0:
            raise CreateError(f"{tool} failed: {err.decode(errors='replace').strip()} "
                              f"(check /etc/sub{'uid' if tool == 'newuidmap' else 'gid'})")


def _bind_exec_socket(directory: str) -> socket.socket:
    """Listen on <dir>/exec.sock, via /proc/self/fd to stay under the 108-byte sun_path limit."""
    dirfd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(f"/proc/self/fd/{dirfd}/exec.sock")
        listener.listen(1)
    finally:
        os.close(dirfd)
    return listener


def create(
    kernel: Kernel,
    root: str,
    container_id: str,
    bundle: str,
    *,
    console_socket: str | None = None,
    pid_file: str | None = None,
    subreaper: bool = False,
    console: socket.socket | None = None,
    extra: dict[str, Any] | None = None,
    disposable: bool = False,
) -> dict[str, Any]:
    """Create the container; ``console`` (a connected socket) may replace ``console_socket``;
    ``extra`` is merged into the stored state (the shim records itself there).
    ``disposable``: the calling process only reports the result and exits (the shim's creator
    child), so it may itself enter the container's namespaces instead of forking a stage S
    (one process fewer on the critical path) when nothing needs it outside: no newuidmap,
    no create-time hooks."""
    if not state.valid_id(container_id):
        raise CreateError(f"invalid container id {container_id!r}")
    bundle = os.path.realpath(bundle)
    cfg = load_config(bundle)
    os.makedirs(root, mode=0o711, exist_ok=True)
    directory = state.container_dir(root, container_id)
    try:
        os.mkdir(directory, 0o711)
    except FileExistsError as exc:
        raise CreateError(f"container with id {container_id!r} already exists") from exc
    st: dict[str, Any] = {
        "ociVersion": cfg["ociVersion"],
        "id": container_id,
        "status": "creating",
        "pid": 0,
        "bundle": bundle,
        "annotations": cfg.get("annotations") or {},
        "hooks": cfg.get("hooks") or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cgroups": [],
    } | (extra or {})
    state.save(root, st)
    try:
        return _create(kernel, root, cfg, st, console_socket, pid_file, subreaper, console, disposable)
    except BaseException:
        _destroy(st)
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _create(
    kernel: Kernel,
    root: str,
    cfg: dict[str, Any],
    st: dict[str, Any],
    console_path: str | None,
    pid_file: str | None,
    subreaper: bool,
    console: socket.socket | None,
    disposable: bool = False,
) -> dict[str, Any]:
    linux = cfg.get("linux") or {}
    listener = _bind_exec_socket(state.container_dir(root, st["id"]))
    if (cfg["process"] or {}).get("terminal") and console is None:
        if not console_path:
            raise CreateError("process.terminal is true: --console-socket is required")
        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        console.connect(console_path)
    cg = cgroups.CgroupSet()
    if linux.get("cgroupsPath") or _has_limits(linux.get("resources")):
        cg = cgroups.create(cgroups.normalize_path(linux.get("cgroupsPath"), st["id"]), linux.get("resources"))
    st["cgroups"] = cg.dirs
    for reason in cg.skipped:
        os.write(2, f"vapp-oci: warning: cgroup limit not applied: {reason}\n".encode())
    if subreaper:
        kernel.prctl(PR_SET_CHILD_SUBREAPER, 1)
    plan = _plan(cfg, cg)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    joins_user = any(ns["type"] == "user" and ns.get("path") for ns in linux.get("namespaces") or [])
    if disposable and not plan["parent_maps"] and not joins_user and not needs_hook_sync(cfg):
        # Single stage: this process is S. It keeps the host's mount namespace (the init
        # unshares its own before pivoting), so its state writes below still land on host paths;
        # a user namespace it enters is a fresh one mapping only our own ID (or none at all), so
        # it still owns those files.
        try:
            in_userns = enter_namespaces(kernel, cfg, None, plan, mount=False)
        except BaseException as exc:
            raise CreateError(*describe(exc)) from exc
        s_pid = os.fork()
        if s_pid == 0:
            parent.close()
            init(kernel, cfg, child, listener, console, in_userns=in_userns, own_mount_ns=True)
        st["pid"] = s_pid
        info = state.proc_stat(s_pid)
        st["pidStartTime"] = info[1] if info else None
        state.save(root, st)
    else:
        s_pid = os.fork()
        if s_pid == 0:
            parent.close()
            stage1(kernel, cfg, child, listener, console, plan)
    child.close()
    listener.close()
    if console:
        console.close()
    try:
        _drive(kernel, root, cfg, st, parent, s_pid, cg)
    finally:
        parent.close()
        if s_pid != st.get("pid"):  # a stage S (not the init itself): reap it
            with contextlib.suppress(ChildProcessError):
                os.waitpid(s_pid, 0)
    st["status"] = "created"
    state.save(root, st)
    if pid_file:
        state.write_atomic(os.path.abspath(pid_file), str(st["pid"]).encode(), 0o644)
    return st


def _plan(cfg: dict[str, Any], cg: cgroups.CgroupSet) -> dict[str, Any]:
    """What S can do alone (join cgroups, write its own single-ID map) and what needs P."""
    linux = cfg.get("linux") or {}
    plan: dict[str, Any] = {"cgroups": cg.dirs, "self_maps": None, "parent_maps": False}
    if not any(ns["type"] == "user" and not ns.get("path") for ns in linux.get("namespaces") or []):
        return plan
    uid, gid = os.geteuid(), os.getegid()
    uids, gids = _maps(linux, "uidMappings", uid), _maps(linux, "gidMappings", gid)
    if uid != 0 and len(uids) == len(gids) == 1 and uids[0][1:] == (uid, 1) and gids[0][1:] == (gid, 1):
        plan["self_maps"] = {"uid_map": f"{uids[0][0]} {uid} 1\n", "gid_map": f"{gids[0][0]} {gid} 1\n"}
    else:
        plan["parent_maps"] = True
    return plan


def _drive(
    kernel: Kernel,
    root: str,
    cfg: dict[str, Any],
    st: dict[str, Any],
    sync: socket.socket,
    s_pid: int,
    cg: cgroups.CgroupSet,
) -> None:
    """Serve S and I until "ready". S's "pid" and I's messages come from two processes, so
    they may arrive in either order: "hooks"/"ready" seen before the pid wait for it."""
    linux = cfg.get("linux") or {}
    has_user = any(ns["type"] == "user" and not ns.get("path") for ns in linux.get("namespaces") or [])
    pending: list[str] = []
    while True:
        message = recv(sync)
        if message is None:
            raise CreateError("container init exited during setup")
        kind = message["type"]
        if kind == "error":
            raise CreateError(message["message"], int(message.get("code", 1)))
        if kind == "stage1":
            if has_user:
                write_id_maps(kernel, s_pid, linux)
            send(sync, {"type": "go"})
            continue
        if kind == "pid":
            st["pid"] = int(message["pid"])
            info = state.proc_stat(st["pid"])
            st["pidStartTime"] = info[1] if info else None
            state.save(root, st)
        else:
            pending.append(kind)
        while pending and st.get("pid"):
            kind = pending.pop(0)
            if kind == "ready":
                return
            if kind == "hooks":
                _run_create_hooks(root, cfg, st, sync)


def _run_create_hooks(root: str, cfg: dict[str, Any], st: dict[str, Any], sync: socket.socket) -> None:
    public = state.public_state(root, st) | {"status": "creating", "pid": st["pid"]}
    hook_cfg = cfg.get("hooks") or {}
    try:
        # prestart runs once the environment is set up (the spec's wording); runtime-tools'
        # hooks_stdin expects "created" here, while the newer createRuntime hook sees "creating".
        hooks.run_hooks(hook_cfg.get("prestart"), public | {"status": "created"}, "prestart")
        hooks.run_hooks(hook_cfg.get("createRuntime"), public, "createRuntime")
    except hooks.HookError as exc:
        raise CreateError(str(exc)) from exc
    send(sync, {"type": "ok", "state": public})


def _has_limits(resources: dict[str, Any] | None) -> bool:
    return any((resources or {}).get(key) for key in ("memory", "cpu", "pids"))


def _destroy(st: dict[str, Any]) -> None:
    pid = int(st.get("pid") or 0)
    if pid and state.process_alive(pid, st.get("pidStartTime")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        ops.wait_gone(pid, st.get("pidStartTime"), 5.0)
    cgroups.remove(list(st.get("cgroups") or []))
