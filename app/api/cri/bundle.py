"""OCI bundles for CRI containers that join their pod's IPC, UTS and PID namespaces.

The container service builds bundles for a new container with its own namespaces
(plus a netns path). A pod's containers must also share the pod's IPC and UTS
namespaces (and PID when the pod asks for it), held by the pod's holder process. So,
as root, the CRI door renders the same config (:func:`app.runtime.oci.spec.build_config`)
and points those namespaces at ``/proc/<holder>/ns/*``; the container service then
runs that bundle as is. Pure apart from reading the image's passwd/group and writing
``<dir>/config.json``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.errors import InvalidArgument
from app.runtime.oci import spec as specgen

JOINED = ("ipc", "uts", "pid")


def _read(rootfs: str, rel: str) -> str:
    try:
        return (Path(rootfs) / rel).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def pod_config(spec: specgen.ContainerSpec, image_config: dict[str, Any] | None, rootfs: str,
               ns_paths: dict[str, str]) -> dict[str, Any]:
    """The OCI config with the pod's namespaces joined (``ns_paths``: kind → /proc/<pid>/ns/<kind>)."""
    spec = replace(spec, rootfs=os.path.abspath(rootfs))
    cfg = specgen.build_config(spec, image_config, passwd=_read(rootfs, "etc/passwd"),
                               group=_read(rootfs, "etc/group"))
    for ns in cfg["linux"]["namespaces"]:
        if ns["type"] in JOINED and ns["type"] in ns_paths:
            ns["path"] = ns_paths[ns["type"]]
    if "uts" in ns_paths:
        cfg.pop("hostname", None)  # the pod's UTS namespace already has it
    return cfg


def apply_security(cfg: dict[str, Any], sc: Any) -> dict[str, Any]:
    """What CRI's security context says beyond ``ContainerSpec``: no_new_privs, supplemental groups,
    masked and read-only paths (kubelet sends the defaults; a privileged container gets none).
    Capabilities are not here: ``ContainerSpec.cap_add/cap_drop`` already went through
    :func:`app.runtime.oci.spec.capabilities`, containerd's rules, the one implementation."""
    proc = cfg.setdefault("process", {})
    if sc.no_new_privs:
        proc["noNewPrivileges"] = True
    if sc.supplemental_groups:
        user = proc.setdefault("user", {})
        gids = list(user.get("additionalGids") or [])
        user["additionalGids"] = gids + [int(g) for g in sc.supplemental_groups if int(g) not in gids]
    linux = cfg.setdefault("linux", {})
    if sc.privileged:
        linux.pop("maskedPaths", None)
        linux.pop("readonlyPaths", None)
    else:
        if sc.masked_paths:
            linux["maskedPaths"] = list(sc.masked_paths)
        if sc.readonly_paths:
            linux["readonlyPaths"] = list(sc.readonly_paths)
    return cfg


def apply_devices(cfg: dict[str, Any], devices: Any) -> dict[str, Any]:
    """CRI ``devices`` (host node → container path, cgroup permissions ``rwm``) as OCI devices."""
    linux = cfg.setdefault("linux", {})
    nodes = linux.setdefault("devices", [])
    rules = linux.setdefault("resources", {}).setdefault("devices", [])
    for d in devices:
        try:
            st = os.stat(d.host_path)
        except OSError as exc:
            raise InvalidArgument(f"device {d.host_path!r}: {exc.strerror}", details={"field": "devices"}) from exc
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"{d.host_path!r} is not a device node", details={"field": "devices"})
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append({"path": d.container_path or d.host_path, "type": kind, "major": major, "minor": minor,
                      "fileMode": stat.S_IMODE(st.st_mode), "uid": 0, "gid": 0})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                      "access": d.permissions or "rwm"})
    return cfg


def write_bundle(directory: Path, cfg: dict[str, Any]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, directory / "config.json")
    return str(directory)
