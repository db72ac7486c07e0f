"""CRI ImageService over the image service (``node.images``).

``image_ref`` everywhere is the image ID (the config digest), as the issue and
containerd have it. ``ImageStatus`` of an absent image is an empty response, and
``RemoveImage`` removes the image with all its tags and is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any, TypeAlias

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from app.api.cri.errors import cri_rpc
from app.errors import InvalidArgument, NotFound, Unavailable
from app.oci.credentials import RegistryCredentials

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def image_message(rec: Any) -> pb.Image:
    user = rec.user.split(":", 1)[0] if rec.user else ""
    img = pb.Image(id=rec.id, repo_tags=rec.tags, repo_digests=rec.repo_digests, size=rec.size,
                   spec=pb.ImageSpec(image=rec.id))
    if user.isdigit():
        img.uid.value = int(user)
    elif user:
        img.username = user
    return img


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, inodes) used under ``path`` (allocated blocks, as du counts)."""
    used = inodes = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    inodes += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    used += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return used, inodes


class ImageServicer(pb_grpc.ImageServiceServicer):
    def __init__(self, node: Any) -> None:
        self.node = node

    @property
    def images(self) -> Any:
        if self.node.images is None:
            raise Unavailable("the image service is not running on this node")
        return self.node.images

    @cri_rpc
    async def ListImages(self, request: pb.ListImagesRequest, context: Ctx) -> pb.ListImagesResponse:
        want = request.filter.image.image
        records = self.images.list_images()
        if want:
            try:
                image_id = self.images.resolve_id(want)
            except NotFound:
                return pb.ListImagesResponse()
            records = [r for r in records if r.id == image_id]
        return pb.ListImagesResponse(images=[image_message(r) for r in records])

    @cri_rpc
    async def ImageStatus(self, request: pb.ImageStatusRequest, context: Ctx) -> pb.ImageStatusResponse:
        if not request.image.image:
            raise InvalidArgument("image must not be empty", details={"field": "image"})
        try:
            rec = self.images.get(request.image.image)
        except NotFound:
            return pb.ImageStatusResponse()
        info = {}
        if request.verbose:
            import json

            info["info"] = json.dumps(rec.to_dict())
        return pb.ImageStatusResponse(image=image_message(rec), info=info)

    @cri_rpc
    async def PullImage(self, request: pb.PullImageRequest, context: Ctx) -> pb.PullImageResponse:
        if not request.image.image:
            raise InvalidArgument("image must not be empty", details={"field": "image"})
        # AuthConfig is used for this pull only: never stored, never logged (out of repr)
        a = request.auth
        creds = RegistryCredentials.from_auth_config(a.username, a.password, a.auth, a.identity_token,
                                                     a.registry_token)
        rec = await self.images.pull(request.image.image, credentials=creds)
        return pb.PullImageResponse(image_ref=rec.id)

    @cri_rpc
    async def RemoveImage(self, request: pb.RemoveImageRequest, context: Ctx) -> pb.RemoveImageResponse:
        if not request.image.image:
            raise InvalidArgument("image must not be empty", details={"field": "image"})
        with contextlib.suppress(NotFound):  # idempotent
            self.images.remove(request.image.image, force=True)
        return pb.RemoveImageResponse()

    @cri_rpc
    async def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Ctx) -> pb.ImageFsInfoResponse:
        s = self.node.settings
        out = []
        for path in (s.content_dir, s.state_dir / "snapshots"):  # blobs and unpacked layers (wiring's layout)
            used, inodes = await asyncio.to_thread(disk_usage, path)
            usage = pb.FilesystemUsage(timestamp=time.time_ns(), fs_id=pb.FilesystemIdentifier(mountpoint=str(path)))
            usage.used_bytes.value, usage.inodes_used.value = used, inodes
            out.append(usage)
        containers_dir = s.state_dir / "containers"
        used, inodes = await asyncio.to_thread(disk_usage, containers_dir)
        cont = pb.FilesystemUsage(timestamp=time.time_ns(),
                                  fs_id=pb.FilesystemIdentifier(mountpoint=str(containers_dir)))
        cont.used_bytes.value, cont.inodes_used.value = used, inodes
        return pb.ImageFsInfoResponse(image_filesystems=out, container_filesystems=[cont])
