"""Root filesystems of CRI containers: the image's layer snapshots prepared and mounted per container.

Same recipe as the app engine (:mod:`app.services.app_engines`): the snapshotter
describes the mounts, :class:`~app.services.app_engines.KernelRootfsMounter` applies
them through the kernel seam (a copy snapshotter's tree is used in place), and
``release`` unmounts and removes the writable layer. Blocking work runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any


class CriRootfs:
    def __init__(self, snapshotter: Any, mounter: Any) -> None:
        self.snapshotter, self.mounter = snapshotter, mounter
        self.overlays: dict[str, dict[str, Any]] = {}  # container id → overlay its init mounts

    def overlay_for(self, container_id: str) -> dict[str, Any] | None:
        """The overlay description to hand to the container service (consumed once)."""
        return self.overlays.pop(container_id, None)

    async def prepare(self, container_id: str, image: Any) -> str:
        target: Path = self.snapshotter.rootfs_dir(container_id)
        mounts = await asyncio.to_thread(self.snapshotter.prepare, container_id, list(image.chain_ids))
        from app.services.app_engines import in_container_overlay

        overlay = in_container_overlay(mounts)
        if overlay is not None:  # rootless overlay: the native init mounts it in the container
            self.overlays[container_id] = overlay
            return str(target)
        try:
            await asyncio.to_thread(self.mounter.mount, mounts, target)
        except BaseException:
            await self.release(container_id)
            raise
        return str(target)

    async def release(self, container_id: str) -> None:
        self.overlays.pop(container_id, None)

        def work() -> None:
            with contextlib.suppress(OSError):
                self.mounter.unmount(self.snapshotter.rootfs_dir(container_id))
            self.snapshotter.remove(container_id)

        await asyncio.to_thread(work)


def rootfs_for(node: Any) -> CriRootfs | None:
    """The node's provider: ``node.cri_rootfs`` if wiring set one, else built from its snapshotter."""
    provided = getattr(node, "cri_rootfs", None)
    if provided is not None:
        return provided  # type: ignore[no-any-return]
    snapshotter = getattr(node.images, "snapshotter", None) or getattr(node, "snapshotter", None)
    if snapshotter is None:
        return None
    from app.runtime.kernel.linux import LinuxKernel
    from app.services.app_engines import KernelRootfsMounter

    return CriRootfs(snapshotter, KernelRootfsMounter(LinuxKernel()))
