"""CRI RuntimeService: node-level RPCs, pod sandboxes and stream URLs (containers in :mod:`.containers`).

Every method parses, calls one service, converts back; errors are mapped once
by :func:`~app.api.cri.errors.cri_rpc`.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeAlias

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from app import __version__
from app.api.cri import convert
from app.api.cri.containers import ContainerRpcs
from app.api.cri.errors import cri_rpc
from app.api.cri.events import EventHub
from app.api.cri.infra import start_infra
from app.api.cri.streaming.portforward import PortForwardRequest
from app.api.cri.streaming.remotecommand import CommandRequest
from app.api.cri.streams import LazyStreamServer
from app.errors import FailedPrecondition, InvalidArgument, Unavailable, Unimplemented
from app.services.pod_types import PodState
from app.services.pods import PodService

RUNTIME_NAME = "4lock-core"
CRI_API_VERSION = "v1"
KUBE_API_VERSION = "0.1.0"  # what containerd and CRI-O report in Version.version
HANDLERS = ("", "native", "crun", "runc")

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class RuntimeServicer(ContainerRpcs, pb_grpc.RuntimeServiceServicer):
    def __init__(self, node: Any, streams: LazyStreamServer, events: EventHub) -> None:
        super().__init__(node, events)
        self.streams = streams

    @property
    def pods(self) -> PodService:
        pods = self.node.pods
        if pods is None:
            raise Unavailable("the pod service is not running on this node")
        return pods  # type: ignore[no-any-return]

    # -- node ---------------------------------------------------------------------------
    @cri_rpc
    async def Version(self, request: pb.VersionRequest, context: Ctx) -> pb.VersionResponse:
        return pb.VersionResponse(version=KUBE_API_VERSION, runtime_name=RUNTIME_NAME,
                                  runtime_version=__version__, runtime_api_version=CRI_API_VERSION)

    @cri_rpc
    async def Status(self, request: pb.StatusRequest, context: Ctx) -> pb.StatusResponse:
        runtime_ok = self.node.containers is not None
        runtime = pb.RuntimeCondition(
            type="RuntimeReady", status=runtime_ok,
            reason="" if runtime_ok else "ContainerServiceUnavailable",
            message="" if runtime_ok else "the container service is not running")
        if self.node.pods is None:
            net_ok, why = False, "the pod service is not running"
        else:
            net_ok, why = self.pods.network_status()
        network = pb.RuntimeCondition(type="NetworkReady", status=net_ok,
                                      reason="" if net_ok else "NetworkPluginNotReady", message=why)
        handlers = [pb.RuntimeHandler(name=h, features=pb.RuntimeHandlerFeatures(
            recursive_read_only_mounts=False, user_namespaces=False)) for h in HANDLERS]
        info = {}
        if request.verbose:
            cri = self.node.settings.cri
            info["config"] = json.dumps({
                "cniConfDir": str(cri.cni_conf_dir), "cniBinDirs": [str(d) for d in cri.cni_bin_dirs],
                "streamServer": self.streams.base_url, "sandboxImage": cri.sandbox_image,
            })
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=[runtime, network]), info=info,
                                 runtime_handlers=handlers,
                                 features=pb.RuntimeFeatures(supplemental_groups_policy=False))

    @cri_rpc
    async def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: Ctx) -> pb.RuntimeConfigResponse:
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    @cri_rpc
    async def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                                  context: Ctx) -> pb.UpdateRuntimeConfigResponse:
        # The pod CIDR lives in the CNI config (as with containerd's default template); nothing to do.
        return pb.UpdateRuntimeConfigResponse()

    @cri_rpc
    async def ListMetricDescriptors(self, request: pb.ListMetricDescriptorsRequest,
                                    context: Ctx) -> pb.ListMetricDescriptorsResponse:
        return pb.ListMetricDescriptorsResponse()

    @cri_rpc
    async def ListPodSandboxMetrics(self, request: pb.ListPodSandboxMetricsRequest,
                                    context: Ctx) -> pb.ListPodSandboxMetricsResponse:
        return pb.ListPodSandboxMetricsResponse()

    @cri_rpc
    async def CheckpointContainer(self, request: pb.CheckpointContainerRequest,
                                  context: Ctx) -> pb.CheckpointContainerResponse:
        raise Unimplemented("CheckpointContainer is not supported by 4lock-core (no CRIU integration)")

    # -- pod sandboxes ---------------------------------------------------------------------
    @cri_rpc
    async def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: Ctx) -> pb.RunPodSandboxResponse:
        handler = request.runtime_handler
        if handler not in HANDLERS:
            raise InvalidArgument(f"unknown runtime handler {handler!r}", details={"runtime_handler": handler})
        pod = await self.pods.run(convert.pod_spec(request.config, handler))
        sandbox_image = self.node.settings.cri.sandbox_image
        if sandbox_image and self.node.containers is not None and self.node.images is not None:
            try:
                await start_infra(self, pod, sandbox_image)
            except BaseException:
                await self.pods.remove(pod.id)  # takes the infra container too, if it got that far
                raise
        self.events.sandbox(pod, pb.CONTAINER_CREATED_EVENT)
        self.events.sandbox(pod, pb.CONTAINER_STARTED_EVENT)
        return pb.RunPodSandboxResponse(pod_sandbox_id=pod.id)

    @cri_rpc
    async def StopPodSandbox(self, request: pb.StopPodSandboxRequest, context: Ctx) -> pb.StopPodSandboxResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        await self.pods.stop(request.pod_sandbox_id)
        self.events.sandbox(self.pods.get(request.pod_sandbox_id), pb.CONTAINER_STOPPED_EVENT)
        return pb.StopPodSandboxResponse()

    @cri_rpc
    async def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                               context: Ctx) -> pb.RemovePodSandboxResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        pod = next(iter(self.pods.list(id_prefix=request.pod_sandbox_id)), None)
        await self.pods.remove(request.pod_sandbox_id)
        if pod is not None:
            self.events.sandbox(pod, pb.CONTAINER_DELETED_EVENT)
        return pb.RemovePodSandboxResponse()

    @cri_rpc
    async def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                               context: Ctx) -> pb.PodSandboxStatusResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        pod = self.pods.get(request.pod_sandbox_id)
        info = {}
        if request.verbose:
            cni = self.pods.cni
            info = convert.sandbox_info(pod, cni.cached_result(pod.id) if cni and pod.network == "cni" else None)
        return pb.PodSandboxStatusResponse(status=convert.sandbox_status(pod), info=info,
                                           containers_statuses=await self.pod_container_statuses(pod.id),
                                           timestamp=time.time_ns())

    @cri_rpc
    async def ListPodSandbox(self, request: pb.ListPodSandboxRequest, context: Ctx) -> pb.ListPodSandboxResponse:
        f = request.filter
        pods = self.pods.list(id_prefix=f.id, state=convert.pod_state_filter(f), labels=dict(f.label_selector))
        return pb.ListPodSandboxResponse(items=[convert.sandbox(p) for p in pods])

    @cri_rpc
    async def UpdatePodSandboxResources(self, request: pb.UpdatePodSandboxResourcesRequest,
                                        context: Ctx) -> pb.UpdatePodSandboxResourcesResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        self.pods.get(request.pod_sandbox_id)  # pod-level cgroups are not managed separately
        return pb.UpdatePodSandboxResourcesResponse()

    # -- streaming -------------------------------------------------------------------------
    @cri_rpc
    async def Exec(self, request: pb.ExecRequest, context: Ctx) -> pb.ExecResponse:
        _require(request.container_id, "container_id")
        if not request.cmd:
            raise InvalidArgument("cmd must not be empty", details={"field": "cmd"})
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true")
        cid = await self.require_running(request.container_id)
        req = CommandRequest("exec", cid, tuple(request.cmd), request.tty, request.stdin, request.stdout,
                             request.stderr)
        return pb.ExecResponse(url=await self.streams.url_for(req))

    @cri_rpc
    async def Attach(self, request: pb.AttachRequest, context: Ctx) -> pb.AttachResponse:
        _require(request.container_id, "container_id")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout, or stderr must be set")
        cid = await self.require_running(request.container_id)
        req = CommandRequest("attach", cid, (), request.tty, request.stdin, request.stdout,
                             request.stderr and not request.tty)
        return pb.AttachResponse(url=await self.streams.url_for(req))

    @cri_rpc
    async def PortForward(self, request: pb.PortForwardRequest, context: Ctx) -> pb.PortForwardResponse:
        _require(request.pod_sandbox_id, "pod_sandbox_id")
        pod = self.pods.get(request.pod_sandbox_id)
        if pod.state is not PodState.READY:
            raise FailedPrecondition(f"pod sandbox {pod.id} is not ready")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"invalid port {port}")
        url = await self.streams.url_for(PortForwardRequest(pod.id, tuple(request.port)))
        return pb.PortForwardResponse(url=url)


def _require(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} must not be empty", details={"field": field})
