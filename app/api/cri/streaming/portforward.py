"""Kubernetes port-forward (``portforward.k8s.io``) over SPDY or WebSocket onto a :class:`PortDialer`.

SPDY: the client opens pairs of streams per connection, both with headers
``port`` and ``requestid``; ``streamtype: error`` first, then ``streamtype: data``.
We dial the port inside the pod, copy bytes both ways on the data stream, and
write a text message on the error stream if dialing or copying fails.

WebSocket: ports come from the request (or ``?port=`` query values); port *i*
uses channel ``2i`` for data and ``2i+1`` for errors, and the first message we
send on each of them is the port number as two little-endian bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass
from typing import Protocol

from app.api.cri.streaming.transport import SpdyConnection, SpdyStream, WsConnection
from app.errors import VappError

log = logging.getLogger(__name__)
PAIR_WAIT = 30.0


@dataclass(frozen=True)
class PortForwardRequest:
    pod_id: str
    ports: tuple[int, ...] = ()


class PortDialer(Protocol):
    async def dial(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``localhost:port`` inside the pod's network namespace."""
        ...


async def _dial(dialer: PortDialer, req: PortForwardRequest, port: int
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    if req.ports and port not in req.ports:
        return f"port {port} was not requested for pod {req.pod_id}"
    try:
        return await dialer.dial(req.pod_id, port)
    except VappError as exc:
        return f"error forwarding port {port} to pod {req.pod_id}: {exc.message}"
    except OSError as exc:
        return f"error forwarding port {port} to pod {req.pod_id}: {exc.strerror or exc}"


# -- SPDY ------------------------------------------------------------------------------
async def serve_spdy(conn: SpdyConnection, req: PortForwardRequest, dialer: PortDialer) -> None:
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (s := await conn.accept()) is not None:
            rid, kind = s.header("requestid"), s.header("streamtype")
            if kind not in ("error", "data"):
                s.reset()
                continue
            pair = pending.setdefault(rid, {})
            pair[kind] = s
            if len(pair) == 2:
                del pending[rid]
                task = asyncio.create_task(_spdy_pair(pair["data"], pair["error"], req, dialer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _spdy_pair(data: SpdyStream, error: SpdyStream, req: PortForwardRequest, dialer: PortDialer) -> None:
    try:
        port = int(data.header("port"))
    except ValueError:
        await error.write(f"invalid port header {data.header('port')!r}".encode())
        await error.close()
        data.reset()
        return
    conn = await _dial(dialer, req, port)
    if isinstance(conn, str):
        await error.write(conn.encode())
        await error.close()
        await data.close()
        return
    reader, writer = conn

    async def upstream() -> None:
        while chunk := await data.read():
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def downstream() -> None:
        while chunk := await reader.read(65536):
            await data.write(chunk)
        await data.close()

    try:
        up = asyncio.create_task(upstream())
        await downstream()
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
    except (ConnectionError, OSError) as exc:
        await error.write(f"error copying port {port}: {exc}".encode())
    finally:
        writer.close()
        await error.close()


# -- WebSocket ---------------------------------------------------------------------------
async def serve_websocket(ws: WsConnection, req: PortForwardRequest, ports: tuple[int, ...],
                          dialer: PortDialer) -> None:
    conns: dict[int, asyncio.StreamWriter] = {}
    readers: list[asyncio.Task[None]] = []
    for i, port in enumerate(ports):
        await ws.send(bytes([2 * i]) + struct.pack("<H", port))
        await ws.send(bytes([2 * i + 1]) + struct.pack("<H", port))
        conn = await _dial(dialer, req, port)
        if isinstance(conn, str):
            await ws.send(bytes([2 * i + 1]) + conn.encode())
            continue
        conns[i] = conn[1]
        readers.append(asyncio.create_task(_ws_down(ws, 2 * i, conn[0])))
    try:
        while (msg := await ws.recv()) is not None:
            if not msg:
                continue
            channel, payload = msg[0], msg[1:]
            writer = conns.get(channel // 2) if channel % 2 == 0 else None
            if writer is not None and payload:
                writer.write(payload)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
    finally:
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for w in conns.values():
            w.close()
        await ws.close()


async def _ws_down(ws: WsConnection, channel: int, reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            await ws.send(bytes([channel]) + chunk)
