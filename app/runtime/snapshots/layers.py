"""Committed layer snapshots: extract into a private tmp dir, verify, rename into place.

::

    ensure(chain, parent, diff_id, unpack)
        │  layers/<hex>/meta.json exists? ──yes──► done (nothing downloaded or unpacked)
        ▼
      per-chain lock (threads of this process share one extraction)
        ▼
      layers/.tmp-<hex>-<rand>/fs  ◄── unpack(fs)  (hostile or corrupt: UnsafeEntry/BadLayer)
        │ result.diff_id == diff_id ?  no ──► remove tmp, raise BadLayer
        ▼ write meta.json, rename tmp → layers/<hex>   (the commit; a racing
          process that committed first wins, ours is discarded)
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.errors import Category, InvalidArgument, NotFound
from app.runtime.images.safefs import remove_tree
from app.runtime.images.stream import BadLayer
from app.runtime.images.unpack import UnpackResult


@dataclass(frozen=True)
class LayerInfo:
    chain_id: str
    diff_id: str
    parent: str | None
    size: int
    created: float


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or not all(c in "0123456789abcdef" for c in hexpart):
        raise InvalidArgument(f"not a sha256 digest: {digest!r}", category=Category.IMAGE)
    return hexpart


class LayerSnapshots:
    def __init__(self, root: Path, remover: Callable[[Path], None] = remove_tree) -> None:
        # ``remover``: rootless snapshots hold files of subordinate IDs the daemon
        # cannot delete itself; wiring passes one that runs in the user namespace.
        self._remove = remover
        self.root = Path(root) / "layers"
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def dir(self, chain_id: str) -> Path:
        return self.root / _hex(chain_id)

    def fs(self, chain_id: str) -> Path:
        return self.dir(chain_id) / "fs"

    def has(self, chain_id: str) -> bool:
        return (self.dir(chain_id) / "meta.json").is_file()

    def info(self, chain_id: str) -> LayerInfo:
        try:
            doc = json.loads((self.dir(chain_id) / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise NotFound(f"no layer snapshot {chain_id}", category=Category.IMAGE) from exc
        return LayerInfo(**doc)

    def list(self) -> Iterator[LayerInfo]:
        for d in sorted(self.root.iterdir()):
            if not d.name.startswith(".") and (d / "meta.json").is_file():
                yield self.info("sha256:" + d.name)

    def ensure(
        self, chain_id: str, parent: str | None, diff_id: str, unpack: Callable[[Path], UnpackResult]
    ) -> tuple[LayerInfo, bool]:
        """Commit the snapshot if missing; returns (info, True when unpacked now)."""
        if self.has(chain_id):
            return self.info(chain_id), False
        # No parent check: a layer snapshot holds only its own changeset (overlay
        # format), so layers of one image unpack in parallel and in any order.
        with self._guard:
            lock = self._locks.setdefault(chain_id, threading.Lock())
        with lock:
            if self.has(chain_id):
                return self.info(chain_id), False
            return self._unpack(chain_id, parent, diff_id, unpack), True

    def _unpack(
        self, chain_id: str, parent: str | None, diff_id: str, unpack: Callable[[Path], UnpackResult]
    ) -> LayerInfo:
        tmp = self.root / f".tmp-{_hex(chain_id)}-{uuid.uuid4().hex[:8]}"
        (tmp / "fs").mkdir(parents=True)
        try:
            res = unpack(tmp / "fs")
            if res.diff_id != diff_id:
                raise BadLayer(
                    "layer content does not match the image's diff ID",
                    details={"expected": diff_id, "actual": res.diff_id},
                )
            info = LayerInfo(chain_id, diff_id, parent, res.size, time.time())
            (tmp / "meta.json").write_text(json.dumps(info.__dict__))
            try:
                os.rename(tmp, self.dir(chain_id))
            except OSError:
                if not self.has(chain_id):  # not a lost race: a real failure
                    raise
                self._remove(tmp)
            return info
        except BaseException:
            if tmp.exists():
                self._remove(tmp)
            raise

    def remove(self, chain_id: str) -> bool:
        d = self.dir(chain_id)
        if not d.exists():
            return False
        # Rename first so a half-removed snapshot is never mistaken for a committed one.
        trash = self.root / f".tmp-rm-{_hex(chain_id)}-{uuid.uuid4().hex[:8]}"
        os.rename(d, trash)
        self._remove(trash)
        return True

    def cleanup(self) -> int:
        """Remove leftovers of interrupted extractions (start-up)."""
        n = 0
        for d in self.root.iterdir():
            if d.name.startswith(".tmp-"):
                self._remove(d)
                n += 1
        return n
