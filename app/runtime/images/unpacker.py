"""Pick how layers are extracted for this process: as root, rootless mapped, rootless flat.

=====================  ===============================  =====================================
daemon                 where                            ownership / whiteouts / devices
=====================  ===============================  =====================================
root                   in process (worker thread)       preserved / char 0/0 + trusted.* / made
unprivileged + subuid  helper in a mapped user ns       mapped / char 0/0 + user.* / skipped
unprivileged, no ids   in process                       daemon's own / .wh. files / skipped
=====================  ===============================  =====================================
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from app.runtime.images import rootless
from app.runtime.images.safefs import remove_tree
from app.runtime.images.unpack import UnpackOptions, UnpackResult, apply_layer


class LayerUnpacker:
    def __init__(self, idmap: rootless.IdMap | None = None, *, is_root: bool | None = None) -> None:
        self.is_root = os.geteuid() == 0 if is_root is None else is_root
        self.idmap = None if self.is_root else idmap
        if self.is_root:
            self.options = UnpackOptions(whiteouts="overlay", opaque_xattr="trusted.overlay.opaque")
        elif self.idmap is not None:
            self.options = rootless.rootless_options(self.idmap)
        else:
            self.options = UnpackOptions(
                whiteouts="overlay", opaque_xattr="user.overlay.opaque", chown=False, devices=False
            )

    @classmethod
    def for_this_process(cls) -> LayerUnpacker:
        return cls(None if os.geteuid() == 0 else rootless.current_idmap())

    @property
    def mode(self) -> str:
        return "root" if self.is_root else "rootless-userns" if self.idmap else "rootless-flat"

    def __call__(self, blob: Path, media_type: str, dest: Path) -> UnpackResult:
        # Blobs come from the content store, verified at ingest: only the diff ID is computed.
        opts = replace(self.options, hash_blob=False)
        if self.idmap is not None:
            return rootless.unpack_in_userns(self.idmap, blob, media_type, dest, opts)
        with open(blob, "rb") as src:
            return apply_layer(src, dest, media_type, opts)

    def apply_flat(self, blob: Path, media_type: str, dest: Path) -> UnpackResult:
        """Apply a layer on top of a flattened tree (whiteouts remove), as ``umoci unpack`` does."""
        opts = replace(self.options, whiteouts="apply")
        if self.idmap is not None:
            return rootless.unpack_in_userns(self.idmap, blob, media_type, dest, opts)
        with open(blob, "rb") as src:
            return apply_layer(src, dest, media_type, opts)

    def merge(self, layer_dirs: list[Path], dest: Path) -> None:
        """Flatten layer snapshots into ``dest`` (the copy snapshotter's merger)."""
        if self.idmap is not None:
            rootless.merge_in_userns(self.idmap, layer_dirs, dest)
            return
        from app.runtime.snapshots.copy import merge_layers

        merge_layers(layer_dirs, dest)

    def remove(self, path: Path) -> None:
        """Remove a tree this unpacker wrote (files of subordinate IDs need the namespace)."""
        if self.idmap is not None:
            rootless.remove_in_userns(self.idmap, path)
        else:
            remove_tree(path)
