"""How the loop runs components: the ``ComponentDriver`` protocol and a host-process driver.

Lifecycle a driver implements (all idempotent; keys are ``<intent>.<component>``)::

    ensure_running(c) ─ absent/exited ──────────▶ create + start with c.spec_hash recorded
                      ─ running, other spec ────▶ stop, remove, create + start
                      ─ running, same spec ─────▶ nothing
    status(key)       → RuntimeStatus(state, spec_hash it runs, id, exit code, started_at)
    stop(key)         → SIGTERM, grace, SIGKILL; no error when already stopped
    remove(key)       → stop + forget; no error when unknown
    exec(key, argv)   → run a command in the component's context with a timeout
    keys()            → every component the driver knows (pruning after a lost database)

Drivers must rediscover from disk: after a daemon restart (even kill -9) the
components keep running and ``status`` must still report them.

``HostProcessDriver`` runs the component's command directly on the host, in its
own session so it outlives the daemon. It serves early tests and nodes where
the binaries are installed; mounts need no work because profiles bind host
paths at the same path. Disk layout::

    <root>/<key>/proc.json   {"pid", "starttime" (from /proc/PID/stat), "spec_hash", "started_at"}
    <root>/<key>/output.log  stdout and stderr (truncated at each start)
    <root>/<key>/exit        the exit code, written when this daemon reaped the process
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.bootstrap.model import DesiredComponent, RuntimeStatus
from app.errors import DeadlineExceeded, FailedPrecondition, NotFound


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


class ComponentDriver(Protocol):
    async def ensure_running(self, component: DesiredComponent) -> RuntimeStatus: ...

    async def status(self, key: str) -> RuntimeStatus: ...

    async def stop(self, key: str, *, grace: float = 10.0) -> None: ...

    async def remove(self, key: str) -> None: ...

    async def exec(self, key: str, argv: Sequence[str], *, timeout: float) -> ExecResult: ...

    async def keys(self) -> list[str]: ...


def _proc_starttime(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = data[data.rindex(")") + 2:].split()  # fields after "(comm)"
    return rest[0], int(rest[19])


class HostProcessDriver:
    """Components as host processes (see module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _dir(self, key: str) -> Path:
        return self.root / key

    def _read(self, key: str) -> dict[str, object] | None:
        try:
            return dict(json.loads((self._dir(key) / "proc.json").read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def _reap(self, key: str) -> None:
        child = self._children.get(key)
        if child is not None and child.poll() is not None:
            (self._dir(key) / "exit").write_text(str(child.returncode))
            del self._children[key]

    async def status(self, key: str) -> RuntimeStatus:
        self._reap(key)
        info = self._read(key)
        if info is None:
            return RuntimeStatus("absent")
        pid = int(str(info["pid"]))
        live = _proc_starttime(pid)
        spec = str(info.get("spec_hash"))
        started = float(str(info.get("started_at", 0)))
        # The pid is ours only if its start time matches: pids are reused.
        if live is not None and live[1] == info.get("starttime") and live[0] not in ("Z", "X"):
            return RuntimeStatus("running", spec, str(pid), None, started)
        try:
            code: int | None = int((self._dir(key) / "exit").read_text())
        except (FileNotFoundError, ValueError):
            code = None
        return RuntimeStatus("exited", spec, str(pid), code, started)

    async def ensure_running(self, component: DesiredComponent) -> RuntimeStatus:
        st = await self.status(component.key)
        if st.state == "running" and st.spec_hash == component.spec_hash:
            return st
        if st.state == "running":
            await self.stop(component.key)
        return self._start(component)

    def _start(self, c: DesiredComponent) -> RuntimeStatus:
        d = self._dir(c.key)
        d.mkdir(parents=True, exist_ok=True)
        (d / "exit").unlink(missing_ok=True)
        argv0 = shutil.which(c.command[0]) if "/" not in c.command[0] else c.command[0]
        if argv0 is None:
            raise FailedPrecondition(f"{c.key}: {c.command[0]!r} is not installed on the host",
                                     phase="container", details={"component": c.key})
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **dict(c.env)}
        Path(c.directory or d).mkdir(parents=True, exist_ok=True)
        with open(d / "output.log", "wb") as log:
            child = subprocess.Popen(
                [argv0, *c.command[1:]], env=env, cwd=c.directory or str(d), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        self._children[c.key] = child
        live = _proc_starttime(child.pid)
        now = time.time()
        info = {"pid": child.pid, "starttime": live[1] if live else None, "spec_hash": c.spec_hash,
                "started_at": now}
        tmp = d / "proc.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, d / "proc.json")
        return RuntimeStatus("running", c.spec_hash, str(child.pid), None, now)

    async def stop(self, key: str, *, grace: float = 10.0) -> None:
        st = await self.status(key)
        if st.state != "running" or st.runtime_id is None:
            return
        pid = int(st.runtime_id)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)  # the whole session: the component may have children
                if sig == signal.SIGTERM:
                    os.killpg(pid, signal.SIGCONT)  # as systemd does: a stopped process must see it
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if (await self.status(key)).state != "running":
                    return
                await asyncio.sleep(0.02)
        raise DeadlineExceeded(f"{key}: process {pid} did not exit after SIGKILL", phase="stop")

    async def remove(self, key: str) -> None:
        await self.stop(key)
        self._children.pop(key, None)
        shutil.rmtree(self._dir(key), ignore_errors=True)

    async def exec(self, key: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        if (await self.status(key)).state != "running":
            raise NotFound(f"{key} is not running", phase="exec")
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise DeadlineExceeded(f"{key}: exec {argv[0]} timed out after {timeout}s", phase="exec") from None
        return ExecResult(proc.returncode or 0, out.decode(errors="replace")[-4000:])

    async def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "proc.json").exists())


class RoutingDriver:
    """Containers for most components, host processes for those with ``runs_on: host``.

    Which driver owns a key is what is on disk: the host driver's record wins, so a
    component moved between the two is found, stopped and recreated by the other.
    """

    def __init__(self, container: ComponentDriver, host: HostProcessDriver) -> None:
        self.container = container
        self.host = host

    def _owner(self, key: str) -> ComponentDriver:
        return self.host if (self.host.root / key / "proc.json").exists() else self.container

    async def ensure_running(self, component: DesiredComponent) -> RuntimeStatus:
        want: ComponentDriver = self.host if component.runs_on == "host" else self.container
        other = self.container if want is self.host else self.host
        if (await other.status(component.key)).state != "absent":
            await other.remove(component.key)
        return await want.ensure_running(component)

    async def status(self, key: str) -> RuntimeStatus:
        return await self._owner(key).status(key)

    async def stop(self, key: str, *, grace: float = 10.0) -> None:
        await self._owner(key).stop(key, grace=grace)

    async def remove(self, key: str) -> None:
        await self.host.remove(key)
        await self.container.remove(key)

    async def exec(self, key: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        return await self._owner(key).exec(key, argv, timeout=timeout)

    async def keys(self) -> list[str]:
        return sorted(set(await self.host.keys()) | set(await self.container.keys()))
