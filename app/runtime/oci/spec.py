"""Bundle generation: image config + :class:`ContainerSpec` → OCI ``config.json`` (pure functions).

Command resolution (Docker / Kubernetes semantics)::

    command  args   →  process.args
    set      any    →  command + args          (Entrypoint and Cmd dropped)
    unset    set    →  Entrypoint + args       (Cmd dropped)
    unset    unset  →  Entrypoint + Cmd        (neither: InvalidArgument, never a silent /bin/sh)

Env: image ``Env`` first, the spec's entries override by key; PATH defaulted.
User: spec ``user`` or image ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``) resolved
through the rootfs ``/etc/passwd`` and ``/etc/group`` text the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.errors import InvalidArgument
from app.runtime.kernel.caps import CAP_NAMES, DEFAULT_CAPS
from app.runtime.oci import defaults

NetworkMode = str  # "host" | "none" | "new" | "/path/to/netns" | "container:<id>" (resolved by the service)


@dataclass(frozen=True)
class MountSpec:
    destination: str
    source: str = ""
    type: Literal["bind", "tmpfs", "volume"] = "bind"
    readonly: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    memory_bytes: int | None = None
    memory_swap_bytes: int | None = None
    cpu_quota: int | None = None  # microseconds per period
    cpu_period: int | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None


@dataclass(frozen=True)
class IdMap:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class ContainerSpec:
    """What a caller asks for; everything optional falls back to the image config."""

    id: str
    name: str = ""
    rootfs: str = "rootfs"
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    hostname: str | None = None
    mounts: tuple[MountSpec, ...] = ()
    resources: Resources = field(default_factory=Resources)
    privileged: bool = False
    network: NetworkMode = "host"
    readonly_rootfs: bool = False
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    etc_files: dict[str, str] = field(default_factory=dict)  # /etc/hosts etc → host file to bind
    rlimits: tuple[tuple[str, int, int], ...] = ()
    uid_maps: tuple[IdMap, ...] = ()  # rootless: empty = single-ID map of the caller
    gid_maps: tuple[IdMap, ...] = ()
    sysctl: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = "/vapp"
    oom_score_adj: int | None = None
    seccomp: str | dict[str, Any] | None = None  # None/"unconfined", "runtime/default", or an OCI profile


def image_section(image_config: dict[str, Any] | None) -> dict[str, Any]:
    """Accept a whole OCI image config (with ``config``) or just its ``config`` section."""
    if not image_config:
        return {}
    inner = image_config.get("config") if "rootfs" in image_config or "config" in image_config else image_config
    return dict(inner or {})


def resolve_args(image: dict[str, Any], command: tuple[str, ...] | None, args: tuple[str, ...] | None) -> list[str]:
    entrypoint = list(image.get("Entrypoint") or [])
    cmd = list(image.get("Cmd") or [])
    if command:
        result = [*command, *(args or ())]
    elif args:
        result = [*entrypoint, *args]
    else:
        result = [*entrypoint, *cmd]
    if not result:
        raise InvalidArgument(
            "no command: the spec has no command/args and the image has no Entrypoint/Cmd",
            phase="create",
            details={"field": "command"},
        )
    return result


def merge_env(image_env: list[str] | None, env: tuple[str, ...] | list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*(image_env or []), *env]:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment entry {item!r}", details={"field": "env"})
        merged[key] = value if sep else ""
    merged.setdefault("PATH", defaults.DEFAULT_PATH.split("=", 1)[1])
    return [f"{k}={v}" for k, v in merged.items()]


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(user: str | None, passwd: str, group: str) -> dict[str, Any]:
    """``name[:group]`` / ``uid[:gid]`` → {uid, gid, additionalGids}; unknown names are errors."""
    if not user:
        user = "0"
    name, _, grp = user.partition(":")
    users = _table(passwd)
    groups = _table(group)
    entry = next((u for u in users if len(u) > 3 and (u[0] == name or u[2] == name)), None)
    if name.isdigit():
        uid = int(name)
        gid = int(entry[3]) if entry else 0
    elif entry is None:
        raise InvalidArgument(
            f"unable to find user {name}: no matching entries in passwd file",
            phase="create",
            details={"field": "user", "user": name},
        )
    else:
        uid, gid = int(entry[2]), int(entry[3])
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((g for g in groups if len(g) > 2 and g[0] == grp), None)
            if g is None:
                raise InvalidArgument(
                    f"unable to find group {grp}: no matching entries in group file",
                    phase="create",
                    details={"field": "user", "group": grp},
                )
            gid = int(g[2])
    username = entry[0] if entry else None
    extra = sorted(
        {int(g[2]) for g in groups if len(g) > 3 and username and username in g[3].split(",") and int(g[2]) != gid}
    )
    out: dict[str, Any] = {"uid": uid, "gid": gid}
    if extra and not grp:
        out["additionalGids"] = extra
    return out


def capabilities(privileged: bool, add: tuple[str, ...], drop: tuple[str, ...]) -> list[str]:
    """containerd's (CRI) order, so ``drop: [ALL], add: [NET_ADMIN]`` leaves exactly NET_ADMIN::

        base  = all if privileged else the defaults
        ALL in add  → base = all          ALL in drop → base = {}
        base |= individual adds           base -= individual drops   (a cap both added and dropped is dropped)

    Names with or without ``CAP_``, any case; unknown names are refused. Pure."""
    def norm(name: str) -> str:
        full = name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper()
        if full not in CAP_NAMES and full != "CAP_ALL":
            raise InvalidArgument(f"unknown capability {name!r}", details={"field": "capabilities"})
        return full

    adds = {norm(n) for n in add}
    drops = {norm(n) for n in drop}
    base = set(CAP_NAMES) if privileged or "CAP_ALL" in adds else set(DEFAULT_CAPS)
    if "CAP_ALL" in drops:
        base = set()
    base = (base | (adds - {"CAP_ALL"})) - (drops - {"CAP_ALL"})
    return [c for c in CAP_NAMES if c in base]


def _namespaces(spec: ContainerSpec, rootless: bool) -> tuple[list[dict[str, str]], bool]:
    ns: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    own_net = False
    if spec.network in ("none", "new"):
        ns.append({"type": "network"})
        own_net = True
    elif spec.network.startswith("/"):
        ns.append({"type": "network", "path": spec.network})
    elif spec.network != "host":
        raise InvalidArgument(
            f"network mode {spec.network!r}: want host, none, new or a netns path", details={"field": "network"}
        )
    if rootless:
        ns.append({"type": "user"})
    ns.append({"type": "cgroup"})
    return ns, own_net


def _mounts(spec: ContainerSpec, own_net: bool, rootless: bool) -> list[dict[str, Any]]:
    mounts = defaults.base_mounts(own_netns=own_net, rootless=rootless)
    for dest, host in sorted(spec.etc_files.items()):
        mounts.append({"destination": dest, "type": "bind", "source": host, "options": ["rbind", "rprivate"]})
    for m in spec.mounts:
        if not m.destination.startswith("/"):
            raise InvalidArgument(f"mount destination {m.destination!r} must be absolute", details={"field": "mounts"})
        if m.type == "tmpfs":
            opts = ["nosuid", "nodev", *m.options] + (["ro"] if m.readonly else [])
            mounts.append({"destination": m.destination, "type": "tmpfs", "source": "tmpfs", "options": opts})
            continue
        if not m.source.startswith("/"):
            raise InvalidArgument(
                f"mount source {m.source!r} must be an absolute host path", details={"field": "mounts"}
            )
        opts = ["rbind", *m.options, "ro" if m.readonly else "rw"]
        mounts.append({"destination": m.destination, "type": "bind", "source": m.source, "options": opts})
    return mounts


def _resources(r: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.memory_bytes is not None:
        out["memory"] = {"limit": r.memory_bytes}
        if r.memory_swap_bytes is not None:
            out["memory"]["swap"] = r.memory_swap_bytes
    cpu = {
        k: v for k, v in (("quota", r.cpu_quota), ("period", r.cpu_period), ("shares", r.cpu_shares)) if v is not None
    }
    if cpu:
        out["cpu"] = cpu
    if r.pids_limit is not None:
        out["pids"] = {"limit": r.pids_limit}
    return out


def build_config(
    spec: ContainerSpec,
    image_config: dict[str, Any] | None,
    *,
    passwd: str = "",
    group: str = "",
    host_uid: int = 0,
    host_gid: int = 0,
) -> dict[str, Any]:
    """The OCI runtime config for ``spec``. ``host_uid != 0`` means rootless (user namespace)."""
    image = image_section(image_config)
    rootless = host_uid != 0
    if spec.privileged and rootless:
        raise InvalidArgument("privileged containers need the daemon to run as root", details={"field": "privileged"})
    namespaces, own_net = _namespaces(spec, rootless)
    caps = capabilities(spec.privileged, spec.cap_add, spec.cap_drop)
    process: dict[str, Any] = {
        "terminal": spec.tty,
        "user": resolve_user(spec.user or image.get("User"), passwd, group),
        "args": resolve_args(image, spec.command, spec.args),
        "env": merge_env(image.get("Env"), spec.env),
        "cwd": spec.workdir or image.get("WorkingDir") or "/",
        "capabilities": {**defaults.caps_block(caps), "inheritable": [], "ambient": []},
        "noNewPrivileges": not spec.privileged,
    }
    if spec.rlimits:
        process["rlimits"] = [{"type": t, "soft": s, "hard": h} for t, s, h in spec.rlimits]
    if spec.oom_score_adj is not None:
        process["oomScoreAdj"] = spec.oom_score_adj
    linux: dict[str, Any] = {"namespaces": namespaces}
    resources = _resources(spec.resources)
    if resources:  # no limits: no cgroup of its own (creating one costs ~3 ms per v1 controller)
        linux["cgroupsPath"] = f"{spec.cgroup_parent.rstrip('/')}/{spec.id}"
        linux["resources"] = resources
    if rootless:
        linux["uidMappings"] = _idmaps(spec.uid_maps, host_uid)
        linux["gidMappings"] = _idmaps(spec.gid_maps, host_gid)
    if not spec.privileged:
        linux["maskedPaths"] = list(defaults.MASKED_PATHS)
        linux["readonlyPaths"] = list(defaults.READONLY_PATHS)
    else:
        linux["devices"] = [
            {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o666, "uid": 0, "gid": 0}
        ]
    if spec.sysctl:
        linux["sysctl"] = dict(spec.sysctl)
    profile = seccomp_profile(spec.seccomp, privileged=spec.privileged)
    if profile:
        linux["seccomp"] = profile
    annotations = dict(spec.annotations)
    if spec.stop_signal or image.get("StopSignal"):
        annotations.setdefault("org.opencontainers.image.stopSignal", spec.stop_signal or image["StopSignal"])
    return {
        "ociVersion": defaults.OCI_VERSION,
        "process": process,
        "root": {"path": spec.rootfs, "readonly": spec.readonly_rootfs},
        "hostname": spec.hostname or spec.id[:12],
        "mounts": _mounts(spec, own_net, rootless),
        "linux": linux,
        "annotations": annotations,
    }


def _idmaps(maps: tuple[IdMap, ...], own: int) -> list[dict[str, int]]:
    """Explicit maps, else the single-ID map ``0 <own> 1``."""
    chosen = maps or (IdMap(0, own, 1),)
    return [{"containerID": m.container_id, "hostID": m.host_id, "size": m.size} for m in chosen]


# Denied by "runtime/default" (ERRNO EPERM), everything else allowed: what an unprivileged
# container has no business calling even where capabilities would not already stop it.
DEFAULT_DENIED_SYSCALLS: tuple[str, ...] = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "get_mempolicy",
    "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie",
    "mbind", "mount", "mount_setattr", "move_mount", "move_pages", "nfsservctl", "open_by_handle_at",
    "open_tree", "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace",
    "query_module", "quotactl", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday",
    "swapoff", "swapon", "sysfs", "syslog", "umount2", "unshare", "uselib", "userfaultfd", "ustat",
    "vhangup", "vm86", "vm86old",
)  # fmt: skip


def seccomp_profile(choice: str | dict[str, Any] | None, *, privileged: bool = False) -> dict[str, Any] | None:
    """The OCI ``linux.seccomp`` for a spec's choice; privileged containers are never filtered."""
    if privileged or choice in (None, "", "unconfined"):
        return None
    if isinstance(choice, dict):
        return choice
    if choice in ("runtime/default", "docker/default"):
        return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": list(DEFAULT_DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO"}]}
    raise InvalidArgument(f"seccomp profile {choice!r}: want unconfined, runtime/default or a profile",
                          details={"field": "seccomp"})


def stop_signal(spec: ContainerSpec, image_config: dict[str, Any] | None) -> str:
    return spec.stop_signal or image_section(image_config).get("StopSignal") or "SIGTERM"
