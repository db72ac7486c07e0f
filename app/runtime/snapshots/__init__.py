"""Layer snapshots keyed by chain ID, and container root filesystems built on them.

Disk layout (``<state_dir>/snapshots``)::

    snapshots/
      layers/<chainid-hex>/      one committed layer (rename of a tmp dir = commit)
        fs/                      the layer's changeset, overlay whiteout format
        meta.json                {chain_id, diff_id, parent, size, created}
      layers/.tmp-<hex>-<rand>/  extraction in progress; removed on error and at start
      containers/<id>/           per-container state of the snapshotter in use
        upper/ work/             overlay / fuse-overlayfs
        rootfs/                  copy snapshotter (a merged copy), or the mount point

Chain IDs (image-spec): ``chain(L0) = diffid(L0)``,
``chain(Ln) = sha256(chain(Ln-1) + " " + diffid(Ln))``. A layer snapshot is
shared by every image whose layer stack starts the same way.

Lifecycle of a container root filesystem (worked example)::

    mounts = snapshotter.prepare("c1", [chain0, chain1, chain2])   # data, nothing mounted
    apply the mounts on <target> (the kernel seam, or fuse-overlayfs for that type)
    ... container runs, writes land in containers/c1/upper ...
    unmount <target>; snapshotter.remove("c1")

Snapshotters return :class:`Mount` descriptions (what containerd calls
``mount.Mount``); applying them is the caller's job.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Mount:
    """One mount to apply on the container's rootfs target, in list order.

    ``type``: ``overlay`` (mount(2) with ``options`` joined by commas as data),
    ``fuse-overlayfs`` (run ``fuse-overlayfs -o <options> <target>``),
    ``bind`` (bind ``source`` onto the target; ``rbind``/``ro`` in options).
    """

    type: str
    source: str
    options: tuple[str, ...] = field(default_factory=tuple)

    def data(self) -> str:
        return ",".join(o for o in self.options if o not in ("rbind", "bind", "ro", "rw"))


class Snapshotter(Protocol):
    """Container root filesystems over committed layer snapshots.

    ``prepare`` is idempotent for one container id (a second call returns the
    same mounts, keeping what the container wrote); ``remove`` deletes the
    container's writable state and is a no-op for an unknown id.
    """

    name: str

    def prepare(self, container_id: str, chain: list[str]) -> list[Mount]: ...
    def remove(self, container_id: str) -> None: ...
    def rootfs_dir(self, container_id: str) -> Path: ...


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of every prefix of a layer stack (bottom first)."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
