"""Pure translations for containers: CRI ``ContainerConfig`` → the runtime's ``ContainerSpec``, and back.

CRI containers carry their pod and CRI identity in reserved annotations
(``io.4lock.cri.*``) on the container service's record; they are stripped from
what CRI clients see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from app.errors import InvalidArgument
from app.runtime.oci.spec import ContainerSpec, MountSpec, Resources
from app.services.container_types import ContainerInfo, ContainerStatus
from app.services.pod_types import Pod

PREFIX = "io.4lock.cri."
POD_KEY, NAME_KEY, ATTEMPT_KEY = PREFIX + "pod-id", PREFIX + "name", PREFIX + "attempt"
IMAGE_KEY, IMAGE_REF_KEY, LOG_KEY = PREFIX + "image", PREFIX + "image-ref", PREFIX + "log-path"
MOUNTS_KEY = PREFIX + "mounts"
INFRA_KEY = PREFIX + "infra"  # the pod's sandbox-image container: not a CRI container of its own
_PROPAGATION = {pb.PROPAGATION_PRIVATE: "rprivate", pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
                pb.PROPAGATION_BIDIRECTIONAL: "rshared"}
_STATE = {ContainerStatus.CREATED: pb.CONTAINER_CREATED, ContainerStatus.RUNNING: pb.CONTAINER_RUNNING,
          ContainerStatus.EXITED: pb.CONTAINER_EXITED, ContainerStatus.UNKNOWN: pb.CONTAINER_UNKNOWN}


def validate(request: pb.CreateContainerRequest) -> None:
    if not request.pod_sandbox_id:
        raise InvalidArgument("pod_sandbox_id must not be empty", details={"field": "pod_sandbox_id"})
    cfg = request.config
    if not cfg.HasField("metadata") or not cfg.metadata.name:
        raise InvalidArgument("container config must include metadata with a name", details={"field": "metadata"})
    if not cfg.image.image:
        raise InvalidArgument("container config must name an image", details={"field": "image"})


def _cap(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else "CAP_" + name  # "ALL" → "CAP_ALL", as the spec builder wants


def container_spec(cid: str, cfg: pb.ContainerConfig, pod: Pod, files: dict[str, Path],
                   image_id: str, image_ref: str, log_path: str) -> ContainerSpec:
    lx = cfg.linux
    sc = lx.security_context
    res = lx.resources
    user = None
    if sc.HasField("run_as_user"):
        user = str(sc.run_as_user.value)
    elif sc.run_as_username:
        user = sc.run_as_username
    if user is not None and sc.HasField("run_as_group"):
        user += f":{sc.run_as_group.value}"
    mounts = tuple(
        MountSpec(destination=m.container_path, source=m.host_path, type="bind", readonly=m.readonly,
                  options=(_PROPAGATION.get(m.propagation, "rprivate"),))
        for m in cfg.mounts
    )
    etc = {} if any(m.container_path == "/etc/hosts" for m in cfg.mounts) else {"/etc/hosts": str(files["hosts"])}
    if not any(m.container_path == "/etc/resolv.conf" for m in cfg.mounts):
        etc["/etc/resolv.conf"] = str(files["resolv.conf"])
    etc["/etc/hostname"] = str(files["hostname"])
    annotations = dict(cfg.annotations)
    annotations.update({POD_KEY: pod.id, NAME_KEY: cfg.metadata.name, ATTEMPT_KEY: str(cfg.metadata.attempt),
                        IMAGE_KEY: cfg.image.image, IMAGE_REF_KEY: image_ref, LOG_KEY: log_path,
                        MOUNTS_KEY: json.dumps([[m.container_path, m.host_path, m.readonly, m.propagation]
                                                for m in cfg.mounts])})
    return ContainerSpec(
        id=cid,
        name=f"{cfg.metadata.name}_{pod.spec.name}_{pod.spec.namespace}_{pod.spec.uid}_{cfg.metadata.attempt}",
        command=tuple(cfg.command) or None, args=tuple(cfg.args) or None,
        env=tuple(f"{kv.key}={kv.value}" for kv in cfg.envs), user=user, workdir=cfg.working_dir or None,
        hostname=None if pod.spec.host_network else (pod.spec.hostname or pod.spec.name),
        mounts=mounts,
        resources=Resources(
            memory_bytes=res.memory_limit_in_bytes or None, memory_swap_bytes=res.memory_swap_limit_in_bytes or None,
            cpu_quota=res.cpu_quota or None, cpu_period=res.cpu_period or None, cpu_shares=res.cpu_shares or None),
        privileged=sc.privileged, network="host" if pod.spec.host_network else (pod.netns_path or "none"),
        readonly_rootfs=sc.readonly_rootfs, tty=cfg.tty, stdin=cfg.stdin, stdin_once=cfg.stdin_once,
        cap_add=tuple(_cap(c) for c in sc.capabilities.add_capabilities),
        cap_drop=tuple(_cap(c) for c in sc.capabilities.drop_capabilities),
        annotations=annotations, labels=dict(cfg.labels), etc_files=etc,
        sysctl=dict(pod.spec.sysctls), oom_score_adj=res.oom_score_adj or None,
    )


def visible(d: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in d.items() if not k.startswith(PREFIX)}


def is_cri(info: ContainerInfo) -> bool:
    return POD_KEY in info.annotations and INFRA_KEY not in info.annotations


def _meta(info: ContainerInfo) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=info.annotations.get(NAME_KEY, info.name),
                                attempt=int(info.annotations.get(ATTEMPT_KEY, "0") or 0))


def _ns(t: float | None) -> int:
    return int(t * 1e9) if t else 0


def container(info: ContainerInfo) -> pb.Container:
    a = info.annotations
    return pb.Container(
        id=info.id, pod_sandbox_id=a.get(POD_KEY, ""), metadata=_meta(info),
        image=pb.ImageSpec(image=a.get(IMAGE_KEY, info.image)), image_ref=a.get(IMAGE_REF_KEY, info.image),
        image_id=a.get(IMAGE_REF_KEY, info.image), state=_STATE[info.status], created_at=_ns(info.created_at),
        labels=info.labels, annotations=visible(a),
    )


def mounts_of(info: ContainerInfo) -> list[pb.Mount]:
    try:
        items = json.loads(info.annotations.get(MOUNTS_KEY, "[]"))
        return [pb.Mount(container_path=c, host_path=h, readonly=bool(r), propagation=int(p))  # type: ignore[arg-type]
                for c, h, r, p in items]
    except (ValueError, TypeError):
        return []


def container_status(info: ContainerInfo) -> pb.ContainerStatus:
    a = info.annotations
    reason = ""
    if info.status is ContainerStatus.EXITED:
        reason = "Completed" if info.exit_code == 0 else "Error"
    return pb.ContainerStatus(
        id=info.id, metadata=_meta(info), state=_STATE[info.status], created_at=_ns(info.created_at),
        started_at=_ns(info.started_at), finished_at=_ns(info.finished_at),
        exit_code=info.exit_code or 0, image=pb.ImageSpec(image=a.get(IMAGE_KEY, info.image)),
        image_ref=a.get(IMAGE_REF_KEY, info.image), image_id=a.get(IMAGE_REF_KEY, info.image),
        reason=reason, labels=info.labels, annotations=visible(a), mounts=mounts_of(info),
        log_path=a.get(LOG_KEY, ""),
    )


def matches(info: ContainerInfo, f: Any) -> bool:
    """A ``ContainerFilter`` / ``ContainerStatsFilter`` test. Pure."""
    if f.id and not info.id.startswith(f.id):
        return False
    if f.pod_sandbox_id and not info.annotations.get(POD_KEY, "").startswith(f.pod_sandbox_id):
        return False
    # stats filters have no state field
    if hasattr(f, "state") and f.HasField("state") and _STATE[info.status] != f.state.state:
        return False
    return all(info.labels.get(k) == v for k, v in f.label_selector.items())


def resources(res: Any) -> dict[str, Any]:
    """CRI ``LinuxContainerResources`` → the OCI ``linux.resources`` subset the container service applies."""
    memory = {k: v for k, v in (("limit", res.memory_limit_in_bytes), ("swap", res.memory_swap_limit_in_bytes)) if v}
    cpu = {k: v for k, v in (("shares", res.cpu_shares), ("period", res.cpu_period), ("quota", res.cpu_quota)) if v}
    return {"memory": memory, "cpu": cpu}
