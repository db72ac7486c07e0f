"""CRI container RPCs over the container service (``node.containers``) and image service.

The container's root filesystem comes from :func:`~app.api.cri.rootfs.rootfs_for`
(``node.cri_rootfs`` if wiring sets one, else the node's snapshotter + kernel mounter).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from cri_api.v1 import api_pb2 as pb

from app.api.cri import bundle, convert, stats
from app.api.cri import container_convert as cc
from app.api.cri.errors import cri_rpc, cri_stream
from app.api.cri.events import EventHub
from app.api.cri.index import ContainerIndex
from app.api.cri.rootfs import rootfs_for
from app.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from app.services.container_types import ContainerInfo, ContainerStatus
from app.services.pod_types import PodState

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
_EVENT = {"created": pb.CONTAINER_CREATED_EVENT, "started": pb.CONTAINER_STARTED_EVENT,
          "exited": pb.CONTAINER_STOPPED_EVENT, "deleted": pb.CONTAINER_DELETED_EVENT}


class ContainerRpcs:
    def __init__(self, node: Any, events: EventHub) -> None:
        self.node = node
        self.events = events
        self.index = ContainerIndex(node)
        events.feed_factory = self._feed_events

    @property
    def containers(self) -> Any:
        if self.node.containers is None:
            raise Unavailable("the container service is not running on this node")
        return self.node.containers

    async def _cri_info(self, container_id: str) -> ContainerInfo:
        if not container_id:
            raise InvalidArgument("container_id must not be empty", details={"field": "container_id"})
        info: ContainerInfo = await self.containers.inspect(container_id)
        if not cc.is_cri(info):
            raise NotFound(f"container {container_id!r} is not a CRI container")
        return info

    async def require_running(self, container_id: str) -> str:
        info = await self._cri_info(container_id)
        if info.status is not ContainerStatus.RUNNING:
            raise FailedPrecondition(f"container {info.id} is not running (state {info.status.value})")
        return info.id

    async def pod_container_statuses(self, pod_id: str) -> list[pb.ContainerStatus]:
        if self.node.containers is None:
            return []
        infos = await self.node.containers.list()
        return [cc.container_status(i) for i in infos if cc.is_cri(i) and i.annotations.get(cc.POD_KEY) == pod_id]

    async def _list(self, f: Any) -> list[ContainerInfo]:
        infos: list[ContainerInfo] = await self.containers.list()
        return [i for i in infos if cc.is_cri(i) and cc.matches(i, f)]

    # -- lifecycle ---------------------------------------------------------------------------
    @cri_rpc
    async def CreateContainer(self, request: pb.CreateContainerRequest, context: Ctx) -> pb.CreateContainerResponse:
        cc.validate(request)
        pods = self.node.pods
        if pods is None:
            raise Unavailable("the pod service is not running on this node")
        pod = pods.get(request.pod_sandbox_id)
        if pod.state is not PodState.READY:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        images = self.node.images
        self.containers  # noqa: B018 (Unavailable without a container service)
        rootfs_provider = rootfs_for(self.node)
        if images is None or rootfs_provider is None:
            raise Unavailable("image service or container root filesystems are not wired on this node")
        cfg = request.config
        image = images.get(cfg.image.image)
        cid = await self.create_in_pod(pod, cfg, image)
        await self.index.refresh(cid)
        return pb.CreateContainerResponse(container_id=cid)

    async def create_in_pod(self, pod: Any, cfg: pb.ContainerConfig, image: Any,
                            annotations: dict[str, str] | None = None) -> str:
        """Create ``cfg`` in ``pod`` from ``image`` (also used for the pod's infra container)."""
        pods, containers = self.node.pods, self.containers
        rootfs_provider = rootfs_for(self.node)
        if rootfs_provider is None:
            raise Unavailable("container root filesystems are not wired on this node")
        await asyncio.to_thread(_ensure_mount_sources, cfg.mounts)
        cid = secrets.token_hex(32)
        log_path = str(Path(pod.spec.log_directory) / cfg.log_path) if pod.spec.log_directory and cfg.log_path \
            else ""
        spec = cc.container_spec(cid, cfg, pod, pods.pod_files(pod.id), image.id, image.id, log_path)
        if annotations:
            spec.annotations.update(annotations)
        rootfs = await rootfs_provider.prepare(cid, image)
        overlay_for = getattr(rootfs_provider, "overlay_for", None)  # rootless overlay mounted by the init
        bundle_dir = self.node.settings.state_dir / "cri" / "bundles" / cid
        try:
            from app.services.container_types import CreateRequest

            handler = pod.spec.runtime_handler or None
            ns_paths = {k: v for k, v in pod.namespace_paths().items() if k in bundle.JOINED}
            bundle_path = None
            if os.geteuid() == 0:  # rootless keeps the service's own bundle (id maps)
                cfg_doc = bundle.pod_config(spec, image.config, rootfs, ns_paths)
                bundle.apply_security(cfg_doc, cfg.linux.security_context)
                bundle.apply_devices(cfg_doc, cfg.devices)
                bundle_path = await asyncio.to_thread(bundle.write_bundle, bundle_dir, cfg_doc)
            await containers.create(CreateRequest(spec=spec, rootfs=rootfs, bundle=bundle_path,
                                                  image_config=image.config, image=image.id, runtime=handler,
                                                  log_path=log_path or None,
                                                  rootfs_overlay=overlay_for(cid) if overlay_for else None))
        except BaseException:
            with contextlib.suppress(Exception):
                await rootfs_provider.release(cid)
            shutil.rmtree(bundle_dir, ignore_errors=True)
            raise
        return cid

    @cri_rpc
    async def StartContainer(self, request: pb.StartContainerRequest, context: Ctx) -> pb.StartContainerResponse:
        info = await self._cri_info(request.container_id)
        try:
            await self.containers.start(info.id)
        finally:
            await self.index.refresh(info.id)
        return pb.StartContainerResponse()

    @cri_rpc
    async def StopContainer(self, request: pb.StopContainerRequest, context: Ctx) -> pb.StopContainerResponse:
        info = await self._cri_info(request.container_id)
        if info.status in (ContainerStatus.CREATED, ContainerStatus.RUNNING):
            await self.containers.stop(info.id, float(max(request.timeout, 0)))
            await self.index.refresh(info.id)
        return pb.StopContainerResponse()

    @cri_rpc
    async def RemoveContainer(self, request: pb.RemoveContainerRequest, context: Ctx) -> pb.RemoveContainerResponse:
        try:
            info = await self._cri_info(request.container_id)
        except NotFound:
            return pb.RemoveContainerResponse()  # idempotent
        await self.containers.remove(info.id, force=True)
        self.index.drop(info.id)
        shutil.rmtree(self.node.settings.state_dir / "cri" / "bundles" / info.id, ignore_errors=True)
        provider = rootfs_for(self.node)
        if provider is not None:
            await provider.release(info.id)
        return pb.RemoveContainerResponse()

    async def stop_pod_containers(self, pod_id: str) -> None:
        """Pod service hook: stop every container of a pod (StopPodSandbox)."""
        if self.node.containers is None:
            return
        for info in await self.node.containers.list():
            if info.annotations.get(cc.POD_KEY) == pod_id and info.status is ContainerStatus.RUNNING:
                await self.node.containers.stop(info.id, 0)
                await self.index.refresh(info.id)

    async def remove_pod_containers(self, pod_id: str) -> None:
        if self.node.containers is None:
            return
        for info in await self.node.containers.list():
            if info.annotations.get(cc.POD_KEY) == pod_id:
                await self.node.containers.remove(info.id, force=True)
                self.index.drop(info.id)
                shutil.rmtree(self.node.settings.state_dir / "cri" / "bundles" / info.id, ignore_errors=True)
                provider = rootfs_for(self.node)
                if provider is not None:
                    await provider.release(info.id)

    # -- views ----------------------------------------------------------------------------------
    @cri_rpc
    async def ListContainers(self, request: pb.ListContainersRequest, context: Ctx) -> pb.ListContainersResponse:
        self.containers  # noqa: B018 (Unavailable without a container service)
        return await self.index.response(request.filter)

    @cri_rpc
    async def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Ctx) -> pb.ContainerStatusResponse:
        info = await self._cri_info(request.container_id)
        extra = {}
        if request.verbose:  # what crictl inspect shows
            extra["info"] = json.dumps({
                "sandboxID": info.annotations.get(cc.POD_KEY), "pid": info.pid, "runtime": info.runtime,
                "bundle": info.bundle, "rootfs": info.rootfs, "network": info.network,
                "labels": info.labels})
        return pb.ContainerStatusResponse(status=cc.container_status(info), info=extra)

    @cri_rpc
    async def ContainerStats(self, request: pb.ContainerStatsRequest, context: Ctx) -> pb.ContainerStatsResponse:
        info = await self._cri_info(request.container_id)
        return pb.ContainerStatsResponse(stats=_stats(info))

    @cri_rpc
    async def ListContainerStats(self, request: pb.ListContainerStatsRequest,
                                 context: Ctx) -> pb.ListContainerStatsResponse:
        return pb.ListContainerStatsResponse(stats=[_stats(i) for i in await self._list(request.filter)])

    @cri_rpc
    async def PodSandboxStats(self, request: pb.PodSandboxStatsRequest, context: Ctx) -> pb.PodSandboxStatsResponse:
        if self.node.pods is None:
            raise Unavailable("the pod service is not running on this node")
        pod = self.node.pods.get(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=_pod_stats(pod, await self._pod_container_stats(pod.id)))

    @cri_rpc
    async def ListPodSandboxStats(self, request: pb.ListPodSandboxStatsRequest,
                                  context: Ctx) -> pb.ListPodSandboxStatsResponse:
        if self.node.pods is None:
            raise Unavailable("the pod service is not running on this node")
        f = request.filter
        pods = self.node.pods.list(id_prefix=f.id, labels=dict(f.label_selector))
        return pb.ListPodSandboxStatsResponse(
            stats=[_pod_stats(p, await self._pod_container_stats(p.id)) for p in pods])

    async def _pod_container_stats(self, pod_id: str) -> list[pb.ContainerStats]:
        if self.node.containers is None:
            return []
        infos = await self.node.containers.list()
        return [_stats(i) for i in infos if cc.is_cri(i) and i.annotations.get(cc.POD_KEY) == pod_id]

    # -- in-container operations --------------------------------------------------------------
    @cri_rpc
    async def ExecSync(self, request: pb.ExecSyncRequest, context: Ctx) -> pb.ExecSyncResponse:
        if not request.cmd:
            raise InvalidArgument("cmd must not be empty", details={"field": "cmd"})
        cid = await self.require_running(request.container_id)
        timeout = float(request.timeout) if request.timeout > 0 else None
        result = await self.containers.exec(cid, list(request.cmd), timeout)
        if result.timed_out:
            raise DeadlineExceeded(f"command {list(request.cmd)!r} timed out after {request.timeout}s")
        return pb.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    @cri_rpc
    async def UpdateContainerResources(self, request: pb.UpdateContainerResourcesRequest,
                                       context: Ctx) -> pb.UpdateContainerResourcesResponse:
        info = await self._cri_info(request.container_id)
        await self.containers.update_resources(info.id, cc.resources(request.linux))
        await self.index.refresh(info.id)
        return pb.UpdateContainerResourcesResponse()

    @cri_rpc
    async def ReopenContainerLog(self, request: pb.ReopenContainerLogRequest,
                                 context: Ctx) -> pb.ReopenContainerLogResponse:
        info = await self._cri_info(request.container_id)
        if info.status is not ContainerStatus.RUNNING:
            raise FailedPrecondition(f"container {info.id} is not running")
        await self.containers.reopen_log(info.id)  # the shim closes and reopens the file kubelet renamed
        return pb.ReopenContainerLogResponse()

    @cri_stream
    async def GetContainerEvents(self, request: pb.GetEventsRequest,
                                 context: Ctx) -> AsyncIterator[pb.ContainerEventResponse]:
        async for event in self.events.subscribe():
            yield event

    async def _feed_events(self, hub: EventHub) -> None:
        """Container service events → CRI events, for CRI containers only (apps' are not ours),
        with the container's status and its pod's status as kubelet's evented PLEG reads them."""
        if self.node.containers is None:
            return
        pod_of: dict[str, str] = {c.id: c.pod_sandbox_id for c in self.index.items.values()}
        async for ev in self.node.containers.events():
            kind = _EVENT.get(ev.type)
            if kind is None:
                continue
            statuses = []
            if ev.type != "deleted":
                try:
                    info = await self.node.containers.inspect(ev.container_id)
                except NotFound:
                    continue
                if not cc.is_cri(info):
                    continue
                pod_of[info.id] = info.annotations[cc.POD_KEY]
                statuses = [cc.container_status(info)]
            if ev.container_id not in pod_of:
                continue
            pod_id = pod_of.pop(ev.container_id) if ev.type == "deleted" else pod_of[ev.container_id]
            event = pb.ContainerEventResponse(container_id=ev.container_id, container_event_type=kind,
                                              created_at=int(ev.at * 1e9), containers_statuses=statuses)
            if self.node.pods is not None:
                with contextlib.suppress(NotFound):
                    event.pod_sandbox_status.CopyFrom(convert.sandbox_status(self.node.pods.get(pod_id)))
            hub.publish(event)


def _ensure_mount_sources(mounts: Any) -> None:
    """A missing bind source becomes an empty directory, as containerd and Docker do."""
    for m in mounts:
        if not m.host_path.startswith("/"):
            raise InvalidArgument(f"mount host_path {m.host_path!r} is not absolute", details={"field": "mounts"})
        if not os.path.lexists(m.host_path):
            try:
                os.makedirs(m.host_path, 0o755, exist_ok=True)
            except OSError as exc:
                raise InvalidArgument(f"mount source {m.host_path}: {exc.strerror}",
                                      details={"field": "mounts"}) from exc


def _stats(info: ContainerInfo) -> pb.ContainerStats:
    attrs = pb.ContainerAttributes(id=info.id, metadata=pb.ContainerMetadata(
        name=info.annotations.get(cc.NAME_KEY, info.name)), labels=info.labels,
        annotations=cc.visible(info.annotations))
    cpu, mem = stats.usage(info.pid if info.status is ContainerStatus.RUNNING else None, info.id)
    return pb.ContainerStats(attributes=attrs, cpu=cpu, memory=mem)


def _pod_stats(pod: Any, containers: list[pb.ContainerStats]) -> pb.PodSandboxStats:
    attrs = pb.PodSandboxAttributes(id=pod.id, metadata=convert.metadata(pod.spec), labels=pod.spec.labels,
                                    annotations=pod.spec.annotations)
    now = time.time_ns()
    cpu, mem = pb.CpuUsage(timestamp=now), pb.MemoryUsage(timestamp=now)
    cpu.usage_core_nano_seconds.value = sum(c.cpu.usage_core_nano_seconds.value for c in containers)
    mem.usage_bytes.value = sum(c.memory.usage_bytes.value for c in containers)
    mem.working_set_bytes.value = sum(c.memory.working_set_bytes.value for c in containers)
    return pb.PodSandboxStats(attributes=attrs, linux=pb.LinuxPodSandboxStats(
        cpu=cpu, memory=mem, containers=containers))
