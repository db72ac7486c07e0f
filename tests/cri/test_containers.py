"""Full CRI pod + container lifecycle: busybox from the shared registry, real runtime, real CNI."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from app.api.cri.servicers import add_cri_servicers
from app.config import RuntimeSettings, Settings
from app.content.store import LocalContentStore
from app.oci.manifest import Platform
from app.runtime.forkserver import start_forkserver
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.snapshots.layers import LayerSnapshots
from app.runtime.snapshots.overlay import OverlaySnapshotter
from app.services.containers import ContainerService
from app.services.images import ImageService
from app.services.pods import PodService
from app.state.db import Database
from tests.cri.test_grpc import FakeNode, code_of, pod_config


@pytest.fixture
async def stack(tmp_path: Path, db: Database, pods: PodService, registry: Any) -> AsyncIterator[Any]:
    store = LocalContentStore(tmp_path / "state" / "content")  # the daemon's layout (ImageFsInfo reads it)
    layers = LayerSnapshots(tmp_path / "state" / "snapshots")
    fetcher = RegistryFetcher(store, registry.url)
    puller = Puller(fetcher, store, layers, LayerUnpacker.for_this_process(), platform=Platform.host())
    images = ImageService(db, puller, layers, store)
    forkserver = start_forkserver()
    containers = ContainerService(db, forkserver, state_dir=tmp_path / "state",
                                  run_dir=Path(f"/tmp/vcr-{uuid.uuid4().hex[:8]}"),
                                  settings=RuntimeSettings(stop_grace_seconds=2.0))
    node = FakeNode(Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run"), pods=pods,
                    containers=containers, images=images)
    node.snapshotter = OverlaySnapshotter(layers, tmp_path / "rootfs")  # type: ignore[attr-defined]
    server = grpc.aio.server()
    node.servicers = add_cri_servicers(server, node)  # type: ignore[attr-defined]
    sock = f"/tmp/vt-cri-{uuid.uuid4().hex[:8]}.sock"
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix:{sock}")
    rt, im = pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)
    yield rt, im, node, tmp_path
    for c in (await rt.ListContainers(pb.ListContainersRequest())).containers:
        await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id))
    for p in (await rt.ListPodSandbox(pb.ListPodSandboxRequest())).items:
        await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=p.id))
    await channel.close()
    for closer in node.closers:
        await closer()
    await server.stop(0)
    await containers.close()
    forkserver.close()
    await fetcher.aclose()
    Path(sock).unlink(missing_ok=True)


async def test_full_lifecycle_with_logs_exec_and_filters(stack: Any, test_images: Any) -> None:
    rt, im, _node, tmp = stack
    ref = test_images.busybox.ref
    image_ref = (await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))).image_ref
    status = await im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    assert status.image.id == image_ref and ref in status.image.repo_tags
    assert (await im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="nope:1")))).HasField("image") \
        is False
    fs = await im.ImageFsInfo(pb.ImageFsInfoRequest())
    assert sum(u.used_bytes.value for u in fs.image_filesystems) > 1_000_000  # busybox blob + unpacked layer
    assert all(u.fs_id.mountpoint for u in fs.image_filesystems) and fs.container_filesystems
    logs = tmp / "podlogs"
    data = tmp / "hostdata"
    data.mkdir()
    (data / "greeting").write_text("from the host\n")
    config = pod_config("life", hostname="life-host", log_directory=str(logs))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=ref),
                             command=["sh", "-c", "echo hello-cri; echo err-line >&2; exec sleep 1000"],
                             envs=[pb.KeyValue(key="FOO", value="bar")], labels={"role": "main"},
                             mounts=[pb.Mount(container_path="/data", host_path=str(data), readonly=True)],
                             log_path="main/0.log", linux=pb.LinuxContainerConfig(
                                 resources=pb.LinuxContainerResources(memory_limit_in_bytes=256 << 20)))
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg,
                                                              sandbox_config=config))).container_id
    st = (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status
    assert st.state == pb.CONTAINER_CREATED and st.image_ref == image_ref and st.metadata.name == "main"
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    out = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo $FOO; hostname"],
                                               timeout=10))
    assert out.exit_code == 0 and out.stdout.split() == [b"bar", b"life-host"]
    assert (await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "exit 4"]))).exit_code == 4
    out = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "cat /data/greeting; touch /data/x"]))
    assert out.stdout == b"from the host\n" and out.exit_code != 0  # read-only bind mount
    full = await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True))
    assert [(m.container_path, m.host_path, m.readonly) for m in full.status.mounts] == [("/data", str(data), True)]
    assert json.loads(full.info["info"])["sandboxID"] == pod_id
    ip = (await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status.network.ip
    out = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["ip", "-4", "-o", "addr", "show", "eth0"]))
    assert ip and ip.encode() in out.stdout  # the container lives in the pod's network namespace

    cstats = (await rt.ContainerStats(pb.ContainerStatsRequest(container_id=cid))).stats
    assert cstats.attributes.id == cid and cstats.cpu.timestamp > 0
    assert cstats.memory.usage_bytes.value > 0  # its own memory cgroup (limits asked); cpuacct may be shared
    pstats = (await rt.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id))).stats
    assert [c.attributes.id for c in pstats.linux.containers] == [cid]
    listed_stats = (await rt.ListContainerStats(pb.ListContainerStatsRequest(
        filter=pb.ContainerStatsFilter(pod_sandbox_id=pod_id)))).stats
    assert [c.attributes.id for c in listed_stats] == [cid]

    # exec over the streaming server (WebSocket v5)
    url = (await rt.Exec(pb.ExecRequest(container_id=cid, cmd=["sh", "-c", "cat; exit 3"], stdin=True,
                                        stdout=True, stderr=True))).url
    got: dict[int, bytes] = {}
    async with ws_connect("ws://" + url.removeprefix("http://"), subprotocols=[Subprotocol("v5.channel.k8s.io")]) as ws:
        await ws.send(b"\x00in-container")
        await ws.send(b"\xff\x00")
        async for msg in ws:
            assert isinstance(msg, bytes)
            got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    assert got[1] == b"in-container"
    assert json.loads(got[3])["details"]["causes"][0]["message"] == "3"

    listed = (await rt.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        pod_sandbox_id=pod_id, label_selector={"role": "main"})))).containers
    assert [c.id for c in listed] == [cid] and listed[0].labels == {"role": "main"}
    running = pb.ContainerStateValue(state=pb.CONTAINER_RUNNING)
    assert len((await rt.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(state=running)))).containers) == 1
    assert (await rt.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id="0" * 64)))).containers == []

    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))  # idempotent
    st = (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status
    assert st.state == pb.CONTAINER_EXITED and st.finished_at > st.started_at > 0
    assert st.log_path == str(logs / "main/0.log")
    lines = (logs / "main/0.log").read_text().splitlines()
    parsed = [ln.split(" ", 3) for ln in lines]
    assert ["stdout", "F", "hello-cri"] in [p[1:] for p in parsed]
    assert ["stderr", "F", "err-line"] in [p[1:] for p in parsed]
    assert all(p[0].endswith("Z") and "T" in p[0] for p in parsed)

    await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))  # idempotent
    assert await code_of(rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))) \
        == grpc.StatusCode.NOT_FOUND
    await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    other = ref.rsplit(":", 1)[0] + ":second-tag"
    _node.images.tag(ref, other)
    listed_img = (await im.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=other)))))
    assert [i.id for i in listed_img.images] == [image_ref] and sorted(listed_img.images[0].repo_tags) == \
        sorted([ref, other])
    await im.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=other)))  # one tag takes the image
    assert (await im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))).HasField("image") is False
    await im.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=ref)))  # idempotent
    assert (await im.ListImages(pb.ListImagesRequest())).images == []


async def test_stop_pod_stops_its_containers_and_bad_requests(stack: Any, test_images: Any) -> None:
    rt, im, _node, _tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("stopper")))).pod_sandbox_id
    made = _tmp / "made-by-cri"
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="s"), image=pb.ImageSpec(image=ref),
                             command=["sleep", "1000"], mounts=[pb.Mount(container_path="/m", host_path=str(made))])
    assert await code_of(rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id,
                                                                      config=pb.ContainerConfig()))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    bad_image = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="b"), image=pb.ImageSpec(image="no/such:img"))
    assert await code_of(rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=bad_image))) \
        == grpc.StatusCode.NOT_FOUND
    assert await code_of(rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id="0" * 64, config=cfg))) \
        == grpc.StatusCode.NOT_FOUND
    assert await code_of(im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="::bad ref::")))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    relative = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="r"), image=pb.ImageSpec(image=ref),
                                  mounts=[pb.Mount(container_path="/x", host_path="relative/path")])
    assert await code_of(rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=relative))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    assert made.is_dir()  # a missing bind source is created, as containerd does
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    assert await code_of(rt.StartContainer(pb.StartContainerRequest(container_id=cid))) \
        == grpc.StatusCode.FAILED_PRECONDITION
    # a container that exits on its own shows up EXITED in the (indexed) list without a CRI call
    quick = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="q"), image=pb.ImageSpec(image=ref),
                               command=["sh", "-c", "exit 7"])
    qid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=quick))).container_id
    await rt.ListContainers(pb.ListContainersRequest())  # index built before the exit happens
    await rt.StartContainer(pb.StartContainerRequest(container_id=qid))
    only_q = pb.ListContainersRequest(filter=pb.ContainerFilter(id=qid))
    for _ in range(100):
        listed = (await rt.ListContainers(only_q)).containers
        if listed[0].state == pb.CONTAINER_EXITED:
            break
        await asyncio.sleep(0.05)
    assert listed[0].state == pb.CONTAINER_EXITED
    assert (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=qid))).status.exit_code == 7
    unfiltered = (await rt.ListContainers(pb.ListContainersRequest())).containers
    assert {c.id: c.state for c in unfiltered}[qid] == pb.CONTAINER_EXITED
    assert await code_of(rt.ExecSync(pb.ExecSyncRequest(container_id=qid, cmd=["true"]))) \
        == grpc.StatusCode.FAILED_PRECONDITION  # not running
    assert await code_of(rt.Exec(pb.ExecRequest(container_id=qid, cmd=["true"], stdout=True))) \
        == grpc.StatusCode.FAILED_PRECONDITION
    t0 = asyncio.get_running_loop().time()
    assert await code_of(rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sleep", "30"], timeout=1))) \
        == grpc.StatusCode.DEADLINE_EXCEEDED
    assert asyncio.get_running_loop().time() - t0 < 10
    await asyncio.wait_for(rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id)), 30)
    st = (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status
    assert st.state == pb.CONTAINER_EXITED
    await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert (await rt.ListContainers(pb.ListContainersRequest())).containers == []


async def test_reopen_container_log_after_rotation(stack: Any, test_images: Any) -> None:
    rt, im, _node, tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    logs = tmp / "rotlogs"
    config = pod_config("rot", log_directory=str(logs))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="ticker"), image=pb.ImageSpec(image=ref),
                             command=["sh", "-c", "while true; do echo tick; sleep 0.05; done"],
                             log_path="ticker.log")
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    log = logs / "ticker.log"
    for _ in range(100):
        if log.exists() and log.stat().st_size > 0:
            break
        await asyncio.sleep(0.05)
    log.rename(logs / "ticker.log.1")  # what kubelet's log manager does before asking
    await rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    for _ in range(100):
        if log.exists() and log.stat().st_size > 0:
            break
        await asyncio.sleep(0.05)
    assert log.read_text().splitlines()[0].split(" ", 1)[1] == "stdout F tick"
    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    assert await code_of(rt.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))) \
        == grpc.StatusCode.FAILED_PRECONDITION


async def test_spdy_tty_exec_and_host_network_container(stack: Any, test_images: Any) -> None:
    from tests.cri.streamclients import SpdyClient

    rt, im, _node, _tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    config = pod_config("hostpod", linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(network=pb.NODE))))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="h"), image=pb.ImageSpec(image=ref),
                             command=["sleep", "1000"])
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    # host network: the container sees the node's interfaces
    out = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["cat", "/proc/net/dev"]))
    host_ifaces = {ln.split(":")[0].strip() for ln in Path("/proc/net/dev").read_text().splitlines()[2:]}
    seen = {ln.split(":")[0].strip() for ln in out.stdout.decode().splitlines()[2:]}
    assert seen == host_ifaces
    # TTY exec over SPDY with a resize
    url = (await rt.Exec(pb.ExecRequest(container_id=cid, cmd=["sh", "-c", "read x; stty size"], tty=True,
                                        stdin=True, stdout=True))).url
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    err = client.open({"streamtype": "error"})
    sin = client.open({"streamtype": "stdin"})
    sout = client.open({"streamtype": "stdout"})
    rsz = client.open({"streamtype": "resize"})
    client.send(rsz, b'{"Width":132,"Height":43}')
    await asyncio.sleep(0.3)
    client.send(sin, b"go\n")
    output = await client.wait_fin(sout, 15)
    assert b"43 132" in output
    assert json.loads(await client.wait_fin(err, 15)) == {"metadata": {}, "status": "Success"}
    await client.close()


async def test_container_events(stack: Any, test_images: Any) -> None:
    rt, im, _node, _tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("evc")))).pod_sandbox_id
    call = rt.GetContainerEvents(pb.GetEventsRequest())
    got: list[pb.ContainerEventResponse] = []

    async def read() -> None:
        async for ev in call:
            if ev.container_id != pod_id:
                got.append(ev)
            if len(got) == 4:
                return

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="e"), image=pb.ImageSpec(image=ref),
                             command=["sleep", "100"])
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    await rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    await rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await asyncio.wait_for(reader, 15)
    call.cancel()
    assert [e.container_event_type for e in got] == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                                                      pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]
    assert all(e.container_id == cid for e in got)
    assert got[1].containers_statuses[0].state == pb.CONTAINER_RUNNING
    assert all(e.pod_sandbox_status.id == pod_id for e in got)


async def test_containers_share_the_pods_namespaces(stack: Any, test_images: Any) -> None:
    rt, im, node, _tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    shared_pid = pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
        namespace_options=pb.NamespaceOption(pid=pb.POD)))
    config = pod_config("shared", hostname="shared-host", linux=shared_pid)
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    ids: list[str] = []
    for name in ("one", "two"):
        cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=ref),
                                 command=["sleep", f"{1000 + len(ids)}"], linux=pb.LinuxContainerConfig(
                                     resources=pb.LinuxContainerResources(memory_limit_in_bytes=128 << 20)))
        cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
        await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        ids.append(cid)

    async def sh(cid: str, script: str) -> str:
        res = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=10))
        assert res.exit_code == 0, res.stderr
        return res.stdout.decode()

    links = "for k in ipc uts pid net; do readlink /proc/self/ns/$k; done"
    one, two = await sh(ids[0], links), await sh(ids[1], links)
    assert one == two
    holder = node.pods.get(pod_id).holder_pid
    for kind in ("ipc", "uts", "net"):
        assert f"{kind}:[{os.stat(f'/proc/{holder}/ns/{kind}').st_ino}]" in one
    assert (await sh(ids[1], "hostname")).strip() == "shared-host"
    # PID sharing: the second container sees the first one's sleep
    assert "sleep 1000" in await sh(ids[1], "ps -o args")
    # UpdateContainerResources lands in the container's cgroup
    await rt.UpdateContainerResources(pb.UpdateContainerResourcesRequest(
        container_id=ids[0], linux=pb.LinuxContainerResources(memory_limit_in_bytes=64 * 1024 * 1024,
                                                              cpu_quota=50000, cpu_period=100000)))
    info = await node.containers.inspect(ids[0])
    from app.runtime.kernel.cgroups import process_paths as cgroup_paths

    mem_dir = Path("/sys/fs/cgroup/memory") / cgroup_paths(info.pid)["memory"].lstrip("/")
    assert int((mem_dir / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024


async def test_security_context(stack: Any, test_images: Any) -> None:
    rt, im, _node, _tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("sec")))).pod_sandbox_id
    sc = pb.LinuxContainerSecurityContext(
        run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=1000),
        supplemental_groups=[1234], no_new_privs=True, readonly_rootfs=True,
        capabilities=pb.Capability(drop_capabilities=["ALL"], add_capabilities=["NET_BIND_SERVICE"]),
        masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"])
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="sec"), image=pb.ImageSpec(image=ref),
                             command=["sleep", "1000"], linux=pb.LinuxContainerConfig(security_context=sc),
                             devices=[pb.Device(container_path="/dev/mynull", host_path="/dev/null",
                                                permissions="rwm")])
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))

    async def run(script: str) -> pb.ExecSyncResponse:
        return await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=10))

    assert (await run("id -u; id -g")).stdout.split() == [b"1000", b"1000"]
    assert b"1234" in (await run("id -G")).stdout.split()
    status = (await run("grep -E 'NoNewPrivs|CapEff' /proc/self/status")).stdout.decode()
    assert "NoNewPrivs:\t1" in status
    assert int(status.split("CapEff:")[1].split()[0], 16) == 0  # non-root: no effective caps
    # bounding set of the exec'd process and of the container's sleep (PID 1 is the pod's holder:
    # CRI's default pid mode is POD)
    bnd = (await run("grep CapBnd /proc/self/status; for p in /proc/[0-9]*; do "
                     "grep -q sleep $p/cmdline 2>/dev/null && grep CapBnd $p/status; done")).stdout.decode()
    masks = {int(line.split()[1], 16) for line in bnd.splitlines()}
    assert masks == {1 << 10}  # NET_BIND_SERVICE only
    assert (await run("echo x > /dev/mynull && ls -l /dev/mynull")).stdout.startswith(b"c")  # device passed
    assert (await run("touch /newfile")).exit_code != 0  # read-only rootfs
    assert (await run("cat /proc/kcore | head -c 1 | wc -c")).stdout.strip() == b"0"  # masked
    # root, drop ALL + add NET_ADMIN (containerd's order): exactly NET_ADMIN, effective too
    sc2 = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(drop_capabilities=["ALL"],
                                                                      add_capabilities=["NET_ADMIN"]))
    cfg2 = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="netadm"), image=pb.ImageSpec(image=ref),
                              command=["sleep", "1000"], linux=pb.LinuxContainerConfig(security_context=sc2))
    cid2 = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg2))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid2))
    out = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid2, cmd=["grep", "-E", "CapEff|CapBnd",
                                                                       "/proc/self/status"], timeout=10))
    assert {int(ln.split()[1], 16) for ln in out.stdout.decode().splitlines()} == {1 << 12}  # CAP_NET_ADMIN
    bad_sc = pb.LinuxContainerSecurityContext(capabilities=pb.Capability(add_capabilities=["FLY"]))
    bad = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="badcap"), image=pb.ImageSpec(image=ref),
                             command=["true"], linux=pb.LinuxContainerConfig(security_context=bad_sc))
    assert await code_of(rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=bad))) \
        == grpc.StatusCode.INVALID_ARGUMENT


async def test_attach_follows_output(stack: Any, test_images: Any) -> None:
    rt, im, _node, tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    config = pod_config("att", log_directory=str(tmp / "attlogs"))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="talker"), image=pb.ImageSpec(image=ref),
                             command=["sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; "
                                      "echo line1; echo err1 >&2; sleep 0.3; echo line2"],
                             log_path="talker.log")
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    url = (await rt.Attach(pb.AttachRequest(container_id=cid, stdout=True, stderr=True))).url
    got: dict[int, bytes] = {}
    async with ws_connect("ws://" + url.removeprefix("http://"), subprotocols=[Subprotocol("v4.channel.k8s.io")]) as ws:
        await asyncio.sleep(0.3)  # the attach session is following the log now
        await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["touch", "/tmp/go"], timeout=10))
        async for msg in ws:
            assert isinstance(msg, bytes)
            got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    assert got[1] == b"line1\nline2\n" and got[2] == b"err1\n"
    assert json.loads(got[3])["status"] == "Success"
    # the container has exited now: attach needs a running container
    assert await code_of(rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True))) \
        == grpc.StatusCode.FAILED_PRECONDITION


async def test_configured_sandbox_image_runs_as_infra(stack: Any, test_images: Any) -> None:
    from app.api.cri.container_convert import INFRA_KEY
    from app.config import CriSettings

    rt, _im, node, _tmp = stack
    node.settings = Settings(state_dir=node.settings.state_dir, run_dir=node.settings.run_dir,
                             cri=CriSettings(sandbox_image=test_images.busybox.ref))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("infra")))).pod_sandbox_id
    infra = [i for i in await node.containers.list() if i.annotations.get(INFRA_KEY) == pod_id]
    assert len(infra) == 1 and infra[0].started_at  # pulled and started in the pod
    assert (await rt.ListContainers(pb.ListContainersRequest())).containers == []  # not a CRI container
    st = await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert st.status.state == pb.SANDBOX_READY and list(st.containers_statuses) == []
    await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert [i for i in await node.containers.list() if i.annotations.get(INFRA_KEY) == pod_id] == []


@pytest.mark.parametrize("websockets", [False, True], ids=["spdy", "websocket"])
async def test_kubectl_exec_into_a_container(stack: Any, test_images: Any, websockets: bool) -> None:
    from tests.cri.kubeproxy import KubeProxy
    from tests.cri.test_kubectl import kubectl

    rt, im, node, _tmp = stack
    ref = test_images.busybox.ref
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("kc", hostname="kc-host")))
              ).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=ref),
                             command=["sleep", "1000"])
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    await rt.Exec(pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True))  # starts the streaming server
    streams = node.servicers[0].streams.server
    proxy = KubeProxy(streams, container_id=cid, pod_id=pod_id)
    await proxy.start()
    try:
        rc, out, err = await kubectl(proxy, "exec", "-i", "mypod", "--", "sh", "-c", "hostname; cat; exit 5",
                                     websockets=websockets, stdin=b"into the container\n")
        assert out == b"kc-host\ninto the container\n" and rc == 5, err
    finally:
        await proxy.stop()
