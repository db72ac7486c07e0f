"""The real engine stack for the container driver, on temp dirs, and the etcd test image.

``EngineStack`` is what ``app/wiring.py`` assembles for a daemon: content store,
registry fetcher, layer snapshots, image service, overlay snapshotter, fork
server, container service, and the app service's adapters over them (which the
bootstrap ContainerServiceDriver drives).

``build_etcd_image`` packages Debian's ``etcd`` binary (from ``etcd-server``) and the
shared libraries ``ldd`` lists into a one-layer OCI image and pushes it with
skopeo to the shared test registry.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.bootstrap.container_driver import ContainerServiceDriver
from app.config import RuntimeSettings
from app.content.store import LocalContentStore
from app.oci.manifest import Platform
from app.runtime.forkserver import start_forkserver
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.kernel.linux import LinuxKernel
from app.runtime.oci.spec import ContainerSpec
from app.runtime.snapshots.layers import LayerSnapshots
from app.runtime.snapshots.overlay import OverlaySnapshotter
from app.services.app_engines import ContainerAdapter, ImagePullAdapter, KernelRootfsMounter
from app.services.containers import ContainerService
from app.services.images import ImageService
from app.state.db import Database
from tests.fixtures.oci_layout import LayoutWriter
from tests.fixtures.tarbuild import Entry, dir_, file_, make_layer, symlink


def _libs(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.append(path)
    return libs


def build_etcd_image(out: Path, registry_host: str, tag: str) -> str:
    entries: list[Entry] = [dir_("usr"), dir_("usr/bin"), dir_("lib"), dir_("lib64"), dir_("etc"),
                            dir_("tmp", 0o1777), dir_("var"), dir_("var/lib"),
                            file_("etc/passwd", "root:x:0:0:root:/root:/bin/false\n"),
                            file_("etc/group", "root:x:0:\n"), file_("etc/nsswitch.conf", "hosts: files\n")]
    seen = {e.path for e in entries}
    for path in ["/usr/bin/etcd", *_libs("/usr/bin/etcd")]:
        real = Path(path).resolve()
        parents = Path(path).parent.relative_to("/").parts
        for i in range(1, len(parents) + 1):
            d = "/".join(parents[:i])
            if d not in seen:
                entries.append(dir_(d))
                seen.add(d)
        rel = path.lstrip("/")
        if str(real) != path:
            entries.append(symlink(rel, str(real)))
            rel = str(real).lstrip("/")
            for i in range(1, len(real.parent.parts)):
                d = "/".join(real.parent.parts[1:i + 1])
                if d not in seen:
                    entries.append(dir_(d))
                    seen.add(d)
        if rel not in seen:
            entries.append(file_(rel, real.read_bytes(), 0o755))
            seen.add(rel)
    layer = make_layer(entries, "zstd")
    layout = out / "etcd-layout"
    writer = LayoutWriter(layout)
    desc = writer.put_image([layer], config={"Cmd": ["/usr/bin/etcd"], "Entrypoint": None})
    writer.tag(desc, tag)
    writer.finish()
    ref = f"{registry_host}/bootstrap/etcd:{tag}"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
                    "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{ref}"],
                   check=True, capture_output=True, timeout=120)
    return ref


@dataclass
class EngineStack:
    images: ImageService
    containers: ContainerService
    driver: ContainerServiceDriver
    fetcher: RegistryFetcher
    forkserver: Any
    run_dir: Path

    async def close(self) -> None:
        for info in await self.containers.list():
            with contextlib.suppress(Exception):
                await self.driver.runner.remove(info.id)
        await self.containers.close()
        await self.fetcher.aclose()
        self.forkserver.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def build_stack(db: Database, root: Path, registry_url: str, forkserver: Any | None = None) -> EngineStack:
    store = LocalContentStore(root / "content")
    layers = LayerSnapshots(root / "snapshots")
    fetcher = RegistryFetcher(store, registry_url)
    puller = Puller(fetcher, store, layers, LayerUnpacker.for_this_process(), platform=Platform("linux", "amd64"))
    images = ImageService(db, puller, layers, store)
    fs = forkserver or start_forkserver()
    run_dir = Path(f"/tmp/vbs-{uuid.uuid4().hex[:8]}")  # short: socket paths
    containers = ContainerService(db, fs, state_dir=root / "state", run_dir=run_dir,
                                  settings=RuntimeSettings(stop_grace_seconds=2.0))
    pull = ImagePullAdapter(images)
    runner = ContainerAdapter(containers, pull, OverlaySnapshotter(layers, root / "snap"),
                              KernelRootfsMounter(LinuxKernel()), ContainerSpec)
    driver = ContainerServiceDriver(pull, runner, root / "bootstrap-containers", stop_grace=2.0)
    return EngineStack(images, containers, driver, fetcher, fs, run_dir)
