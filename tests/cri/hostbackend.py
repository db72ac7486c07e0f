"""A command backend and port dialer on the host: real processes, a real pty, real sockets.

Used to test the streaming protocols before (and independently of) containers:
"exec" runs ``cmd`` on the host; "attach" runs ``sh -c cat`` as the attached process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import struct
import termios

from app.api.cri.streaming.remotecommand import CommandIO, CommandRequest
from app.errors import NotFound


class HostCommands:
    def __init__(self) -> None:
        self.resizes: list[tuple[int, int]] = []

    async def run_command(self, request: CommandRequest, io: CommandIO) -> int:
        if request.container_id == "missing":
            raise NotFound("container missing not found")
        cmd = list(request.cmd) if request.kind == "exec" else ["sh", "-c", "cat"]
        if request.tty:
            return await self._tty(cmd, io)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE if request.stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None

        async def copy(src: asyncio.StreamReader, dst: object) -> None:
            while chunk := await src.read(65536):
                if dst is not None:
                    await dst(chunk)  # type: ignore[operator]

        async def feed() -> None:
            assert proc.stdin is not None
            while (chunk := await io.stdin.get()) is not None:
                proc.stdin.write(chunk)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()
            proc.stdin.close()

        feeder = asyncio.create_task(feed()) if request.stdin else None
        await asyncio.gather(copy(proc.stdout, io.write_stdout), copy(proc.stderr, io.write_stderr))
        rc = await proc.wait()
        if feeder:
            feeder.cancel()
        return rc

    async def _tty(self, cmd: list[str], io: CommandIO) -> int:
        master, slave = pty.openpty()
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=slave, stdout=slave, stderr=slave,
                                                    start_new_session=True)
        os.close(slave)
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            out.put_nowait(data)
            if not data:
                loop.remove_reader(master)

        loop.add_reader(master, readable)

        async def feed() -> None:
            while (chunk := await io.stdin.get()) is not None:
                os.write(master, chunk)

        async def resize() -> None:
            while True:
                w, h = await io.resize.get()
                self.resizes.append((w, h))
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", h, w, 0, 0))

        tasks = [asyncio.create_task(feed()), asyncio.create_task(resize())]
        while data := await out.get():
            if io.write_stdout:
                await io.write_stdout(data)
        rc = await proc.wait()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(ValueError):
            loop.remove_reader(master)
        os.close(master)
        return rc


class HostDialer:
    """Dials 127.0.0.1:<port> on the host (pods are the host here)."""

    async def dial(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if pod_id == "missing":
            raise NotFound("pod missing not found")
        return await asyncio.open_connection("127.0.0.1", port)
