"""The real app stack for behaviour tests: registry pulls, layer snapshots, overlay rootfs, containers.

Built the way ``app/wiring.py`` composes it, on temp dirs (the suite runs as
root; the overlay rootfs is mounted on the host through the kernel seam):

    AppService ─ ImagePullAdapter ─ ImageService ─ Puller ─ RegistryFetcher (the suite's registry)
               └ ContainerAdapter ─ OverlaySnapshotter + KernelRootfsMounter
                                  └ ContainerService ─ fork server, native runtime

``restart()`` drops every in-memory object and builds a fresh stack on the same
state (database, snapshots, container records), as a daemon restart does;
the containers themselves keep running under their shims.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from app.config import RuntimeSettings
from app.content.store import LocalContentStore
from app.oci.manifest import Platform
from app.runtime.forkserver import ForkServer
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.kernel.linux import LinuxKernel
from app.runtime.network.diag import interface_ip, network_diagnostics
from app.runtime.oci.spec import ContainerSpec
from app.runtime.snapshots.layers import LayerSnapshots
from app.runtime.snapshots.overlay import OverlaySnapshotter
from app.services.app_engines import ContainerAdapter, ImagePullAdapter, KernelRootfsMounter
from app.services.app_records import AppRecords
from app.services.apps import AppService
from app.services.containers import ContainerService
from app.services.diagnostics import Diagnostics
from app.services.dns import DnsRecords
from app.services.images import ImageService
from app.state.db import Database, open_database


class AppStack:
    def __init__(self, root: Path, registry_url: str, forkserver: ForkServer) -> None:
        self.root = root
        self.registry_url = registry_url
        self.forkserver = forkserver
        self.run_dir = Path(f"/tmp/vapps-{uuid.uuid4().hex[:8]}")  # short: shim sockets live here
        self.db: Database | None = None
        self.fetcher: RegistryFetcher | None = None
        self.containers: ContainerService | None = None
        self.apps: AppService | None = None

    async def build(self) -> AppService:
        self.db = open_database(f"sqlite:///{self.root / 'vapp.db'}")
        store = LocalContentStore(self.root / "content")
        layers = LayerSnapshots(self.root / "snapshots")
        self.fetcher = RegistryFetcher(store, self.registry_url)
        puller = Puller(self.fetcher, store, layers, LayerUnpacker.for_this_process(),  # type: ignore[arg-type]
                        platform=Platform("linux", "amd64"), retry_deadline=2)
        images = ImageService(self.db, puller, layers, store)
        self.containers = ContainerService(self.db, self.forkserver, state_dir=self.root / "state",
                                           run_dir=self.run_dir,
                                           settings=RuntimeSettings(stop_grace_seconds=2.0))
        await self.containers.restore()
        snapshotter = OverlaySnapshotter(layers, self.root / "snapshots")
        pull = ImagePullAdapter(images)
        engine = ContainerAdapter(self.containers, pull, snapshotter, KernelRootfsMounter(LinuxKernel()),
                                  ContainerSpec)
        self.apps = AppService(
            AppRecords(self.db), pull, engine,
            dns=DnsRecords(self.root / "dns" / "hosts"),
            diagnostics=Diagnostics(self.root, network_diagnostics, item_timeout=5.0),
            interface_ip=interface_ip, stop_grace=2.0,
        )
        await self.apps.recover()
        return self.apps

    async def close(self) -> None:
        """Forget the in-memory stack (containers keep running), like a daemon exit."""
        if self.containers is not None:
            await self.containers.close()
        if self.fetcher is not None:
            await self.fetcher.aclose()
        if self.db is not None:
            self.db.close()
        self.apps = self.containers = None

    async def restart(self) -> AppService:
        await self.close()
        return await self.build()

    async def destroy(self) -> None:
        """Stop and remove every app container, then close."""
        if self.apps is not None:
            for app in await self.apps.list_apps():
                with contextlib.suppress(Exception):
                    await self.apps.stop_app(app.app_id, 0)
        if self.containers is not None:
            for info in await self.containers.list():
                with contextlib.suppress(Exception):
                    await self.containers.remove(info.id, force=True)
        await self.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def spec(app_id: str, image: str, **kw: Any) -> dict[str, Any]:
    return {"app_id": app_id, "name": kw.pop("name", app_id), "image": image,
            "command": kw.pop("command", ["sh", "-c", "exec sleep 300"]), **kw}
