"""Connections over an upgraded socket: SPDY streams and WebSocket messages, async.

:class:`SpdyConnection` runs one read loop that turns frames into per-stream
queues; new peer streams are answered with SYN_REPLY and handed out by
:meth:`SpdyConnection.accept`. Stream life::

    peer SYN_STREAM ──► OPEN ──(peer FIN)──► HALF_CLOSED_REMOTE ──(our FIN)──► CLOSED
                         └──(our FIN)──► HALF_CLOSED_LOCAL ──(peer FIN)──┘
    RST_STREAM or GOAWAY or EOF on the socket: CLOSED at once (readers get EOF)

Receive windows are re-opened as data is consumed (WINDOW_UPDATE), so a
SPDY/3.1 peer that honours flow control never stalls; like the clients Kubernetes
uses, we do not throttle our own sends.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.api.cri.streaming import spdy, websocket

READ_CHUNK = 64 * 1024


class SpdyStream:
    def __init__(self, conn: SpdyConnection, stream_id: int, headers: spdy.Headers) -> None:
        self.conn, self.id, self.headers = conn, stream_id, headers
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    async def read(self) -> bytes:
        """The next chunk; ``b""`` at end of stream."""
        if self.remote_closed and self._queue.empty():
            return b""
        chunk = await self._queue.get()
        if chunk is None:
            self.remote_closed = True
            return b""
        if chunk:
            self.conn.send_raw(spdy.encode_window_update(self.id, len(chunk)))
        return chunk

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.conn.closed or not data:
            return
        self.conn.send_raw(spdy.encode_data(self.id, data))
        await self.conn.drain()

    async def close(self) -> None:
        """Half-close our side (DATA with FIN)."""
        if not self.local_closed and not self.conn.closed:
            self.local_closed = True
            self.conn.send_raw(spdy.encode_data(self.id, b"", fin=True))
            await self.conn.drain()

    def reset(self, status: int = spdy.RST_CANCEL) -> None:
        if not self.conn.closed and not (self.local_closed and self.remote_closed):
            self.conn.send_raw(spdy.encode_rst_stream(self.id, status))
        self.local_closed = True
        self._deliver(None)

    def _deliver(self, chunk: bytes | None) -> None:
        if not self.remote_closed:
            self._queue.put_nowait(chunk)
            if chunk is None:
                self.remote_closed = True


class SpdyConnection:
    """Server end of a SPDY session (peer streams are odd-numbered)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = spdy.HeaderCodec()
        self.frames = spdy.FrameReader(self.codec)
        self.streams: dict[int, SpdyStream] = {}
        self.new_streams: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self.closed = False
        self._last_peer = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop())

    def send_raw(self, frame: bytes) -> None:
        if not self.closed:
            self.writer.write(frame)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opens; None once the session is over."""
        return await self.new_streams.get()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                if not data:
                    break
                for frame in self.frames.feed(data):
                    self._on_frame(frame)
        except spdy.SpdyError:
            self.send_raw(spdy.encode_goaway(self._last_peer, spdy.GOAWAY_PROTOCOL_ERROR))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._shutdown()

    def _on_frame(self, f: spdy.Frame) -> None:
        if f.kind == spdy.SYN_STREAM:
            if f.stream_id in self.streams or f.stream_id % 2 == 0:
                self.send_raw(spdy.encode_rst_stream(f.stream_id, spdy.RST_PROTOCOL_ERROR))
                return
            self._last_peer = max(self._last_peer, f.stream_id)
            stream = SpdyStream(self, f.stream_id, f.headers)
            self.streams[f.stream_id] = stream
            self.send_raw(spdy.encode_syn_reply(self.codec, f.stream_id, {}))
            if f.fin:
                stream._deliver(None)
            self.new_streams.put_nowait(stream)
        elif f.kind == 0:
            s = self.streams.get(f.stream_id)
            if s is None:
                self.send_raw(spdy.encode_rst_stream(f.stream_id, spdy.RST_INVALID_STREAM))
                return
            if f.data:
                s._deliver(f.data)
            if f.fin:
                s._deliver(None)
        elif f.kind == spdy.RST_STREAM:
            s = self.streams.get(f.stream_id)
            if s is not None:
                s.local_closed = True
                s._deliver(None)
        elif f.kind == spdy.PING:
            if f.status % 2 == 1:  # peer-initiated pings are odd: echo them
                self.send_raw(spdy.encode_ping(f.status))
        elif f.kind == spdy.GOAWAY:
            self.new_streams.put_nowait(None)
        elif f.kind == spdy.HEADERS and f.fin:
            s = self.streams.get(f.stream_id)
            if s is not None:
                s._deliver(None)

    def _shutdown(self) -> None:
        self.closed = True
        for s in self.streams.values():
            s._deliver(None)
        self.new_streams.put_nowait(None)

    async def close(self) -> None:
        if not self.closed:
            self.send_raw(spdy.encode_goaway(self._last_peer))
            await self.drain()
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class WsConnection:
    """Server end of a WebSocket: binary messages in and out, pings answered."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames = websocket.FrameReader()
        self._pending: list[websocket.Message] = []
        self.closed = False

    async def recv(self) -> bytes | None:
        """The next data message; None when the peer closed or the socket ended."""
        while True:
            while self._pending:
                msg = self._pending.pop(0)
                if msg.opcode in (websocket.OP_BINARY, websocket.OP_TEXT):
                    return msg.data
                if msg.opcode == websocket.OP_PING:
                    self._write(websocket.encode_frame(websocket.OP_PONG, msg.data))
                elif msg.opcode == websocket.OP_CLOSE:
                    if not self.closed:
                        self._write(websocket.encode_close(1000))
                    self.closed = True
                    return None
            if self.closed:
                return None
            try:
                data = await self.reader.read(READ_CHUNK)
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                return None
            try:
                self._pending.extend(self.frames.feed(data))
            except websocket.WebSocketError:
                await self.close(1002)
                return None

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.writer.write(data)

    async def send(self, data: bytes) -> None:
        if self.closed:
            return
        self._write(websocket.encode_frame(websocket.OP_BINARY, data))
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            self._write(websocket.encode_close(code))
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
        with contextlib.suppress(Exception):
            self.writer.close()
