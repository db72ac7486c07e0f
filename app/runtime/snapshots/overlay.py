"""Overlay-backed container root filesystems: native overlayfs or fuse-overlayfs.

``prepare`` only creates ``containers/<id>/{upper,work}`` and returns one mount
description; the lower dirs are the committed layer snapshots, topmost first.
Inside a user namespace native overlay needs ``userxattr`` (whiteouts and
opaque markers are then read from ``user.overlay.*``; the rootless unpacker
writes exactly those).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

from app.errors import Category, InvalidArgument, NotFound
from app.runtime.images.safefs import remove_tree
from app.runtime.snapshots import Mount
from app.runtime.snapshots.layers import LayerSnapshots

# mount(2) copies at most one page of option data.
MAX_MOUNT_DATA = 4000


def check_container_id(container_id: str) -> str:
    if not container_id or "/" in container_id or container_id in (".", "..") or len(container_id) > 200:
        raise InvalidArgument(f"invalid container id {container_id!r}", category=Category.RUNTIME)
    return container_id


class OverlaySnapshotter:
    def __init__(
        self,
        layers: LayerSnapshots,
        root: Path,
        *,
        kind: Literal["overlay", "fuse-overlayfs"] = "overlay",
        userxattr: bool = False,
        remover=remove_tree,  # type: ignore[no-untyped-def]
    ) -> None:
        self.name: str = kind
        self.layers = layers
        self.root = Path(root) / "containers"
        self.root.mkdir(parents=True, exist_ok=True)
        self.userxattr = userxattr
        self._remove = remover

    def rootfs_dir(self, container_id: str) -> Path:
        return self.root / check_container_id(container_id) / "rootfs"

    def prepare(self, container_id: str, chain: list[str]) -> list[Mount]:
        base = self.root / check_container_id(container_id)
        for chain_id in chain:
            if not self.layers.has(chain_id):
                raise NotFound(f"layer snapshot {chain_id} missing", category=Category.IMAGE)
        lowers = [str(self.layers.fs(c)) for c in reversed(chain)]
        if not lowers:
            (base / "empty").mkdir(parents=True, exist_ok=True)
            lowers = [str(base / "empty")]
        os.makedirs(base, exist_ok=True)
        for sub in ("upper", "work", "rootfs"):  # plain mkdirs: this is on the container-start path
            with contextlib.suppress(FileExistsError):
                os.mkdir(base / sub)
        options = [f"lowerdir={':'.join(lowers)}", f"upperdir={base / 'upper'}", f"workdir={base / 'work'}"]
        if self.userxattr and self.name == "overlay":
            options.append("userxattr")
        mount = Mount(type=self.name, source="overlay", options=tuple(options))
        if len(mount.data()) > MAX_MOUNT_DATA:
            raise InvalidArgument(
                f"image has too many layers for one overlay mount ({len(chain)})",
                category=Category.IMAGE,
                details={"layers": len(chain)},
            )
        return [mount]

    def remove(self, container_id: str) -> None:
        base = self.root / check_container_id(container_id)
        if base.exists():
            self._remove(base)
