"""Adapters from the app service's small protocols to the real engines.

``AppService`` (``app/services/apps.py``) asks for a few verbs (pull with a
progress figure, create/start/stop/remove/exec/status, write files into a
rootfs). These classes implement them over the image service, the layer
snapshotter and the container service, so the app logic stays independent of
their richer APIs::

    ImagePullAdapter ── ImageService.pull (per-blob PullEvents → one bytes figure)
    ContainerAdapter ── Snapshotter.prepare → mounted rootfs (RootfsMounter), or rootless:
                        the overlay description handed to the native init (mounted in the
                        container's own user+mount namespace, never on the host)
                     └─ ContainerService.create/start/stop/remove/exec/inspect

Root filesystem per app container (``<snapshots>/containers/<id>/rootfs``):
an overlay mounted on the host by ``RootfsMounter`` (root), or the copy
snapshotter's merged tree (a bind ``Mount``: used in place). Config templates
are written into it before start, so they land in the container's upper dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from app.errors import Category, FailedPrecondition, NotFound
from app.runtime import templates
from app.services.apps import ContainerRequest, ContainerStatus, ExecResult, PullStatus


class _Images(Protocol):
    async def pull(self, text: str, on_event: Callable[[Any], None] | None = None) -> Any: ...
    def get(self, name: str) -> Any: ...


class ImagePullAdapter:
    """Sums per-blob progress into one done/total figure (the image store keeps the records)."""

    def __init__(self, images: _Images) -> None:
        self.images = images

    async def pull(self, ref: str, progress: Callable[[PullStatus], None]) -> None:
        blobs: dict[str, tuple[int, int]] = {}

        def on_event(ev: Any) -> None:
            done = ev.total if ev.status in ("done", "cached") else ev.done
            blobs[ev.digest] = (done, ev.total)
            finished = sum(1 for d, t in blobs.values() if t and d >= t)
            total = sum(t for _, t in blobs.values())
            progress(PullStatus(sum(d for d, _ in blobs.values()), total or None,
                                f"{ev.status} {ev.digest.removeprefix('sha256:')[:12]} "
                                f"({finished}/{len(blobs)} blobs)"))

        await self.images.pull(ref, on_event)


class RootfsMounter(Protocol):
    """Applies snapshotter ``Mount`` descriptions on a target directory (and undoes them)."""

    def mount(self, mounts: Sequence[Any], target: Path) -> None: ...
    def unmount(self, target: Path) -> None: ...


class KernelRootfsMounter:
    """Overlay via mount(2) through the kernel seam; a bind ``Mount`` is used in place."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    def mount(self, mounts: Sequence[Any], target: Path) -> None:
        for m in mounts:
            if m.type == "bind" and Path(m.source) == target:
                continue
            if m.type != "overlay":
                raise FailedPrecondition(f"cannot apply a {m.type} rootfs mount for an app container",
                                         category=Category.RUNTIME, phase="create")
            if os.path.ismount(target):
                continue
            if os.geteuid() != 0:
                # A rootless overlay can only be mounted inside the container's own user
                # namespace, which the container service does not offer for app rootfs yet.
                raise FailedPrecondition(
                    "rootless app containers need runtime.snapshotter = \"copy\" on this node",
                    category=Category.RUNTIME, phase="create",
                )
            target.mkdir(parents=True, exist_ok=True)
            self.kernel.mount("overlay", str(target), "overlay", 0, m.data())

    def unmount(self, target: Path) -> None:
        if os.path.ismount(target):
            self.kernel.umount2(str(target), 2)  # MNT_DETACH: a lingering exec must not block removal


def in_container_overlay(mounts: Sequence[Any]) -> dict[str, Any] | None:
    """Rootless: the overlay description the native init mounts inside the container's user
    namespace (``userxattr`` overlays cannot be mounted in the daemon's); None = mount here."""
    if os.geteuid() == 0 or len(mounts) != 1 or mounts[0].type != "overlay":
        return None
    m = mounts[0]
    return {"type": "overlay", "source": m.source, "options": list(m.options)}


class ContainerAdapter:
    """App containers over the container service, with rootfs from the snapshotter."""

    def __init__(self, containers: Any, images: ImagePullAdapter, snapshotter: Any, mounter: RootfsMounter,
                 spec_factory: Callable[..., Any]) -> None:
        self.containers = containers
        self.images = images
        self.snapshotter = snapshotter
        self.mounter = mounter
        self.spec_factory = spec_factory  # app.runtime.oci.spec.ContainerSpec

    def _image(self, ref: str) -> Any:
        return self.images.images.get(ref)

    async def create(self, req: ContainerRequest) -> None:
        from app.services.container_types import CreateRequest

        image = self._image(req.image)
        rootfs = self.snapshotter.rootfs_dir(req.container_id)
        mounts = await asyncio.to_thread(self.snapshotter.prepare, req.container_id, list(image.chain_ids))
        overlay = in_container_overlay(mounts)
        if overlay is None:
            await asyncio.to_thread(self.mounter.mount, mounts, rootfs)
        spec = self.spec_factory(
            id=req.container_id, name=req.container_id,
            command=tuple(req.command) if req.command else None, args=tuple(req.args) or None,
            env=tuple(req.env), workdir=req.working_dir, privileged=req.privileged, network=req.network,
            labels=dict(req.labels), mounts=_mount_specs(req.mounts), resources=_resources(req),
        )
        try:
            await self.containers.create(CreateRequest(spec=spec, rootfs=str(rootfs), image_config=image.config,
                                                       image=image.id, rootfs_overlay=overlay))
        except BaseException:
            await asyncio.to_thread(self._release, req.container_id)
            raise

    async def write_files(self, container_id: str, files: Sequence[templates.Rendered]) -> None:
        rootfs = self.snapshotter.rootfs_dir(container_id)
        if not os.path.ismount(rootfs) and (rootfs.parent / "upper").is_dir():
            # The overlay is mounted only in the created container's mount namespace: write
            # through its root (the merged view; writing the upper dir behind a mounted
            # overlay's back may stay invisible to it).
            info = await self.containers.inspect(container_id)
            if not info.pid:
                raise FailedPrecondition(f"container {container_id!r} has no init to write files through",
                                         category=Category.RUNTIME, phase="create")
            rootfs = Path(f"/proc/{info.pid}/root")

        def write() -> None:
            for item in files:
                templates.write_into_rootfs(rootfs, item.destination, item.text)

        await asyncio.to_thread(write)

    async def start(self, container_id: str) -> None:
        await self.containers.start(container_id)

    async def stop(self, container_id: str, grace: float) -> None:
        await self.containers.stop(container_id, grace)

    async def remove(self, container_id: str) -> None:
        try:
            await self.containers.remove(container_id, force=True)
        finally:
            await asyncio.to_thread(self._release, container_id)

    def _release(self, container_id: str) -> None:
        with contextlib.suppress(OSError):
            self.mounter.unmount(self.snapshotter.rootfs_dir(container_id))
        self.snapshotter.remove(container_id)

    async def status(self, container_id: str) -> ContainerStatus:
        info = await self.containers.inspect(container_id)
        return ContainerStatus(running=info.running, exit_code=info.exit_code)

    async def listing(self) -> list[str]:
        """Every container on the node (apps, CRI pods, bootstrap), for RunDiagnostic."""
        return [f"container {i.id}: {i.status} pid={i.pid} image={i.image[:19]}"
                + (f" exit={i.exit_code}" if i.exit_code is not None else "")
                for i in await self.containers.list()]

    async def exec(self, container_id: str, argv: list[str], timeout: float) -> ExecResult:
        res = await self.containers.exec(container_id, argv, timeout)
        if getattr(res, "timed_out", False):
            raise TimeoutError(f"{argv[0]} timed out")
        return ExecResult(res.exit_code, res.output)


def _mount_specs(mounts: list[dict[str, Any]]) -> tuple[Any, ...]:
    from app.runtime.oci.spec import MountSpec

    out = []
    for m in mounts:
        if not os.path.exists(m["host_path"]):
            raise NotFound(f"mount source {m['host_path']} does not exist", category=Category.VOLUME,
                           phase="create")
        out.append(MountSpec(source=m["host_path"], destination=m["container_path"], readonly=m["read_only"]))
    return tuple(out)


def _resources(req: ContainerRequest) -> Any:
    from app.runtime.oci.spec import Resources

    kwargs: dict[str, Any] = {}
    if req.memory_mb:
        kwargs["memory_bytes"] = req.memory_mb * 1024 * 1024
    if req.cpu_cores:
        kwargs["cpu_period"] = 100_000
        kwargs["cpu_quota"] = int(req.cpu_cores * 100_000)
    return Resources(**kwargs)


class NoEngine:
    """Stands in for an engine this node has not wired: every verb is Unavailable (retryable)."""

    def __init__(self, what: str) -> None:
        self.what = what

    VERBS = frozenset({"pull", "create", "write_files", "start", "stop", "remove", "status", "exec"})

    def __getattr__(self, name: str) -> Callable[..., Any]:
        from app.errors import Unavailable

        if name not in self.VERBS:
            raise AttributeError(name)

        async def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise Unavailable(f"{self.what} is not available on this node", category=Category.RUNTIME)

        return unavailable


def build_app_service(node: Any) -> Any:
    """The composition of the app service from what the node has wired (``app/wiring.py`` slot)."""
    from app.runtime.network.diag import interface_ip, network_diagnostics
    from app.services.app_records import AppRecords
    from app.services.apps import AppService
    from app.services.diagnostics import Diagnostics
    from app.services.dns import DnsRecords

    s = node.settings
    images: Any = NoEngine("the image service")
    containers: Any = NoEngine("the container runtime")
    snapshotter = getattr(node.images, "snapshotter", None) or getattr(node, "snapshotter", None)
    if node.images is not None and node.containers is not None and snapshotter is not None:
        from app.runtime.kernel.linux import LinuxKernel
        from app.runtime.oci.spec import ContainerSpec

        images = ImagePullAdapter(node.images)
        containers = ContainerAdapter(node.containers, images, snapshotter, KernelRootfsMounter(LinuxKernel()),
                                      ContainerSpec)
    return AppService(
        AppRecords(node.db), images, containers,
        dns=DnsRecords(s.dns_hosts_file),
        diagnostics=Diagnostics(s.state_dir, network_diagnostics),
        interface_ip=interface_ip,
        stop_grace=s.runtime.stop_grace_seconds,
    )
