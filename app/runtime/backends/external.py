"""crun and runc backends: the same bundle through the Debian binaries.

crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"). Each
invocation is therefore wrapped (machine-notes): as root, a private mount namespace
with ``/sys/fs/cgroup/unified`` unmounted; rootless, a user+mount namespace with a tmpfs
over it and a nested user namespace mapping the caller's own uid back, so crun still
runs as that uid (rootless mode, the bundle's ID maps stay valid).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from typing import Any

from app.runtime.backends.base import RuntimeFailure
from app.runtime.kernel import Kernel
from app.runtime.oci import state

_ROOT_WRAP = 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec "$@"'
_USER_WRAP = 'mount -t tmpfs none /sys/fs/cgroup/unified && exec unshare -U --map-user={uid} --map-group={gid} "$@"'


def _is_hybrid() -> bool:
    return os.path.ismount("/sys/fs/cgroup/unified")


class ExternalRuntime:
    def __init__(self, name: str, root: str, binary: str | None = None) -> None:
        if name not in ("crun", "runc"):
            raise RuntimeFailure(f"unknown runtime {name!r}")
        self.name = name
        self.root = root
        self.binary = binary or shutil.which(name) or f"/usr/sbin/{name}"

    def argv(self, *args: str) -> list[str]:
        base = [self.binary, "--root", self.root, *args]
        if self.name != "crun" or not _is_hybrid():
            return base
        if os.geteuid() == 0:
            return ["unshare", "-m", "--propagation", "private", "sh", "-c", _ROOT_WRAP, "sh", *base]
        wrap = _USER_WRAP.format(uid=os.geteuid(), gid=os.getegid())
        return ["unshare", "-U", "-r", "-m", "sh", "-c", wrap, "sh", *base]

    def _run(self, *args: str, timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(self.argv(*args), capture_output=True, timeout=timeout, check=False, **kw)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeFailure(f"{self.name} {args[0]}: {exc}") from exc
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
            raise RuntimeFailure(f"{self.name} {args[0]}: {message}", result.returncode)
        return result

    def shim_create(
        self, kernel: Kernel, container_id: str, bundle: str, console: socket.socket | None
    ) -> tuple[int, int | None]:
        """Runs in the shim: the container's stdio are the shim's fds 0-2 (inherited by the init)."""
        if console is not None:
            raise RuntimeFailure(f"{self.name}: terminals are supported with the native runtime only")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        pid_file = os.path.join(self.root, f"{container_id}.pid")
        log_file = os.path.join(self.root, f"{container_id}.log")
        # The container inherits fds 0-2 (the shim's log pipes): never a pipe we wait on here.
        argv = self.argv("--log", log_file, "create", "--bundle", bundle, "--pid-file", pid_file, container_id)
        proc = subprocess.run(argv, stdin=0, stdout=1, stderr=2, check=False)
        if proc.returncode != 0:
            try:
                with open(log_file) as fh:
                    detail = fh.read().strip()[-1000:]
            except OSError:
                detail = f"exit status {proc.returncode}"
            raise RuntimeFailure(f"{self.name} create: {detail}", proc.returncode)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log_file)
        with open(pid_file) as fh:
            pid = int(fh.read().strip())
        os.unlink(pid_file)
        info = state.proc_stat(pid)
        return pid, info[1] if info else None

    def start(self, container_id: str) -> None:
        self._run("start", container_id)

    def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        self._run("kill", *(["--all"] if all_processes else []), container_id, str(sig))

    def delete(self, container_id: str, force: bool = False) -> None:
        if self.state(container_id) is None:
            return
        self._run("delete", *(["--force"] if force else []), container_id)

    def state(self, container_id: str) -> dict[str, Any] | None:
        try:
            result = self._run("state", container_id)
        except RuntimeFailure:
            return None
        data: dict[str, Any] = json.loads(result.stdout)
        return data
