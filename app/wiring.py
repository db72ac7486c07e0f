"""The composition root: builds every concrete object from :class:`Settings` and hands them in.

Nothing registers itself at import time. Each engine has one marked slot in
:func:`build_node` (services) and :func:`build_listeners` (front doors). Handlers
reach services through the :class:`Node` (``request.app.state.node`` in FastAPI).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter

from app.config import Settings
from app.state.db import Database, open_database

log = logging.getLogger(__name__)


class Listener(Protocol):
    """A front door bound by the daemon. ``start`` returns the addresses it listens on."""

    name: str

    async def start(self) -> list[str]: ...

    async def stop(self, grace: float) -> None: ...


@dataclass
class Node:
    """Everything the front doors may call. Slots are ``None`` until their engine is wired."""

    settings: Settings
    db: Database
    content: Any = None  # app.content.store.LocalContentStore
    cache: Any = None  # app.services.cache (blob pull-through cache)
    images: Any = None  # app.services.images
    containers: Any = None  # app.services.containers
    network: Any = None  # app.runtime.network.NetworkManager
    apps: Any = None  # app.services.apps
    pods: Any = None  # app.services.pods
    bootstrap: Any = None  # app.bootstrap service
    routers: list[APIRouter] = field(default_factory=list)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)

    async def close(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                result = closer()
                if result is not None:
                    await result
        self.db.close()


async def build_node(settings: Settings) -> Node:
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = open_database(settings.db_url)
    node = Node(settings=settings, db=db)

    # --- slot: blob (content store, cache service, admin router) -----------------
    from app.api.registry import create_admin_router
    from app.blob.cache import BlobCache
    from app.content import LocalContentStore
    from app.oci.manifest import Platform
    from app.services.cache import CacheService

    node.content = LocalContentStore(settings.content_dir)
    # The cache is built even with blob.enabled = false: the runtime pulls through it in-process
    # (node.cache.fetcher); "enabled" only decides whether the /v2 listener is opened.
    node.cache = CacheService(
        BlobCache(settings.blob, node.content, db),
        platform=Platform.parse(settings.runtime.platform) if settings.runtime.platform else Platform.host(),
    )
    await node.cache.start()
    node.closers.append(node.cache.close)
    node.routers.append(create_admin_router(node.cache))
    # --- slot: runtime images ----------------------------------------------------
    import asyncio

    from app.api.http.routes_images import router as images_router
    from app.runtime.images.pull import Puller
    from app.runtime.images.unpacker import LayerUnpacker
    from app.runtime.snapshots.layers import LayerSnapshots
    from app.runtime.snapshots.select import build_snapshotter
    from app.services.images import ImageService

    unpacker = LayerUnpacker.for_this_process()
    snap_root = settings.state_dir / "snapshots"
    layers = LayerSnapshots(snap_root, remover=unpacker.remove)
    snapshotter, _why = build_snapshotter(
        settings.runtime.snapshotter, layers, snap_root, remover=unpacker.remove, merger=unpacker.merge,
        mounts_in_userns=settings.runtime.default_runtime == "native",  # its init mounts a rootless overlay
    )
    puller = Puller(
        node.cache.fetcher, node.content, layers, unpacker,
        platform=Platform.parse(settings.runtime.platform) if settings.runtime.platform else Platform.host(),
        concurrency=settings.runtime.pull_concurrency,
    )  # fmt: skip
    node.images = ImageService(db, puller, layers, node.content, pins=node.cache.fetcher, snapshotter=snapshotter)
    await asyncio.to_thread(node.images.restore)  # drop interrupted extractions, re-pin blobs
    node.routers.append(images_router)
    # --- slot: runtime containers + network --------------------------------------
    from app.api.http.routes_network import router as network_router
    from app.runtime.network.manager import build_network_manager

    node.network = build_network_manager(settings, db)
    await node.network.reconcile()  # attachments whose namespace died while we were down
    node.routers.append(network_router)
    from app.runtime import forkserver
    from app.services.containers import ContainerService

    node.containers = ContainerService(db, forkserver.shared(), state_dir=settings.state_dir,
                                       run_dir=settings.run_dir, settings=settings.runtime, network=node.network)
    await node.containers.restore()  # re-adopt running containers, pick up exits from while we were down
    node.images.set_in_use(node.containers.uses_image)  # an image in use cannot be removed
    node.closers.append(node.containers.close)  # shims (and containers) keep running
    # --- slot: apps (vappc) --------------------------------------------------------
    from app.api.http.routes_apps import router as apps_router
    from app.services.app_engines import build_app_service

    node.apps = build_app_service(node)
    await node.apps.recover()
    node.routers.append(apps_router)
    # --- slot: pods (CRI) -----------------------------------------------------------
    if settings.cri.enabled:
        from app.runtime.network.cni import CniClient
        from app.services.pods import PodService

        cri = settings.cri
        node.pods = PodService(db, settings.state_dir, settings.run_dir,
                               CniClient(cri.cni_conf_dir, cri.cni_bin_dirs, settings.state_dir / "cni"),
                               fallback=node.network)  # rootless pods: the runtime's pod network
        await node.pods.restore()  # re-adopt live pod holders, settle dead ones
    # --- slot: bootstrap -----------------------------------------------------------
    if settings.bootstrap.enabled:
        from app.api.http.routes_bootstrap import router as bootstrap_router
        from app.bootstrap.factory import build_bootstrap

        # Components run as containers through the app service's engine adapters when the
        # engines are wired, else as host processes; the loop runs as a background task.
        apps = node.apps
        node.bootstrap = build_bootstrap(settings, db, puller=getattr(apps, "images", None),
                                         runner=getattr(apps, "containers", None))
        node.routers.append(bootstrap_router)
        node.background.append(node.bootstrap.run_forever)
    return node


def build_listeners(node: Node, admin_app: Any) -> list[Listener]:
    """Front doors in start order; the daemon stops them in reverse."""
    from app.api.cri.server import CriListener
    from app.api.http.asgi_listener import AsgiListener

    s = node.settings
    listeners: list[Listener] = [AsgiListener("admin", admin_app, s.admin_listen)]
    listeners.append(CriListener(node))
    # --- slot: registry /v2 listener (blob) ---------------------------------------
    if s.blob.enabled and node.cache is not None:
        from app.api.registry import create_registry_app
        from app.api.registry.server import RegistryServer  # lean HTTP/1.1 with sendfile for blobs

        listeners.append(
            RegistryServer("registry", create_registry_app(node.cache, s.blob.htpasswd), s.blob.listen,
                           tls_cert=s.blob.tls_cert, tls_key=s.blob.tls_key)
        )
    # --- slot: vappc listener --------------------------------------------------------
    if node.apps is not None:
        from app.vappc.server import VappcServer

        listeners.append(VappcServer(s.vappc, node.apps, socket_mode=s.socket_mode, socket_group=s.socket_group,
                                     bootstrap=node.bootstrap))  # None when bootstrap is disabled
    return listeners
