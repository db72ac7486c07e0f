"""Serve any ASGI app on a TCP address with uvicorn inside the daemon's loop.

Used for the admin API and for the registry /v2 listener. The daemon owns
signal handling, so uvicorn's own signal capture is switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from app.config import parse_host_port
from app.errors import AlreadyExists, InvalidArgument

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_tcp(address: str) -> socket.socket:
    host, port = parse_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == 98:
            raise AlreadyExists(f"cannot listen on {address}: address already in use") from exc
        raise InvalidArgument(f"cannot listen on {address}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class AsgiListener:
    """One uvicorn server bound to one TCP address."""

    def __init__(
        self,
        name: str,
        app: Any,
        address: str,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        **uvicorn_options: Any,
    ) -> None:
        self.name = name
        self.app = app
        self.address = address
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.options = uvicorn_options
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.bound: str | None = None

    async def start(self) -> list[str]:
        sock = bind_tcp(self.address)
        host, port = sock.getsockname()[:2]
        scheme = "https" if self.tls_cert else "http"
        self.bound = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}"
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ssl_certfile=str(self.tls_cert) if self.tls_cert else None,
            ssl_keyfile=str(self.tls_key) if self.tls_key else None,
            timeout_graceful_shutdown=None,
            **self.options,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"listener-{self.name}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
                raise InvalidArgument(f"{self.name} listener stopped during start-up")
            await asyncio.sleep(0.005)
        return [self.bound]

    async def stop(self, grace: float) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace)
        except TimeoutError:
            log.warning("%s: in-flight requests still running after %.1fs; closing them", self.name, grace)
            self._server.force_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=2)
