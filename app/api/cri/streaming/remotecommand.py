"""Kubernetes remote-command (exec/attach) over SPDY or WebSocket, onto a :class:`CommandBackend`.

Streams (SPDY: one stream per ``streamtype`` header; WebSocket: one byte of
channel number in front of each message)::

    channel  streamtype  direction        content
    0        stdin       client → server  raw bytes (v5: ``[255, 0]`` closes it)
    1        stdout      server → client  raw bytes
    2        stderr      server → client  raw bytes (absent with a TTY)
    3        error       server → client  metav1.Status JSON (v4/v5) or text, then close
    4        resize      client → server  {"Width": w, "Height": h} JSON objects

Exit status (v4+): ``{"metadata":{},"status":"Success"}`` or ``status: Failure``,
``reason: NonZeroExitCode``, ``details.causes[0] = {"reason":"ExitCode","message":"<rc>"}``.
The backend sees none of this: it gets a :class:`CommandIO` of queues and writers
and returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.api.cri.streaming.transport import SpdyConnection, SpdyStream, WsConnection
from app.errors import VappError

log = logging.getLogger(__name__)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
SPDY_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
WS_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
STREAM_WAIT = 30.0


@dataclass(frozen=True)
class CommandRequest:
    """What Exec/Attach stored behind the token."""

    kind: str  # "exec" | "attach"
    container_id: str
    cmd: tuple[str, ...] = ()
    tty: bool = False
    stdin: bool = False
    stdout: bool = True
    stderr: bool = True


@dataclass
class CommandIO:
    """The backend's view of a session: bytes and resizes in, writers out.

    ``stdin`` yields chunks then ``None`` at EOF; ``resize`` yields (width, height);
    ``gone`` is set when the client's connection is over (an attach stops following then).
    """

    stdin: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    resize: asyncio.Queue[tuple[int, int]] = field(default_factory=asyncio.Queue)
    write_stdout: Callable[[bytes], Awaitable[None]] | None = None
    write_stderr: Callable[[bytes], Awaitable[None]] | None = None


class CommandBackend(Protocol):
    async def run_command(self, request: CommandRequest, io: CommandIO) -> int:
        """Run exec (or attach) until it ends; return the exit code (attach: 0).

        Raise :class:`~app.errors.VappError` (NotFound, FailedPrecondition...) on failure.
        """
        ...


def status_json(exit_code: int | None, error: str | None = None) -> bytes:
    """The metav1.Status the error channel carries (v4/v5)."""
    status: dict[str, Any]
    if error is not None:
        status = {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError",
                  "details": {"causes": [{"message": error}]}, "code": 500}
    elif exit_code:
        status = {"metadata": {}, "status": "Failure",
                  "message": f"command terminated with non-zero exit code: exit status {exit_code}",
                  "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status, separators=(",", ":")).encode()


def legacy_error(exit_code: int | None, error: str | None) -> bytes:
    """Error channel content before v4: plain text, nothing on success."""
    if error is not None:
        return error.encode()
    return f"command terminated with non-zero exit code: {exit_code}".encode() if exit_code else b""


class ResizeDecoder:
    """Concatenated JSON objects on the resize stream → (width, height) events."""

    def __init__(self) -> None:
        self._buf = ""
        self._dec = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buf += data.decode(errors="replace")
        out: list[tuple[int, int]] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return out
            try:
                obj, end = self._dec.raw_decode(text)
            except ValueError:
                self._buf = text
                return out
            self._buf = text[end:]
            if isinstance(obj, dict):
                with contextlib.suppress(TypeError, ValueError):
                    out.append((int(obj.get("Width", 0)), int(obj.get("Height", 0))))


async def _run(backend: CommandBackend, req: CommandRequest, io: CommandIO) -> tuple[int | None, str | None]:
    try:
        return await backend.run_command(req, io), None
    except VappError as exc:
        return None, exc.message
    except Exception as exc:
        log.exception("stream %s %s failed", req.kind, req.container_id)
        return None, f"{req.kind} failed: {type(exc).__name__}"


# -- SPDY ------------------------------------------------------------------------------
def _expected_spdy(req: CommandRequest) -> set[str]:
    want = {"error"}
    if req.stdin:
        want.add("stdin")
    if req.stdout:
        want.add("stdout")
    if req.stderr and not req.tty:
        want.add("stderr")
    if req.tty:
        want.add("resize")
    return want


async def serve_spdy(conn: SpdyConnection, protocol: str, req: CommandRequest, backend: CommandBackend) -> None:
    """Collect the client's streams, run the command, report the status, close."""
    want = _expected_spdy(req)
    # v2 clients never open a resize stream
    if protocol in ("v2.channel.k8s.io", "channel.k8s.io"):
        want.discard("resize")
    streams: dict[str, SpdyStream] = {}
    try:
        async with asyncio.timeout(STREAM_WAIT):
            while not want <= streams.keys():
                s = await conn.accept()
                if s is None:
                    return
                streams[s.header("streamtype")] = s
    except TimeoutError:
        log.info("spdy %s: client opened only %s", req.kind, sorted(streams))
        return
    io = CommandIO()
    pumps: list[asyncio.Task[None]] = []
    if "stdout" in streams:
        io.write_stdout = streams["stdout"].write
    if "stderr" in streams:
        io.write_stderr = streams["stderr"].write
    if "stdin" in streams:
        pumps.append(asyncio.create_task(_pump_stdin(streams["stdin"], io)))
    if "resize" in streams:
        pumps.append(asyncio.create_task(_pump_resize(streams["resize"], io)))
    pumps.append(asyncio.create_task(_watch_spdy(conn, io)))
    rc, err = await _run(backend, req, io)
    for name in ("stdout", "stderr"):
        if name in streams:
            await streams[name].close()
    payload = status_json(rc, err) if protocol == SPDY_PROTOCOLS[0] else legacy_error(rc, err)
    errs = streams["error"]
    await errs.write(payload)
    await errs.close()
    for t in pumps:
        t.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)


async def _watch_spdy(conn: SpdyConnection, io: CommandIO) -> None:
    """The session is over when the peer goes away (GOAWAY or EOF); later streams are refused."""
    while (extra := await conn.accept()) is not None:
        extra.reset()
    io.gone.set()


async def _pump_stdin(stream: SpdyStream, io: CommandIO) -> None:
    while chunk := await stream.read():
        await io.stdin.put(chunk)
    await io.stdin.put(None)


async def _pump_resize(stream: SpdyStream, io: CommandIO) -> None:
    dec = ResizeDecoder()
    while chunk := await stream.read():
        for size in dec.feed(chunk):
            await io.resize.put(size)


# -- WebSocket ---------------------------------------------------------------------------
async def serve_websocket(ws: WsConnection, protocol: str, req: CommandRequest,
                          backend: CommandBackend) -> None:
    io = CommandIO()

    def writer(channel: int) -> Callable[[bytes], Awaitable[None]]:
        async def write(data: bytes) -> None:
            if data:
                await ws.send(bytes([channel]) + data)
        return write

    if req.stdout:
        io.write_stdout = writer(STDOUT)
    if req.stderr and not req.tty:
        io.write_stderr = writer(STDERR)
    reader = asyncio.create_task(_ws_reader(ws, protocol, req, io))
    rc, err = await _run(backend, req, io)
    payload = legacy_error(rc, err) if protocol == "channel.k8s.io" else status_json(rc, err)
    if payload or protocol != "channel.k8s.io":
        await ws.send(bytes([ERROR]) + payload)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await ws.close()


async def _ws_reader(ws: WsConnection, protocol: str, req: CommandRequest, io: CommandIO) -> None:
    resize = ResizeDecoder()
    stdin_open = req.stdin
    while (msg := await ws.recv()) is not None:
        if not msg:
            continue
        channel, data = msg[0], msg[1:]
        if channel == STDIN and stdin_open and data:
            await io.stdin.put(data)
        elif channel == RESIZE:
            for size in resize.feed(data):
                await io.resize.put(size)
        elif channel == CLOSE and protocol.startswith("v5") and data[:1] == bytes([STDIN]) and stdin_open:
            stdin_open = False
            await io.stdin.put(None)
    if stdin_open:
        await io.stdin.put(None)
    io.gone.set()  # recv() is None only once the connection is closed
