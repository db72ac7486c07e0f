"""Entry point of the CRI door: ``add_cri_servicers(server, node)``.

Registers RuntimeService and ImageService (``cri_api.v1``) on the daemon's
``grpc.aio`` server. The streaming server for Exec/Attach/PortForward starts on
first use (loopback, ``cri.stream_address``/``cri.stream_port``) and is stopped by
a closer registered on the node; the pod service's container hooks are pointed
at the container RPCs so StopPodSandbox/RemovePodSandbox take the pod's
containers with them.
"""

from __future__ import annotations

from typing import Any

import grpc
from cri_api.v1 import api_pb2_grpc as pb_grpc

from app.api.cri.events import EventHub
from app.api.cri.images import ImageServicer
from app.api.cri.runtime import RuntimeServicer
from app.api.cri.streams import LazyStreamServer


def build_servicers(node: Any) -> tuple[RuntimeServicer, ImageServicer]:
    cri = node.settings.cri
    streams = LazyStreamServer(node, cri.stream_address, cri.stream_port)
    events = EventHub()
    runtime = RuntimeServicer(node, streams, events)
    if node.pods is not None:
        node.pods.stop_containers = runtime.stop_pod_containers
        node.pods.remove_containers = runtime.remove_pod_containers
    closers = getattr(node, "closers", None)
    if closers is not None:
        closers.append(streams.stop)
        closers.append(events.close)
        closers.append(runtime.index.close)
    return runtime, ImageServicer(node)


def add_cri_servicers(server: grpc.aio.Server, node: Any) -> tuple[RuntimeServicer, ImageServicer]:
    runtime, images = build_servicers(node)
    pb_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    pb_grpc.add_ImageServiceServicer_to_server(images, server)
    return runtime, images
