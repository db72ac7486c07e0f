"""A 4lock-core CRI endpoint for benchmarks: the same services the daemon wires, on given paths.

    .venv/bin/python bench/cri_node.py --workdir DIR --socket SOCK --registry URL --cni-conf DIR

Builds the pod service (CNI), image service (pulling straight from ``--registry``), the
overlay snapshotter and the container service (fork server started first, before any
thread), registers the CRI servicers on a ``grpc.aio`` server on ``--socket`` and serves
until SIGTERM. Used by ``bench/cri_bench.py`` so that the client process is the same for
4lock-core and containerd.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.runtime.forkserver import start_forkserver


@dataclass
class BenchNode:
    settings: Any
    pods: Any = None
    containers: Any = None
    images: Any = None
    snapshotter: Any = None
    closers: list[Any] = field(default_factory=list)


async def serve(args: argparse.Namespace, forkserver: Any) -> None:
    import grpc

    from app.api.cri.servicers import add_cri_servicers
    from app.config import CriSettings, RuntimeSettings, Settings
    from app.content.store import LocalContentStore
    from app.oci.manifest import Platform
    from app.runtime.images.fetch import RegistryFetcher
    from app.runtime.images.pull import Puller
    from app.runtime.images.unpacker import LayerUnpacker
    from app.runtime.network.cni import CniClient
    from app.runtime.snapshots.layers import LayerSnapshots
    from app.runtime.snapshots.overlay import OverlaySnapshotter
    from app.services.containers import ContainerService
    from app.services.images import ImageService
    from app.services.pods import PodService
    from app.state.db import open_database

    work = Path(args.workdir)
    settings = Settings(state_dir=work / "state", run_dir=Path(args.run_dir),
                        cri=CriSettings(cni_conf_dir=Path(args.cni_conf)))
    db = open_database(f"sqlite:///{work / 'vapp.db'}")
    store = LocalContentStore(work / "content")
    layers = LayerSnapshots(work / "snapshots")
    fetcher = RegistryFetcher(store, args.registry)
    puller = Puller(fetcher, store, layers, LayerUnpacker.for_this_process(), platform=Platform.host())
    node = BenchNode(settings)
    node.images = ImageService(db, puller, layers, store)
    node.snapshotter = OverlaySnapshotter(layers, work / "rootfs")
    node.containers = ContainerService(db, forkserver, state_dir=settings.state_dir, run_dir=settings.run_dir,
                                       settings=RuntimeSettings(stop_grace_seconds=2.0))
    node.pods = PodService(db, settings.state_dir, settings.run_dir,
                           CniClient(Path(args.cni_conf), [Path("/usr/lib/cni")], work / "cni"))
    server = grpc.aio.server()
    add_cri_servicers(server, node)
    server.add_insecure_port(f"unix:{args.socket}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for closer in node.closers:
        await closer()
    await server.stop(1)
    await node.containers.close()
    await fetcher.aclose()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--cni-conf", required=True)
    args = ap.parse_args()
    forkserver = start_forkserver()  # before grpc or asyncio start any thread
    try:
        asyncio.run(serve(args, forkserver))
    finally:
        forkserver.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
