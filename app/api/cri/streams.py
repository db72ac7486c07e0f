"""The streaming server as the CRI door uses it: started on first use, backed by the services.

:class:`ContainerCommands` turns a remote-command session into a container-service
exec (sockets or a pty from the fork server); :class:`PodDialer` dials through the
pod service's holder. Both look the services up on the node at call time, so the
server works whatever order wiring fills the node in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from app.api.cri.streaming.portforward import PortForwardRequest
from app.api.cri.streaming.remotecommand import CommandIO, CommandRequest
from app.api.cri.streaming.server import StreamServer
from app.errors import Unavailable


class ContainerCommands:
    def __init__(self, node: Any) -> None:
        self.node = node

    async def run_command(self, request: CommandRequest, io: CommandIO) -> int:
        containers = self.node.containers
        if containers is None:
            raise Unavailable("the container service is not running on this node")
        if request.kind == "attach":
            from app.api.cri.attach import follow_log

            return await follow_log(containers, request.container_id, io, stdin=request.stdin)
        session = await containers.exec_stream(request.container_id, list(request.cmd), tty=request.tty,
                                               stdin=request.stdin)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            if session.pty is not None:
                tasks.append(asyncio.create_task(_pty_out(session.pty, io)))
                tasks.append(asyncio.create_task(_feed_fd(session.pty, io)))
                tasks.append(asyncio.create_task(_resize(session, io)))
                code = int(await session.wait())
                await asyncio.wait_for(asyncio.shield(tasks[0]), 2) if not tasks[0].done() else None
            else:
                outs = [asyncio.create_task(_sock_out(loop, sock, writer))
                        for sock, writer in ((session.stdout, io.write_stdout), (session.stderr, io.write_stderr))
                        if sock is not None]
                if session.stdin is not None:
                    tasks.append(asyncio.create_task(_feed_sock(loop, session.stdin, io)))
                code = int(await session.wait())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*outs), 5)
                tasks += outs
            return code
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            session.close()


async def _sock_out(loop: asyncio.AbstractEventLoop, sock: Any, writer: Any) -> None:
    while chunk := await loop.sock_recv(sock, 65536):
        if writer is not None:
            await writer(chunk)


async def _feed_sock(loop: asyncio.AbstractEventLoop, sock: Any, io: CommandIO) -> None:
    while (chunk := await io.stdin.get()) is not None:
        await loop.sock_sendall(sock, chunk)
    with contextlib.suppress(OSError):
        sock.shutdown(1)


async def _pty_out(fd: int, io: CommandIO) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        queue.put_nowait(data)
        if not data:
            loop.remove_reader(fd)

    loop.add_reader(fd, readable)
    try:
        while data := await queue.get():
            if io.write_stdout is not None:
                await io.write_stdout(data)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)


async def _feed_fd(fd: int, io: CommandIO) -> None:
    while (chunk := await io.stdin.get()) is not None:
        with contextlib.suppress(OSError):
            os.write(fd, chunk)
    with contextlib.suppress(OSError):
        os.write(fd, b"\x04")  # EOF on a terminal


async def _resize(session: Any, io: CommandIO) -> None:
    while True:
        width, height = await io.resize.get()
        with contextlib.suppress(OSError):
            session.resize(height, width)


class PodDialer:
    def __init__(self, node: Any) -> None:
        self.node = node

    async def dial(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.node.pods is None:
            raise Unavailable("the pod service is not running on this node")
        return await self.node.pods.dial(pod_id, port)  # type: ignore[no-any-return]


class LazyStreamServer:
    """Starts the streaming server on the first Exec/Attach/PortForward (servicers are added sync)."""

    def __init__(self, node: Any, address: str = "127.0.0.1", port: int = 0) -> None:
        self.server = StreamServer(ContainerCommands(node), PodDialer(node), address=address, port=port)
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def base_url(self) -> str:
        return self.server.base_url if self._started else ""

    async def url_for(self, request: CommandRequest | PortForwardRequest) -> str:
        if not self._started:
            async with self._lock:
                if not self._started:
                    try:
                        await self.server.start()
                    except OSError as exc:
                        raise Unavailable(f"cannot start the streaming server: {exc.strerror or exc}") from exc
                    self._started = True
        return self.server.url_for(request)

    async def stop(self) -> None:
        if self._started:
            await self.server.stop()
            self._started = False
