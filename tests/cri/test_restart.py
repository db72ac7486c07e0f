"""A daemon restart in the middle: new services on the same state find pods and containers running."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

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
from app.state.db import open_database
from tests.cri.conftest import CniNet
from tests.cri.test_grpc import FakeNode, pod_config


class Incarnation:
    """One 'daemon': the services and the CRI server over shared state dirs."""

    def __init__(self, work: Path, run_dir: Path, cni: CniNet, registry_url: str) -> None:
        self.work, self.run_dir, self.cni, self.registry_url = work, run_dir, cni, registry_url

    async def start(self) -> pb_grpc.RuntimeServiceStub:
        w = self.work
        self.db = open_database(f"sqlite:///{w / 'vapp.db'}")
        store = LocalContentStore(w / "state" / "content")
        layers = LayerSnapshots(w / "state" / "snapshots")
        self.fetcher = RegistryFetcher(store, self.registry_url)
        images = ImageService(self.db, Puller(self.fetcher, store, layers, LayerUnpacker.for_this_process(),
                                              platform=Platform.host()), layers, store)
        self.forkserver = start_forkserver()
        self.containers = ContainerService(self.db, self.forkserver, state_dir=w / "state", run_dir=self.run_dir,
                                           settings=RuntimeSettings(stop_grace_seconds=2.0))
        await self.containers.restore()
        pods = PodService(self.db, w / "state", self.run_dir, self.cni.client())
        await pods.restore()
        self.node = FakeNode(Settings(state_dir=w / "state", run_dir=w / "run"), pods=pods,
                             containers=self.containers, images=images)
        self.node.snapshotter = OverlaySnapshotter(layers, w / "rootfs")  # type: ignore[attr-defined]
        self.server = grpc.aio.server()
        add_cri_servicers(self.server, self.node)
        self.sock = f"/tmp/vt-cri-{uuid.uuid4().hex[:8]}.sock"
        self.server.add_insecure_port(f"unix:{self.sock}")
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(f"unix:{self.sock}")
        self.images = pb_grpc.ImageServiceStub(self.channel)
        return pb_grpc.RuntimeServiceStub(self.channel)

    async def crash(self) -> None:
        """Stop serving without stopping any pod or container (what a killed daemon leaves)."""
        await self.channel.close()
        for closer in self.node.closers:
            await closer()
        await self.server.stop(0)
        await self.containers.close()
        self.forkserver.close()
        await self.fetcher.aclose()
        self.db.close()
        Path(self.sock).unlink(missing_ok=True)


async def test_restart_keeps_pods_and_containers(tmp_path: Path, cni_net: CniNet, registry: Any,
                                                 test_images: Any) -> None:
    run_dir = Path(f"/tmp/vcr-{uuid.uuid4().hex[:8]}")
    first = Incarnation(tmp_path, run_dir, cni_net, registry.url)
    rt = await first.start()
    ref = test_images.busybox.ref
    await first.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config("keep")))).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="k"), image=pb.ImageSpec(image=ref),
                             command=["sleep", "1000"])
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    ip = (await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status.network.ip
    await first.crash()

    second = Incarnation(tmp_path, run_dir, cni_net, registry.url)
    rt = await second.start()
    try:
        pod = (await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
        assert pod.state == pb.SANDBOX_READY and pod.network.ip == ip
        listed = (await rt.ListContainers(pb.ListContainersRequest())).containers
        assert [(c.id, c.state) for c in listed] == [(cid, pb.CONTAINER_RUNNING)]
        out = await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["hostname"], timeout=10))
        assert out.exit_code == 0
        await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status.state \
            == pb.CONTAINER_EXITED
        await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        assert (await rt.ListContainers(pb.ListContainersRequest())).containers == []
    finally:
        await second.crash()
