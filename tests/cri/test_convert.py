"""Pure parts of the CRI door: proto translations, filters, capability rules, log records."""

from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from app.api.cri import container_convert as cc
from app.api.cri import convert
from app.api.cri.attach import parse_record
from app.api.cri.index import matches
from app.errors import InvalidArgument
from app.runtime.kernel.caps import CAP_NAMES, DEFAULT_CAPS
from app.runtime.kernel.cgroups import process_paths as cgroup_paths
from app.runtime.oci.spec import capabilities
from app.services.pod_types import NsMode, Pod, PodSpec, PodState


def test_pod_spec_translation() -> None:
    cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="n", uid="u", namespace="ns", attempt=2), hostname="h",
        log_directory="/var/log/pods/x", dns_config=pb.DNSConfig(servers=["1.1.1.1"], searches=["a"],
                                                                  options=["ndots:5"]),
        port_mappings=[pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
                       pb.PortMapping(container_port=80)],
        labels={"a": "b"}, annotations={"c": "d"},
        linux=pb.LinuxPodSandboxConfig(cgroup_parent="/kubepods", sysctls={"net.ipv4.ip_forward": "1"},
                                       security_context=pb.LinuxSandboxSecurityContext(
                                           namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER,
                                                                                ipc=pb.NODE))))
    spec = convert.pod_spec(cfg, "runc")
    assert (spec.name, spec.uid, spec.namespace, spec.attempt) == ("n", "u", "ns", 2)
    assert spec.dns_servers == ("1.1.1.1",) and spec.dns_set and spec.dns_options == ("ndots:5",)
    assert [(p.protocol, p.container_port, p.host_port) for p in spec.ports] == [("udp", 53, 5353), ("tcp", 80, 0)]
    assert (spec.network, spec.pid, spec.ipc) == (NsMode.NODE, NsMode.CONTAINER, NsMode.NODE)
    assert spec.runtime_handler == "runc" and spec.sysctls == {"net.ipv4.ip_forward": "1"}
    assert PodSpec.from_json(spec.to_json()) == spec
    status = convert.sandbox_status(Pod("id", spec, PodState.READY, 5, ip="10.0.0.2", additional_ips=["fd00::2"]))
    assert status.network.ip == "10.0.0.2" and status.network.additional_ips[0].ip == "fd00::2"
    assert status.linux.namespaces.options.network == pb.NODE and status.created_at == 5


@pytest.mark.parametrize("cfg", [
    pb.PodSandboxConfig(),
    pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(uid="u", namespace="n")),
    pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x", uid="u", namespace="n"),
                        port_mappings=[pb.PortMapping(container_port=0)]),
    pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x", uid="u", namespace="n"),
                        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                            namespace_options=pb.NamespaceOption(ipc=pb.TARGET)))),
])
def test_bad_pod_configs(cfg: pb.PodSandboxConfig) -> None:
    with pytest.raises(InvalidArgument):
        convert.pod_spec(cfg)


def _pod() -> Pod:
    spec = PodSpec(name="p", uid="u", namespace="n", hostname="ph")
    return Pod("podid", spec, PodState.READY, 1, netns_path="/proc/9/ns/net", holder_pid=9)


def test_container_spec_translation() -> None:
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=0), run_as_group=pb.Int64Value(value=5),
                                          capabilities=pb.Capability(add_capabilities=["net_admin"],
                                                                     drop_capabilities=["ALL"]),
                                          readonly_rootfs=True, privileged=False)
    cfg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c", attempt=3), image=pb.ImageSpec(image="busybox"),
        command=["sh"], args=["-c", "true"], working_dir="/w", envs=[pb.KeyValue(key="A", value="1")],
        mounts=[pb.Mount(container_path="/etc/hosts", host_path="/h", propagation=pb.PROPAGATION_BIDIRECTIONAL)],
        labels={"l": "v"}, annotations={"x": "y"}, tty=True,
        linux=pb.LinuxContainerConfig(security_context=sc, resources=pb.LinuxContainerResources(
            cpu_quota=5000, cpu_period=10000, memory_limit_in_bytes=1 << 20)))
    files = {"hosts": Path("/p/hosts"), "resolv.conf": Path("/p/resolv"), "hostname": Path("/p/hostname")}
    spec = cc.container_spec("cid", cfg, _pod(), files, "sha256:i", "sha256:i", "/logs/c.log")
    assert spec.user == "0:5" and spec.command == ("sh",) and spec.args == ("-c", "true")
    assert spec.env == ("A=1",) and spec.workdir == "/w" and spec.network == "/proc/9/ns/net"
    assert spec.cap_add == ("CAP_NET_ADMIN",) and spec.cap_drop == ("CAP_ALL",)
    assert spec.mounts[0].options == ("rshared",)
    assert "/etc/hosts" not in spec.etc_files and spec.etc_files["/etc/resolv.conf"] == "/p/resolv"
    assert spec.resources.memory_bytes == 1 << 20 and spec.resources.cpu_quota == 5000
    assert spec.name == "c_p_n_u_3" and spec.hostname == "ph" and spec.readonly_rootfs and spec.tty
    assert spec.annotations[cc.POD_KEY] == "podid" and cc.visible(spec.annotations) == {"x": "y"}


def test_container_filter_matching() -> None:
    c = pb.Container(id="abcdef", pod_sandbox_id="pod123", state=pb.CONTAINER_RUNNING, labels={"a": "1", "b": "2"})
    assert matches(c, pb.ContainerFilter())
    assert matches(c, pb.ContainerFilter(id="abc", pod_sandbox_id="pod", label_selector={"a": "1"}))
    assert matches(c, pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)))
    assert not matches(c, pb.ContainerFilter(state=pb.ContainerStateValue(state=pb.CONTAINER_CREATED)))
    assert not matches(c, pb.ContainerFilter(label_selector={"a": "2"}))
    assert not matches(c, pb.ContainerFilter(pod_sandbox_id="other"))


def test_capability_rules() -> None:
    """One implementation (the spec builder's) with containerd's rules, CRI names as kubelet sends them."""
    def caps(add: list[str], drop: list[str], privileged: bool = False) -> list[str]:
        return capabilities(privileged, tuple(add), tuple(drop))

    assert caps([], ["ALL"]) == []
    assert caps(["NET_ADMIN"], ["ALL"]) == ["CAP_NET_ADMIN"]  # add applies after drop ALL
    assert caps(["NET_BIND_SERVICE", "sys_time"], ["all"]) == ["CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]
    assert set(caps([], [])) == set(DEFAULT_CAPS)
    assert "CAP_CHOWN" not in caps([], ["chown"])
    assert "CAP_SYS_ADMIN" in caps(["ALL"], []) and "CAP_SYS_ADMIN" in caps([], [], privileged=True)
    assert caps(["ALL"], ["CHOWN"]) == [c for c in CAP_NAMES if c != "CAP_CHOWN"]  # ALL, then the drops
    assert "CAP_NET_RAW" not in caps(["NET_RAW"], ["NET_RAW"])  # individual drops win, as containerd
    assert caps(["ALL"], ["ALL"]) == []
    with pytest.raises(InvalidArgument, match="unknown capability"):
        caps(["CAP_FLY"], [])


def test_log_records() -> None:
    assert parse_record(b"2024-01-01T00:00:00.000000000Z stdout F hello world") == ("stdout", b"hello world\n")
    assert parse_record(b"2024-01-01T00:00:00.000000000Z stderr P part") == ("stderr", b"part")
    assert parse_record(b"2024-01-01T00:00:00.000000000Z stdout F ") == ("stdout", b"\n")
    assert parse_record(b"garbage") is None


def test_cgroup_paths(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("5:memory:/vapp/c1\n2:cpu,cpuacct:/vapp/c1\n0::/\n")
    assert cgroup_paths(42, tmp_path) == {"memory": "/vapp/c1", "cpu": "/vapp/c1", "cpuacct": "/vapp/c1"}
    assert cgroup_paths(43, tmp_path) == {}


def test_resources_keeps_only_what_is_set() -> None:
    from cri_api.v1 import api_pb2 as pb

    from app.api.cri.container_convert import resources

    res = pb.LinuxContainerResources(memory_limit_in_bytes=64 << 20, cpu_quota=50000, cpu_period=100000)
    assert resources(res) == {"memory": {"limit": 64 << 20}, "cpu": {"period": 100000, "quota": 50000}}
    assert resources(pb.LinuxContainerResources()) == {"memory": {}, "cpu": {}}
