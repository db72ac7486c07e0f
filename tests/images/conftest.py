"""Image-area helpers: a pull environment on temp dirs and tree comparison."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.content.store import LocalContentStore
from app.oci.manifest import Platform
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.snapshots.layers import LayerSnapshots


@dataclass
class PullEnv:
    root: Path
    store: LocalContentStore
    layers: LayerSnapshots
    unpacker: LayerUnpacker
    fetcher: RegistryFetcher

    def puller(self, platform: str | None = None, **kw: object) -> Puller:
        p = Platform.parse(platform) if platform else Platform("linux", "amd64")
        return Puller(self.fetcher, self.store, self.layers, self.unpacker, platform=p, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def pull_env(tmp_path: Path, registry) -> PullEnv:  # type: ignore[no-untyped-def]
    store = LocalContentStore(tmp_path / "content")
    env = PullEnv(
        tmp_path,
        store,
        LayerSnapshots(tmp_path / "snapshots"),
        LayerUnpacker.for_this_process(),
        RegistryFetcher(store, registry.url),
    )
    yield env
    await env.fetcher.aclose()


def tree(root: Path) -> dict[str, tuple]:
    """path → (type, mode, uid, gid, link target or content hash), never following links."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                extra: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    extra = hashlib.sha256(fh.read()).hexdigest()
            else:
                extra = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra)
    return out


def umoci_rootfs(layout: Path, dest: Path, tag: str = "latest") -> Path:
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(dest)], check=True, capture_output=True)
    return dest / "rootfs"
