"""The configured sandbox image, honoured: run it as the pod's infra container.

Pods never need one (the holder keeps the namespaces), but when ``cri.sandbox_image`` is
set the node behaves like containerd: the image is pulled if missing and started inside
the pod's namespaces right after the sandbox, stopped and removed with it. The infra
container carries ``io.4lock.cri.infra`` so ListContainers and events leave it out.
"""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as pb

from app.api.cri import container_convert as cc
from app.errors import NotFound


async def start_infra(rpcs: Any, pod: Any, image_ref: str) -> str:
    images, containers = rpcs.node.images, rpcs.containers
    try:
        image = images.get(image_ref)
    except NotFound:
        image = await images.pull(image_ref)
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="POD"), image=pb.ImageSpec(image=image_ref))
    cid: str = await rpcs.create_in_pod(pod, cfg, image, {cc.INFRA_KEY: pod.id})
    try:
        await containers.start(cid)
    except BaseException:
        await containers.remove(cid, force=True)
        raise
    return cid
