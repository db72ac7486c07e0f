"""The CRI gRPC door with the package's own client stubs, over a real Unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from app.api.cri.servicers import add_cri_servicers
from app.config import Settings
from app.runtime.network.cni import CniClient
from app.services.pods import PodService
from tests.cri.conftest import CniNet
from tests.cri.netutil import start_echo_in, unique_suffix
from tests.cri.streamclients import SpdyClient


@dataclass
class FakeNode:
    settings: Settings
    pods: Any = None
    containers: Any = None
    images: Any = None
    closers: list[Any] = field(default_factory=list)


@dataclass
class Cri:
    runtime: pb_grpc.RuntimeServiceStub
    images: pb_grpc.ImageServiceStub
    node: FakeNode


@pytest.fixture
async def cri(tmp_path: Path, pods: PodService) -> AsyncIterator[Cri]:
    settings = Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run")
    node = FakeNode(settings, pods=pods)
    server = grpc.aio.server()
    add_cri_servicers(server, node)
    sock = f"/tmp/vt-cri-{unique_suffix()}.sock"
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{sock}")
    yield Cri(pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel), node)
    await channel.close()
    for closer in node.closers:
        await closer()
    await server.stop(0)
    Path(sock).unlink(missing_ok=True)


def pod_config(name: str, **kw: Any) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="ns"),
                               **kw)


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def test_version_status_runtime_config(cri: Cri) -> None:
    v = await cri.runtime.Version(pb.VersionRequest())
    assert v.runtime_name == "4lock-core" and v.runtime_api_version == "v1"
    st = await cri.runtime.Status(pb.StatusRequest(verbose=True))
    cond = {c.type: c for c in st.status.conditions}
    assert cond["NetworkReady"].status is True
    assert cond["RuntimeReady"].status is False and cond["RuntimeReady"].reason  # no container service here
    assert {h.name for h in st.runtime_handlers} >= {"", "runc"}
    assert "cniConfDir" in st.info["config"]
    rc = await cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == pb.CGROUPFS


async def test_network_not_ready_without_cni_config(cri: Cri, tmp_path: Path) -> None:
    cri.node.pods.cni = CniClient(tmp_path / "empty", [Path("/usr/lib/cni")], tmp_path / "c")
    st = await cri.runtime.Status(pb.StatusRequest())
    net = next(c for c in st.status.conditions if c.type == "NetworkReady")
    assert net.status is False and net.reason == "NetworkPluginNotReady" and "CNI" in net.message


async def test_pod_lifecycle_filters_and_idempotence(cri: Cri, cni_net: CniNet) -> None:
    r = cri.runtime
    a = (await r.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(
        "a", hostname="ha", labels={"tier": "web"}, annotations={"note": "x"},
        dns_config=pb.DNSConfig(servers=["10.1.1.1"]))))).pod_sandbox_id
    host_ns = pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.POD)))
    b = (await r.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(
        "b", labels={"tier": "db"}, linux=host_ns)))).pod_sandbox_id
    st = (await r.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=a, verbose=True)))
    assert st.status.state == pb.SANDBOX_READY and st.status.metadata.name == "a"
    assert st.status.network.ip.startswith(cni_net.subnet.rsplit(".", 1)[0])
    assert st.status.labels["tier"] == "web" and st.status.annotations["note"] == "x"
    assert '"netns"' in st.info["info"]
    stb = (await r.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=b))).status
    assert stb.network.ip == "" and stb.linux.namespaces.options.network == pb.NODE
    assert stb.linux.namespaces.options.pid == pb.POD

    async def ids(**f: Any) -> set[str]:
        resp = await r.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(**f)))
        return {p.id for p in resp.items}

    assert await ids() == {a, b}
    assert await ids(label_selector={"tier": "db"}) == {b}
    assert await ids(id=a[:13]) == {a}
    await r.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=a))
    await r.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=a))
    assert await ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_NOTREADY)) == {a}
    assert await ids(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY)) == {b}
    for pod_id in (a, b, a):
        await r.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert await ids() == set()


async def test_invalid_requests_get_the_right_codes(cri: Cri) -> None:
    r = cri.runtime
    assert await code_of(r.RunPodSandbox(pb.RunPodSandboxRequest(config=pb.PodSandboxConfig()))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(r.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("h"), runtime_handler="x"))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    bad_ns = pod_config("t", linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.TARGET))))
    assert await code_of(r.RunPodSandbox(pb.RunPodSandboxRequest(config=bad_ns))) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(r.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id="f" * 64))) \
        == grpc.StatusCode.NOT_FOUND
    assert await code_of(r.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="nope"))) \
        == grpc.StatusCode.NOT_FOUND
    assert await code_of(r.PodSandboxStatus(pb.PodSandboxStatusRequest())) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(r.CheckpointContainer(pb.CheckpointContainerRequest(container_id="x"))) \
        == grpc.StatusCode.UNIMPLEMENTED
    assert await code_of(r.ContainerStatus(pb.ContainerStatusRequest(container_id="x"))) \
        == grpc.StatusCode.UNAVAILABLE  # no container service in this node
    assert await code_of(r.PortForward(pb.PortForwardRequest(pod_sandbox_id="nope"))) == grpc.StatusCode.NOT_FOUND
    assert await code_of(r.Exec(pb.ExecRequest(container_id="c", cmd=[], stdout=True))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="busybox")))) \
        == grpc.StatusCode.UNAVAILABLE
    await r.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id="nope"))  # idempotent
    # a failed request left nothing behind
    assert (await r.ListPodSandbox(pb.ListPodSandboxRequest())).items == []


async def test_duplicate_pod_name_is_already_exists(cri: Cri) -> None:
    await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("same")))
    assert await code_of(cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("same")))) \
        == grpc.StatusCode.ALREADY_EXISTS


async def test_port_forward_into_the_pod_over_spdy(cri: Cri) -> None:
    pod_id = (await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("pf")))).pod_sandbox_id
    pod = cri.node.pods.get(pod_id)
    echo = start_echo_in(pod.netns_path, 9090)
    try:
        url = (await cri.runtime.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod_id, port=[9090]))).url
        assert url.startswith("http://127.0.0.1:") and "/portforward/" in url
        client = await SpdyClient.connect(url, ["portforward.k8s.io"])
        err = client.open({"streamtype": "error", "port": "9090", "requestid": "0"}, fin=True)
        data = client.open({"streamtype": "data", "port": "9090", "requestid": "0"})
        client.send(data, b"through-the-holder", fin=True)
        assert await client.wait_fin(data) == b"echo:through-the-holder"
        assert await client.wait_fin(err) == b""
        await client.close()
    finally:
        echo.kill()
        echo.wait()


async def test_container_events_stream_sandbox_transitions(cri: Cri) -> None:
    call = cri.runtime.GetContainerEvents(pb.GetEventsRequest())
    got: list[pb.ContainerEventResponse] = []

    async def read() -> None:
        async for ev in call:
            got.append(ev)
            if len(got) == 4:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.2)
    pod_id = (await cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("ev")))).pod_sandbox_id
    await cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    await asyncio.wait_for(reader, 5)
    call.cancel()
    assert [e.container_event_type for e in got] == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                                                      pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]
    assert all(e.container_id == pod_id for e in got)
