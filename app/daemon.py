"""``vapp-core daemon``: one process, one asyncio loop, every listener.

Start-up::

    settings ─► logging ─► fork server (before ANY thread) ─► system check
      ─► asyncio loop: build node (DB + migrations, engines) ─► bind listeners
      ─► ready (/readyz 200, vapp_ready 1, sd_notify READY=1, pid file)

Shutdown on SIGTERM/SIGINT: stop accepting and drain each listener in reverse
order within ``shutdown_grace_seconds``, stop background tasks, close the DB,
remove sockets and the pid file. Containers are not stopped: they are
supervised outside the daemon and rediscovered on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from typing import Any

from app import __version__
from app.api.http.app import create_admin_app
from app.api.http.auth import load_or_create_token
from app.config import Settings
from app.metrics import BUILD_INFO, READY
from app.wiring import Listener, Node, build_listeners, build_node

log = logging.getLogger(__name__)


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about state changes; a no-op without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", address, exc)
            return False
    return True


class Daemon:
    def __init__(self, settings: Settings, check_results: Sequence[Any] = ()) -> None:
        self.settings = settings
        self.check_results = list(check_results)
        self.node: Node | None = None
        self.listeners: list[Listener] = []
        self.addresses: dict[str, list[str]] = {}
        self.ready = False
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []

    @property
    def pid_file(self) -> os.PathLike[str]:
        return self.settings.run_dir / "vapp.pid"

    async def info(self) -> dict[str, Any]:
        s = self.settings
        summary = s.model_dump(mode="json", exclude={"admin_token", "database_url"})
        summary["database"] = "postgresql" if s.db_url.startswith("postgres") else "sqlite"
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "rootless": os.geteuid() != 0,
            "listeners": self.addresses,
            "config": summary,
            "checks": [r.to_json() for r in self.check_results],
        }

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._start()
            await self._stop.wait()
        finally:
            await self._shutdown()

    async def _start(self) -> None:
        s = self.settings
        t0 = time.perf_counter()
        self.node = node = await build_node(s)
        token = load_or_create_token(s.state_dir, s.admin_token.get_secret_value() if s.admin_token else None)
        admin = create_admin_app(
            node, admin_token=token, routers=node.routers, info=self.info, is_ready=lambda: self.ready
        )
        for listener in build_listeners(node, admin):
            self.addresses[listener.name] = await listener.start()
            self.listeners.append(listener)
            log.info("listening: %s on %s", listener.name, ", ".join(self.addresses[listener.name]))
        for job in node.background:
            self._background.append(asyncio.create_task(job(), name=getattr(job, "__name__", "background")))
        self._write_pid_file()
        self.ready = True
        READY.set(1)
        BUILD_INFO.labels(__version__).set(1)
        sd_notify("READY=1\nSTATUS=serving")
        log.info("vapp-core %s ready in %.0f ms", __version__, (time.perf_counter() - t0) * 1000)

    def _write_pid_file(self) -> None:
        tmp = f"{self.pid_file}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_file)

    async def _shutdown(self) -> None:
        self.ready = False
        READY.set(0)
        sd_notify("STOPPING=1")
        grace = self.settings.shutdown_grace_seconds
        for listener in reversed(self.listeners):
            try:
                await listener.stop(grace)
            except Exception:
                log.exception("stopping listener %s", listener.name)
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=grace)
        if self.node is not None:
            await self.node.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_file)
        log.info("vapp-core stopped")


def run_daemon(settings: Settings, check_results: Sequence[Any] = ()) -> int:
    daemon = Daemon(settings, check_results)
    asyncio.run(daemon.run())
    return 0
