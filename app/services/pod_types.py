"""Plain values of the pod service: what a pod asks for and what it is (no I/O, no wire types)."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from app.errors import InvalidArgument


class PodState(enum.StrEnum):
    READY = "ready"
    NOTREADY = "notready"


class NsMode(enum.StrEnum):
    """Namespace sharing, as CRI's NamespaceMode: POD (shared in the pod), CONTAINER, NODE (host)."""

    POD = "pod"
    CONTAINER = "container"
    NODE = "node"


@dataclass(frozen=True)
class PodPort:
    container_port: int
    host_port: int = 0
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class PodSpec:
    """A pod sandbox request (CRI ``PodSandboxConfig`` without the wire)."""

    name: str
    uid: str
    namespace: str
    attempt: int = 0
    hostname: str = ""
    log_directory: str = ""
    dns_servers: tuple[str, ...] = ()
    dns_searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    dns_set: bool = False  # dns_config given at all (else the host's resolv.conf is used)
    ports: tuple[PodPort, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    network: NsMode = NsMode.POD
    pid: NsMode = NsMode.CONTAINER
    ipc: NsMode = NsMode.POD
    cgroup_parent: str = ""
    runtime_handler: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("name", "uid", "namespace"):
            if not getattr(self, key):
                raise InvalidArgument(f"pod sandbox metadata.{key} is required", details={"field": key})
        for p in self.ports:
            if not 0 < p.container_port < 65536 or not 0 <= p.host_port < 65536:
                raise InvalidArgument(f"bad port mapping {p}")

    @property
    def name_key(self) -> str:
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"

    @property
    def host_network(self) -> bool:
        return self.network is NsMode.NODE

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PodSpec:
        d: dict[str, Any] = json.loads(text)
        d["ports"] = tuple(PodPort(**p) for p in d.get("ports", ()))
        for key in ("dns_servers", "dns_searches", "dns_options"):
            d[key] = tuple(d.get(key, ()))
        for key in ("network", "pid", "ipc"):
            d[key] = NsMode(d[key])
        return cls(**d)


@dataclass
class Pod:
    """A pod sandbox as the service knows it (mirrors a ``cri_pod`` row)."""

    id: str
    spec: PodSpec
    state: PodState
    created_ns: int
    network: str = "cni"  # cni | host | runtime (rootless pod network) | none
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    holder_pid: int = 0
    holder_start: int = 0
    netns_path: str = ""

    def namespace_paths(self) -> dict[str, str]:
        """``/proc/<holder>/ns/*`` of the namespaces containers of this pod join (empty when stopped)."""
        if not self.holder_pid or self.state is not PodState.READY:
            return {}
        base = f"/proc/{self.holder_pid}/ns"
        out = {"uts": f"{base}/uts"} if not self.spec.host_network else {}
        if not self.spec.host_network:
            out["network"] = f"{base}/net"
        if self.spec.ipc is NsMode.POD:
            out["ipc"] = f"{base}/ipc"
        if self.spec.pid is NsMode.POD:
            out["pid"] = f"{base}/pid"
        return out
