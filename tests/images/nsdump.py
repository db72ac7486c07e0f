"""Test helper: apply a snapshotter's mount description, print the tree as JSON.

Run inside a private mount namespace (``unshare -m``, or ``unshare --user ... -m``
rootless) so nothing leaks onto the host: ``python -m tests.images.nsdump
TYPE SOURCE DATA TARGET``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.images.conftest import tree


def main() -> int:
    kind, source, data, target = sys.argv[1:5]
    t0 = time.perf_counter()
    if kind == "overlay":
        subprocess.run(["mount", "-t", "overlay", source, "-o", data, target], check=True)
    elif kind == "fuse-overlayfs":
        subprocess.run(["fuse-overlayfs", "-o", data, target], check=True)
    elif kind == "bind":
        subprocess.run(["mount", "--rbind", source, target], check=True)
    mount_ms = (time.perf_counter() - t0) * 1000
    out = {k: list(v) for k, v in tree(Path(target)).items()}
    if kind == "fuse-overlayfs":
        subprocess.run(["fusermount3" if _has("fusermount3") else "fusermount", "-u", target], check=False)
    print(json.dumps({"tree": out, "mount_ms": mount_ms}))
    return 0


def _has(binary: str) -> bool:
    import shutil

    return shutil.which(binary) is not None


if __name__ == "__main__":
    sys.exit(main())
