"""Pure translations between CRI v1 messages and the pod service's values (no I/O)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cri_api.v1 import api_pb2 as pb

from app.errors import InvalidArgument
from app.services.pod_types import NsMode, Pod, PodPort, PodSpec, PodState

_NS_MODE = {pb.POD: NsMode.POD, pb.CONTAINER: NsMode.CONTAINER, pb.NODE: NsMode.NODE}
_NS_BACK = {v: k for k, v in _NS_MODE.items()}
_PROTO = {pb.TCP: "tcp", pb.UDP: "udp", pb.SCTP: "sctp"}
_STATE = {PodState.READY: pb.SANDBOX_READY, PodState.NOTREADY: pb.SANDBOX_NOTREADY}
_STATE_BACK = {v: k for k, v in _STATE.items()}


def _ns(mode: int, field: str) -> NsMode:
    if mode == pb.TARGET:
        raise InvalidArgument(f"namespace mode TARGET is not valid for a pod sandbox's {field}")
    if mode not in _NS_MODE:
        raise InvalidArgument(f"unknown namespace mode {mode} for {field}")
    return _NS_MODE[mode]  # type: ignore[index]


def pod_spec(config: pb.PodSandboxConfig, runtime_handler: str = "") -> PodSpec:
    """``RunPodSandboxRequest.config`` → :class:`PodSpec` (``InvalidArgument`` on bad input)."""
    if not config.HasField("metadata"):
        raise InvalidArgument("pod sandbox config must include metadata", details={"field": "metadata"})
    md = config.metadata
    sc = config.linux.security_context
    opts = sc.namespace_options
    ports = tuple(
        PodPort(p.container_port, max(p.host_port, 0), _PROTO.get(p.protocol, "tcp"), p.host_ip)
        for p in config.port_mappings
    )
    dns = config.dns_config
    return PodSpec(
        name=md.name, uid=md.uid, namespace=md.namespace, attempt=md.attempt,
        hostname=config.hostname, log_directory=config.log_directory,
        dns_servers=tuple(dns.servers), dns_searches=tuple(dns.searches), dns_options=tuple(dns.options),
        dns_set=config.HasField("dns_config"), ports=ports,
        labels=dict(config.labels), annotations=dict(config.annotations),
        network=_ns(opts.network, "network"), pid=_ns(opts.pid, "pid"), ipc=_ns(opts.ipc, "ipc"),
        cgroup_parent=config.linux.cgroup_parent, runtime_handler=runtime_handler,
        sysctls=dict(config.linux.sysctls),
    )


def metadata(spec: PodSpec) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=spec.name, uid=spec.uid, namespace=spec.namespace, attempt=spec.attempt)


def sandbox(pod: Pod) -> pb.PodSandbox:
    return pb.PodSandbox(
        id=pod.id, metadata=metadata(pod.spec), state=_STATE[pod.state], created_at=pod.created_ns,
        labels=pod.spec.labels, annotations=pod.spec.annotations, runtime_handler=pod.spec.runtime_handler,
    )


def sandbox_status(pod: Pod) -> pb.PodSandboxStatus:
    s = pod.spec
    network = pb.PodSandboxNetworkStatus(
        ip=pod.ip, additional_ips=[pb.PodIP(ip=ip) for ip in pod.additional_ips])
    ns = pb.NamespaceOption(network=_NS_BACK[s.network], pid=_NS_BACK[s.pid], ipc=_NS_BACK[s.ipc])
    return pb.PodSandboxStatus(
        id=pod.id, metadata=metadata(s), state=_STATE[pod.state], created_at=pod.created_ns,
        network=network, linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=ns)),
        labels=s.labels, annotations=s.annotations, runtime_handler=s.runtime_handler,
    )


def sandbox_info(pod: Pod, cni_result: Mapping[str, Any] | None) -> dict[str, str]:
    """``verbose`` info: one JSON document under "info", as containerd does."""
    doc = {
        "pid": pod.holder_pid, "netns": pod.netns_path, "network": pod.network,
        "namespaces": pod.namespace_paths(), "cniResult": cni_result,
        "config": json.loads(pod.spec.to_json()),
    }
    return {"info": json.dumps(doc)}


def pod_state_filter(f: pb.PodSandboxFilter) -> PodState | None:
    return _STATE_BACK.get(f.state.state) if f.HasField("state") else None
