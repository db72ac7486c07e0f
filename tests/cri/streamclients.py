"""Test-side clients of the streaming server: a SPDY/3.1 client (on our codec) and helpers."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from urllib.parse import urlsplit

from app.api.cri.streaming import spdy


class SpdyClient:
    """Client end of a SPDY session: opens odd streams, collects what the server sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.codec = spdy.HeaderCodec()
        self.frames = spdy.FrameReader(self.codec)
        self.next_id = 1
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.fin: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.replied: set[int] = set()
        self.goaway = asyncio.Event()
        self._task = asyncio.create_task(self._loop())

    @classmethod
    async def connect(cls, url: str, protocols: list[str], method: str = "POST") -> SpdyClient:
        u = urlsplit(url)
        reader, writer = await asyncio.open_connection(u.hostname, u.port)
        head = [f"{method} {u.path} HTTP/1.1", f"Host: {u.netloc}", "Connection: Upgrade", "Upgrade: SPDY/3.1"]
        head += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        raw = await reader.readuntil(b"\r\n\r\n")
        status = raw.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status + " ":
            body = await reader.read(4096)
            writer.close()
            raise ConnectionRefusedError(f"{status}: {body.decode(errors='replace')}")
        chosen = ""
        for line in raw.decode().split("\r\n"):
            if line.lower().startswith("x-stream-protocol-version:"):
                chosen = line.split(":", 1)[1].strip()
        return cls(reader, writer, chosen)

    async def _loop(self) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await self.reader.read(65536):
                for f in self.frames.feed(data):
                    if f.kind == 0:
                        self.data[f.stream_id] += f.data
                        if f.fin:
                            self.fin[f.stream_id].set()
                    elif f.kind == spdy.SYN_REPLY:
                        self.replied.add(f.stream_id)
                    elif f.kind == spdy.RST_STREAM:
                        self.fin[f.stream_id].set()
                    elif f.kind == spdy.GOAWAY:
                        self.goaway.set()
        for ev in self.fin.values():
            ev.set()
        self.goaway.set()

    def open(self, headers: dict[str, str], fin: bool = False) -> int:
        sid = self.next_id
        self.next_id += 2
        self.writer.write(spdy.encode_syn_stream(self.codec, sid, {k: [v] for k, v in headers.items()},
                                                 fin=fin))
        return sid

    def send(self, sid: int, data: bytes, fin: bool = False) -> None:
        self.writer.write(spdy.encode_data(sid, data, fin=fin))

    async def wait_fin(self, sid: int, timeout: float = 10) -> bytes:
        await asyncio.wait_for(self.fin[sid].wait(), timeout)
        return bytes(self.data[sid])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        self.writer.close()
