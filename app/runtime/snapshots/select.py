"""Build the configured snapshotter (``runtime.snapshotter``: auto | overlay | fuse-overlayfs | copy)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from app.runtime.images.safefs import remove_tree
from app.runtime.snapshots import Snapshotter
from app.runtime.snapshots.copy import CopySnapshotter
from app.runtime.snapshots.layers import LayerSnapshots
from app.runtime.snapshots.overlay import OverlaySnapshotter
from app.runtime.snapshots.probe import probe_snapshotter

log = logging.getLogger(__name__)


def choose_snapshotter(
    choice: str, root: Path, *, rootless: bool | None = None, mounts_in_userns: bool = False
) -> tuple[str, str]:
    """``(name, reason)`` the node will use: the one decision both the daemon and ``vapp-core check`` show.

    Rootless, overlay and fuse-overlayfs only work when whoever applies the mounts
    does so inside a user namespace that maps the layers' owners
    (``mounts_in_userns``): the native runtime's init mounts the overlay itself in
    the container's user+mount namespace (annotation ``org.4lock.rootfs.overlay``);
    crun/runc cannot, so with them as the default runtime a rootless ``auto``
    falls back to copy. fuse-overlayfs is never mounted in the container, so it
    also falls back to copy there.
    """
    rootless = os.geteuid() != 0 if rootless is None else rootless
    if choice != "auto":
        return choice, "configured"
    choice, reason = probe_snapshotter(root, rootless=rootless)
    if rootless and choice != "copy" and (not mounts_in_userns or choice != "overlay"):
        reason = f"{choice} works only inside a user namespace; container root filesystems are mounted outside one"
        choice = "copy"
    return choice, reason


def build_snapshotter(
    choice: str,
    layers: LayerSnapshots,
    root: Path,
    *,
    remover: Callable[[Path], None] = remove_tree,
    merger: Callable[[list[Path], Path], None] | None = None,
    rootless: bool | None = None,
    mounts_in_userns: bool = False,
) -> tuple[Snapshotter, str]:
    """``(snapshotter, reason)``, chosen by :func:`choose_snapshotter`."""
    choice, reason = choose_snapshotter(choice, root, rootless=rootless, mounts_in_userns=mounts_in_userns)
    rootless = os.geteuid() != 0 if rootless is None else rootless
    log.info("snapshotter: %s (%s)", choice, reason)
    if choice == "copy":
        return CopySnapshotter(layers, root, merger=merger, remover=remover), reason
    kind = "fuse-overlayfs" if choice == "fuse-overlayfs" else "overlay"
    snap = OverlaySnapshotter(layers, root, kind=kind, userxattr=rootless, remover=remover)  # type: ignore[arg-type]
    return snap, reason
