"""Choose the snapshotter: native overlay, then fuse-overlayfs, then copy.

The probe mounts a one-file overlay in a throwaway mount namespace (``unshare
-m`` as root, ``unshare -U -r -m`` with ``userxattr`` rootless), so the host's
mount table is never touched and nothing needs unmounting; it runs as separate
processes, never forking the daemon. ``vapp-core check`` prints the result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from app.runtime.images.safefs import remove_tree


def _overlay_works(scratch: Path, rootless: bool) -> tuple[bool, str]:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False, "unshare/mount(8) not installed"
    with tempfile.TemporaryDirectory(dir=scratch, prefix="probe-") as tmp:
        t = Path(tmp)
        for sub in ("lower", "upper", "work", "merged"):
            (t / sub).mkdir()
        (t / "lower" / "f").write_text("x")
        opts = f"lowerdir={t / 'lower'},upperdir={t / 'upper'},workdir={t / 'work'}"
        ns = ["unshare", "-U", "-r", "-m"] if rootless else ["unshare", "-m"]
        if rootless:
            opts += ",userxattr"
        script = f"mount -t overlay overlay -o {opts} {t / 'merged'} && rm {t / 'merged' / 'f'}"
        try:
            proc = subprocess.run([*ns, "sh", "-c", script], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"probe failed to run: {exc}"
        ok = proc.returncode == 0 and (t / "lower" / "f").exists()
        if (t / "work").exists():
            remove_tree(t / "work")  # overlay leaves work/work mode 000
        return ok, proc.stderr.strip()[-200:]


def _fuse_works() -> tuple[bool, str]:
    if shutil.which("fuse-overlayfs") is None:
        return False, "fuse-overlayfs not installed"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return False, "/dev/fuse not accessible (mode 0600? run scripts/setup-system.sh)"
    return True, ""


_PROBED: dict[tuple[int, bool], tuple[str, str]] = {}


def probe_snapshotter(scratch: Path | None = None, *, rootless: bool | None = None) -> tuple[str, str]:
    """``(name, reason)`` of the best snapshotter available to this process.

    The answer depends on the filesystem and on rootless or not, so it is kept per
    (device, rootless): the daemon's start-up check and its wiring ask about the
    same state-dir filesystem and mount a probe overlay once, not twice.
    """
    rootless = os.geteuid() != 0 if rootless is None else rootless
    scratch = Path(scratch or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    key = (scratch.stat().st_dev, rootless)
    if key not in _PROBED:
        _PROBED[key] = _probe(scratch, rootless)
    return _PROBED[key]


def _probe(scratch: Path, rootless: bool) -> tuple[str, str]:
    ok, why = _overlay_works(scratch, rootless)
    if ok:
        return "overlay", "native overlayfs" + (" in a user namespace (userxattr)" if rootless else "")
    fuse_ok, fuse_why = _fuse_works()
    if fuse_ok:
        return "fuse-overlayfs", f"native overlay unavailable ({why or 'mount failed'})"
    return "copy", f"native overlay unavailable ({why or 'mount failed'}); fuse-overlayfs: {fuse_why}"
