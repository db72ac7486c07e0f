"""Small utilities around network namespaces and helper processes (shared with CRI pods).

A namespace is always named by a path: ``/proc/<pid>/ns/net`` for a process's,
``/run/netns/<name>`` for a named (bind-mounted) one. Its identity is the inode of
that file; the attachment table stores it so a restart can tell a live namespace
from a recycled pid. Everything that needs privileges or another namespace is an
exec'd command (``ip``, ``nsenter``): the daemon is threaded and must not fork.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from app.errors import Category, FailedPrecondition, Internal, InvalidArgument, NotFound

NETNS_RUN_DIR = Path("/run/netns")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def netns_path(target: int | str) -> str:
    """``1234`` → ``/proc/1234/ns/net``; a path is returned as is once it exists."""
    path = f"/proc/{target}/ns/net" if isinstance(target, int) else str(target)
    if not os.path.exists(path):
        raise NotFound(f"network namespace {path} does not exist", category=Category.NETWORK)
    return path


def netns_inode(path: str | None) -> int | None:
    """The namespace's identity, or None when it is gone (or unreadable)."""
    if not path:
        return None
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def netns_alive(path: str | None, inode: int | None) -> bool:
    """True while ``path`` still names the namespace that had ``inode``."""
    return inode is not None and netns_inode(path) == inode


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        raise FailedPrecondition("ip is not installed (Debian package iproute2)",
                                 category=Category.NETWORK) from exc


def create_named(name: str) -> str:
    """Create ``/run/netns/<name>`` (root) with loopback up; returns its path."""
    if not _NAME.match(name):
        raise InvalidArgument(f"bad netns name {name!r}", category=Category.NETWORK)
    proc = _ip("netns", "add", name)
    if proc.returncode != 0:
        raise Internal(f"ip netns add {name}: {proc.stderr.strip()}", category=Category.NETWORK)
    _ip("-n", name, "link", "set", "lo", "up")
    return str(NETNS_RUN_DIR / name)


def remove_named(name: str) -> None:
    """Remove a named namespace; a missing one is fine."""
    if not (NETNS_RUN_DIR / name).exists():
        return
    proc = _ip("netns", "delete", name)
    if proc.returncode != 0 and (NETNS_RUN_DIR / name).exists():
        raise Internal(f"ip netns delete {name}: {proc.stderr.strip()}", category=Category.NETWORK)


def loopback_up_via_nsenter(pid: int) -> None:
    """Bring ``lo`` up in a rootless container's netns (needs its user namespace: exec nsenter)."""
    argv = ["nsenter", "--preserve-credentials", "-U", "-n", "-t", str(pid), "ip", "link", "set", "lo", "up"]
    if os.geteuid() == 0:
        argv = ["nsenter", "-n", "-t", str(pid), "ip", "link", "set", "lo", "up"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise Internal(f"cannot bring lo up in pid {pid}'s netns: {proc.stderr.strip()}",
                       category=Category.NETWORK)


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def helper_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line mentions ``marker`` (guards against pid reuse)."""
    cmd = process_cmdline(pid)
    if not cmd:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and any(marker in part for part in cmd)


def _exited(pid: int) -> bool:
    """Gone or a zombie: only then are its sockets closed (its cmdline empties earlier, at exit_mm)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def stop_helper(pid: int, marker: str, grace: float = 1.0, *, wait: bool = True) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if it is still our helper.

    With ``wait`` it returns once the helper has fully exited, so its published ports
    are free again (an exit takes tens of ms here; without ports there is nothing to wait for).
    """
    if not helper_alive(pid, marker):
        _reap(pid)
        return
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if not wait:
            _reap(pid)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if _exited(pid):
                return
            time.sleep(0.002)


def _reap(pid: int) -> None:
    """Collect the exit status if the helper is our child (slirp4netns is; pasta daemonizes)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
