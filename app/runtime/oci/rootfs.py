"""Root filesystem setup inside the container's mount namespace (runs in the container init).

Order (what works rootless on this machine, see machine-notes)::

    / rprivate ─► [OVERLAY_ANNOTATION: mount the overlay on rootfs] ─► bind rootfs on itself ─►
    config mounts in order (proc, /dev tmpfs, devpts,
    shm, mqueue, sysfs, binds...) ─► device nodes (mknod as real root, bind host node in a
    userns) + /dev symlinks ─► [createContainer hooks, caller] ─► pivot_root(".", ".") +
    umount2(".", MNT_DETACH) ─► masked paths, readonly paths, root.readonly, rootfsPropagation
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Any

from app.runtime import kernel as k
from app.runtime.kernel import Kernel
from app.runtime.oci import mountopts

# vapp-specific: the root filesystem is an overlay the init mounts itself, inside the
# container's user+mount namespace (a rootless ``userxattr`` overlay can be mounted only
# there). Value: JSON ``{"type": "overlay", "source": "overlay", "options": [...]}``.
OVERLAY_ANNOTATION = "org.4lock.rootfs.overlay"
_OVERLAY_OPTIONS = ("lowerdir=", "upperdir=", "workdir=", "userxattr", "redirect_dir=", "metacopy=", "index=",
                    "xino=", "volatile")

DEFAULT_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (
    ("/proc/self/fd", "fd"), ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"), ("pts/ptmx", "ptmx"),
)  # fmt: skip


@dataclass(frozen=True)
class RootfsContext:
    rootfs: str  # absolute host path
    in_userns: bool  # mknod and some fs types are not allowed
    owns_netns: bool  # sysfs may be mounted only then
    owns_ipcns: bool  # mqueue may be mounted only then
    overlay: str | None = None  # overlay mount data to put on rootfs first (OVERLAY_ANNOTATION)


class MountError(OSError):
    pass


def _join(rootfs: str, dest: str) -> str:
    """Resolve ``dest`` under ``rootfs``, following symlinks as if rootfs were ``/`` (no escape)."""
    current = ""
    parts = deque(dest.split("/"))
    hops = 0
    while parts:
        part = parts.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        full = os.path.join(rootfs, candidate)
        if os.path.islink(full):
            hops += 1
            if hops > 40:
                raise MountError(errno.ELOOP, f"too many symlinks resolving {dest}")
            target = os.readlink(full)
            if target.startswith("/"):
                current = ""
            parts.extendleft(reversed(target.split("/")))
            continue
        current = candidate
    return os.path.join(rootfs, current) if current else rootfs


def _ensure_target(target: str, source: str | None) -> None:
    if os.path.lexists(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if source is not None and os.path.exists(source) and not os.path.isdir(source):
        with open(target, "a"):
            pass
    else:
        os.makedirs(target, exist_ok=True)


def mount_one(kernel: Kernel, ctx: RootfsContext, m: dict[str, Any]) -> None:
    dest = m["destination"]
    mtype = m.get("type") or ""
    opts = mountopts.parse(list(m.get("options") or []), mtype)
    source = m.get("source") or mtype or "none"
    target = _join(ctx.rootfs, dest)
    if opts.is_bind:
        _ensure_target(target, source)
        kernel.mount(source, target, None, opts.flags & (k.MS_BIND | k.MS_REC), None)
        if opts.remount_flags:
            flags = k.MS_BIND | k.MS_REMOUNT | opts.remount_flags
            if ctx.in_userns:
                flags |= mountopts.locked_flags(target)
            kernel.mount(source, target, None, flags, None)
    else:
        _ensure_target(target, None)
        _mount_fs(kernel, ctx, mtype, source, target, opts)
    for prop in opts.propagation:
        kernel.mount("none", target, None, prop, None)


def _mount_fs(kernel: Kernel, ctx: RootfsContext, mtype: str, source: str, target: str,
              opts: mountopts.MountOptions) -> None:
    data = opts.data or None
    if mtype == "sysfs" and (ctx.in_userns and not ctx.owns_netns):
        _bind_host(kernel, "/sys", target, opts.flags | k.MS_RDONLY)
        return
    if mtype == "mqueue" and ctx.in_userns and not ctx.owns_ipcns:
        _bind_host(kernel, "/dev/mqueue", target, opts.flags)
        return
    if mtype == "devpts" and ctx.in_userns and data:
        # gid=5 names a group that usually is not mapped in a single-ID user namespace
        data = ",".join(o for o in data.split(",") if not o.startswith("gid=")) or None
    if mtype == "cgroup":
        try:
            _mount_cgroups(kernel, ctx, target, opts.flags)
        except OSError:
            _bind_host(kernel, "/sys/fs/cgroup", target, opts.flags | k.MS_RDONLY)
        return
    try:
        kernel.mount(source, target, mtype, opts.flags, data)
    except OSError as exc:
        if exc.errno == errno.EPERM and mtype in ("sysfs", "mqueue") and ctx.in_userns:
            _bind_host(kernel, "/sys" if mtype == "sysfs" else "/dev/mqueue", target, opts.flags)
            return
        raise MountError(exc.errno, f"mount {mtype} on {target}: {os.strerror(exc.errno or 0)}") from exc


def _v1_hierarchies() -> list[tuple[str, str]]:
    """(mountpoint basename, super options) of the host's cgroup v1 hierarchies."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "cgroup":
                opts = [o for o in fields[sep + 3].split(",") if o not in ("rw", "ro")]
                out.append((os.path.basename(fields[4]), ",".join(opts)))
    return out


def _mount_cgroups(kernel: Kernel, ctx: RootfsContext, target: str, flags: int) -> None:
    """``type: cgroup``: cgroup2 on a v2 host; on v1, a tmpfs with one cgroup mount per hierarchy
    (as runc does; in the container's cgroup namespace each shows its own cgroup as root)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        kernel.mount("cgroup2", target, "cgroup2", flags, None)
        return
    if ctx.in_userns:  # v1 hierarchies cannot be mounted from a user namespace
        raise MountError(errno.EPERM, "cgroup v1 in a user namespace")
    kernel.mount("tmpfs", target, "tmpfs", flags & ~k.MS_RDONLY, "mode=755")
    for name, options in _v1_hierarchies():
        sub = os.path.join(target, name)
        os.makedirs(sub, exist_ok=True)
        kernel.mount("cgroup", sub, "cgroup", flags, options)
    if flags & k.MS_RDONLY:
        kernel.mount("tmpfs", target, None, k.MS_REMOUNT | flags, "mode=755")


def _bind_host(kernel: Kernel, host: str, target: str, flags: int) -> None:
    kernel.mount(host, target, None, k.MS_BIND | k.MS_REC, None)
    remount = flags & (k.MS_RDONLY | k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC)
    if remount:
        with contextlib.suppress(OSError):
            kernel.mount(host, target, None, k.MS_BIND | k.MS_REMOUNT | remount | mountopts.locked_flags(
                target), None)


def prepare_root(kernel: Kernel, ctx: RootfsContext) -> None:
    kernel.mount("none", "/", None, k.MS_REC | k.MS_PRIVATE, None)
    if ctx.overlay is not None:  # lives only in this mount namespace: gone when the container is
        kernel.mount("overlay", ctx.rootfs, "overlay", 0, ctx.overlay)
    kernel.mount(ctx.rootfs, ctx.rootfs, None, k.MS_BIND | k.MS_REC, None)


def overlay_data(annotations: dict[str, str] | None) -> str | None:
    """The overlay mount data from :data:`OVERLAY_ANNOTATION`, or None when absent."""
    raw = (annotations or {}).get(OVERLAY_ANNOTATION)
    if raw is None:
        return None
    try:
        desc = json.loads(raw)
        options = [str(o) for o in desc["options"]]
        kind = desc.get("type", "overlay")
    except (ValueError, KeyError, TypeError) as exc:
        raise MountError(errno.EINVAL, f"annotation {OVERLAY_ANNOTATION}: not a mount description: {exc}") from exc
    if kind != "overlay":
        raise MountError(errno.EINVAL, f"annotation {OVERLAY_ANNOTATION}: type {kind!r} (only overlay)")
    for opt in options:  # a comma would smuggle extra options into the mount data
        if "," in opt or not opt.startswith(_OVERLAY_OPTIONS):
            raise MountError(errno.EINVAL, f"annotation {OVERLAY_ANNOTATION}: option {opt!r} not allowed")
    if not any(o.startswith("lowerdir=") for o in options):
        raise MountError(errno.EINVAL, f"annotation {OVERLAY_ANNOTATION}: no lowerdir")
    return ",".join(options)


def setup_devices(kernel: Kernel, ctx: RootfsContext, devices: list[dict[str, Any]], dev_is_tmpfs: bool) -> None:
    """Default nodes (only when /dev is our tmpfs) and ``linux.devices``; then the /dev symlinks."""
    wanted: list[dict[str, Any]] = []
    if dev_is_tmpfs:
        wanted = [{"path": f"/dev/{name}", "type": "c"} for name in DEFAULT_DEVICES]
    wanted += devices
    for dev in wanted:
        target = _join(ctx.rootfs, dev["path"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not ctx.in_userns and "major" in dev:
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[dev["type"]]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            kernel.mknod(target, kind | (dev.get("fileMode") or 0o666), os.makedev(dev["major"], dev["minor"]))
            os.chown(target, dev.get("uid", 0), dev.get("gid", 0))
            os.chmod(target, dev.get("fileMode") or 0o666)
        elif not ctx.in_userns and dev["path"] in (f"/dev/{n}" for n in DEFAULT_DEVICES):
            st = os.stat(dev["path"])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            kernel.mknod(target, stat.S_IFCHR | 0o666, st.st_rdev)
            os.chmod(target, 0o666)
        else:
            if not os.path.exists(dev["path"]):
                raise MountError(errno.ENOENT, f"device {dev['path']}: not present on the host to bind")
            if not os.path.lexists(target):
                with open(target, "a"):
                    pass
            kernel.mount(dev["path"], target, None, k.MS_BIND, None)
    if dev_is_tmpfs:
        for src, name in _DEV_LINKS:
            link = _join(ctx.rootfs, f"/dev/{name}")
            if not os.path.lexists(link):
                os.symlink(src, link)
        if os.path.exists("/proc/kcore") and not os.path.lexists(_join(ctx.rootfs, "/dev/core")):
            os.symlink("/proc/kcore", _join(ctx.rootfs, "/dev/core"))


def pivot(kernel: Kernel, rootfs: str) -> None:
    os.chdir(rootfs)
    kernel.pivot_root(".", ".")
    kernel.umount2(".", k.MNT_DETACH)
    os.chdir("/")


def finish(kernel: Kernel, linux: dict[str, Any], root_readonly: bool, in_userns: bool) -> None:
    """After pivot_root: masked and read-only paths, read-only root, root propagation."""
    for path in linux.get("maskedPaths") or []:
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            kernel.mount("tmpfs", path, "tmpfs", k.MS_RDONLY, None)
        else:
            kernel.mount("/dev/null", path, None, k.MS_BIND, None)
    for path in linux.get("readonlyPaths") or []:
        if not os.path.lexists(path):
            continue
        kernel.mount(path, path, None, k.MS_BIND | k.MS_REC, None)
        kernel.mount(path, path, None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY | mountopts.locked_flags(path)
                     | k.MS_REC, None)
    if root_readonly:
        kernel.mount("/", "/", None, k.MS_BIND | k.MS_REMOUNT | k.MS_RDONLY
                     | (mountopts.locked_flags("/") if in_userns else 0), None)
    propagation = linux.get("rootfsPropagation")
    if propagation:
        flag = mountopts.PROPAGATION.get(propagation)
        if flag is None:
            raise MountError(errno.EINVAL, f"rootfsPropagation {propagation!r} is not a propagation mode")
        kernel.mount("none", "/", None, flag | k.MS_REC if propagation.startswith("r") else flag, None)
