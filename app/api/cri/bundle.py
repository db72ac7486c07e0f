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
from dataclasses import replace
from pathlib import Path
from typing import Any

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


def write_bundle(directory: Path, cfg: dict[str, Any]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(cfg, indent=1))
    os.replace(tmp, directory / "config.json")
    return str(directory)
