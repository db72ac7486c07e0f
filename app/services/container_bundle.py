"""Pure-ish helpers of the container service: bundle preparation (generated config.json or the
caller's bundle), the exec request, row → ContainerInfo, signal names.

Network modes resolved here: ``host | none | new | <netns path>`` go to the spec as is;
``container:<id>`` joins the target's net namespace (and, rootless, its user namespace,
since a netns can only be joined from its owning user namespace); anything else (``pod``…)
gets a new netns that the network hook fills after create.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.errors import FailedPrecondition, InvalidArgument
from app.runtime.oci import rootfs as rootfs_mod
from app.runtime.oci import spec as specgen
from app.runtime.oci import state as oci_state
from app.services.container_types import ContainerInfo, ContainerStatus, CreateRequest
from app.state.models.containers import ContainerRow

Lookup = Callable[[str], ContainerRow]


def make_bundle(req: CreateRequest, directory: Path, lookup: Lookup, *, cgroup_parent: str = "/vapp",
                subordinate_ids: bool = True) -> tuple[str, dict[str, Any]]:
    """The bundle to run: the caller's (``req.bundle``) or one generated under ``directory``."""
    if req.bundle:
        try:
            cfg: dict[str, Any] = json.loads((Path(req.bundle) / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"bundle {req.bundle}: cannot read config.json: {exc}") from exc
        root = cfg.get("root", {}).get("path", "rootfs")
        cfg["root"]["path"] = root if os.path.isabs(root) else str(Path(req.bundle) / root)
        return req.bundle, cfg
    if not req.rootfs or not os.path.isdir(req.rootfs):
        raise InvalidArgument(f"rootfs {req.rootfs!r} does not exist", details={"field": "rootfs"})
    spec = replace(req.spec, rootfs=os.path.abspath(req.rootfs))
    uid, gid = os.geteuid(), os.getegid()
    spec = _resolve_network(spec)
    if spec.cgroup_parent == "/vapp" and cgroup_parent != "/vapp":  # the spec kept the default
        spec = replace(spec, cgroup_parent=cgroup_parent)
    if uid != 0 and not spec.uid_maps and subordinate_ids:
        spec = replace(spec, uid_maps=subid_maps("/etc/subuid", uid), gid_maps=subid_maps("/etc/subgid", gid))
    overlay = req.rootfs_overlay
    cfg = specgen.build_config(spec, req.image_config, passwd=read_rootfs_file(spec.rootfs, "etc/passwd", overlay),
                               group=read_rootfs_file(spec.rootfs, "etc/group", overlay), host_uid=uid, host_gid=gid)
    if overlay is not None:
        cfg["annotations"][rootfs_mod.OVERLAY_ANNOTATION] = json.dumps(overlay)
    _join_container(cfg, req.spec.network, lookup)
    bundle = directory / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    oci_state.write_atomic(str(bundle / "config.json"), json.dumps(cfg, indent=1).encode(), 0o644)
    return str(bundle), cfg

def _resolve_network(spec: specgen.ContainerSpec) -> specgen.ContainerSpec:
    mode = spec.network
    if mode in ("host", "none", "new") or mode.startswith("/"):
        return spec
    if mode.startswith("container:"):
        return replace(spec, network="new")  # replaced by the target's paths in _join_container
    return replace(spec, network="new")  # pod, bridge, …: a new netns the network hook fills

def _join_container(cfg: dict[str, Any], mode: str, lookup: Lookup) -> None:
    if not mode.startswith("container:"):
        return
    target = lookup(mode.split(":", 1)[1])
    if not target.pid or not oci_state.process_alive(target.pid, target.pid_start):
        raise FailedPrecondition(f"network container {target.id!r} is not running")
    linux = cfg["linux"]
    for ns in linux["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/proc/{target.pid}/ns/net"
        if ns["type"] == "user":  # a netns can only be joined from its owning user namespace
            ns["path"] = f"/proc/{target.pid}/ns/user"
            linux.pop("uidMappings", None)
            linux.pop("gidMappings", None)
    cfg["mounts"] = [m for m in cfg["mounts"] if m["destination"] != "/sys"] + [
        {"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec",
                                                                               "nodev", "ro"]}]


def read_rootfs_file(rootfs: str, rel: str, overlay: dict[str, Any] | None = None) -> str:
    """A file of the container's root filesystem; with ``overlay`` (mounted only inside the
    container) looked up through its dirs, upper first, stopping at a whiteout."""
    dirs = [rootfs] if overlay is None else overlay_dirs(overlay)
    parent, name = os.path.split(rel)
    for top in dirs:
        try:
            return (Path(top) / rel).read_text(errors="replace")
        except OSError:
            if os.path.lexists(Path(top) / parent / f".wh.{name}"):
                return ""
    return ""


def overlay_dirs(overlay: dict[str, Any]) -> list[str]:
    """The dirs of an overlay mount description, in lookup order: upper, then lowers top first."""
    upper: list[str] = []
    lowers: list[str] = []
    for opt in overlay.get("options") or ():
        if opt.startswith("upperdir="):
            upper = [opt.split("=", 1)[1]]
        elif opt.startswith("lowerdir="):
            lowers = opt.split("=", 1)[1].split(":")
    return upper + lowers


def config_overlay(cfg: dict[str, Any]) -> dict[str, Any] | None:
    raw = (cfg.get("annotations") or {}).get(rootfs_mod.OVERLAY_ANNOTATION)
    return json.loads(raw) if raw else None


def subid_maps(path: str, own: int) -> tuple[specgen.IdMap, ...]:
    """``0 → own`` plus the caller's subordinate range at 1.. (empty when none is configured)."""
    import pwd

    try:
        name = pwd.getpwuid(own).pw_name
        lines = Path(path).read_text().splitlines()
    except (KeyError, OSError):
        return ()
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (name, str(own)) and shutil.which("newuidmap"):
            return (specgen.IdMap(0, own, 1), specgen.IdMap(1, int(parts[1]), int(parts[2])))
    return ()


def exec_request(row: ContainerRow, argv: list[str], *, env: list[str] | None, user: str | None,
                 workdir: str | None, cgroups: list[str]) -> dict[str, Any]:
    """What the exec helper needs: the init to join and the process as the container's config has it."""
    cfg = json.loads((Path(row.bundle) / "config.json").read_text())
    proc = cfg["process"]
    process_user = proc.get("user") or {}
    if user:
        overlay = config_overlay(cfg)
        passwd = read_rootfs_file(row.rootfs, "etc/passwd", overlay)
        group = read_rootfs_file(row.rootfs, "etc/group", overlay)
        process_user = specgen.resolve_user(user, passwd, group)
    return {"pid": row.pid, "pidStartTime": row.pid_start, "argv": list(argv),
            "env": specgen.merge_env(proc.get("env"), tuple(env or ())), "cwd": workdir or proc.get("cwd"),
            "user": process_user, "capabilities": proc.get("capabilities"),
            "noNewPrivileges": proc.get("noNewPrivileges", False), "seccomp": (cfg.get("linux") or {}).get("seccomp"),
            "cgroups": cgroups}


def info_from_row(row: ContainerRow) -> ContainerInfo:
    status = ContainerStatus(row.status) if row.status in ContainerStatus._value2member_map_ \
        else ContainerStatus.UNKNOWN
    return ContainerInfo(
        id=row.id, name=row.name, status=status, runtime=row.runtime, image=row.image, bundle=row.bundle,
        rootfs=row.rootfs, log_path=row.log_path, pid=row.pid if status != ContainerStatus.EXITED else None,
        exit_code=row.exit_code, created_at=row.created_at, started_at=row.started_at,
        finished_at=row.finished_at, network=row.network, stop_signal=row.stop_signal,
        labels=json.loads(row.labels), annotations=json.loads(row.annotations))


def signal_number(sig: int | str) -> int:
    if isinstance(sig, int):
        return sig
    text = sig.upper()
    if text.isdigit():
        return int(text)
    try:
        return int(signal.Signals[text if text.startswith("SIG") else "SIG" + text])
    except KeyError as exc:
        raise InvalidArgument(f"unknown signal {sig!r}", details={"field": "signal"}) from exc
