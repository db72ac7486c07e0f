"""A tiny scriptable registry upstream (asyncio streams) for faults docker-registry cannot produce.

It serves ``/v2/<repo>/manifests/<ref>`` and ``/v2/<repo>/blobs/<digest>`` from dicts and can:
corrupt a blob, cut the connection after N bytes (once or always), ignore Range, delay the
header phase, pause mid-body until released, answer 503/429 for everything, and count requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import re
from typing import Any


@dataclasses.dataclass
class Behaviour:
    corrupt: set[str] = dataclasses.field(default_factory=set)  # digests served with a flipped byte
    cut_after: dict[str, int] = dataclasses.field(default_factory=dict)  # digest -> bytes, then close
    cut_times: int = 1  # how many responses get cut (per digest)
    ignore_range: bool = False
    header_delay: float = 0.0
    status: int | None = None  # answer every request with this status
    pause_at: dict[str, int] = dataclasses.field(default_factory=dict)  # digest -> offset to pause at
    chunk: int = 64 * 1024
    pace: float = 0.0  # seconds between chunks


class FakeUpstream:
    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}  # (repo, tag|digest) -> body, type
        self.blobs: dict[str, bytes] = {}
        self.behaviour = Behaviour()
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.ranges: list[str] = []
        self.release = asyncio.Event()
        self.paused = asyncio.Event()
        self._cuts: collections.Counter[str] = collections.Counter()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.manifests[(repo, tag)] = (body, media_type)
        self.manifests[(repo, digest)] = (body, media_type)
        return digest

    async def start(self) -> FakeUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                keep = await self._respond(method, target.split("?", 1)[0], headers, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str], body: bytes = b"",
                    head: bool = False) -> None:  # fmt: skip
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body))
        await writer.drain()

    async def _respond(self, method: str, path: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        b = self.behaviour
        self.requests[(method, path)] += 1
        if b.header_delay:
            await asyncio.sleep(b.header_delay)
        head = method == "HEAD"
        if b.status:
            body = b'{"errors":[{"code":"UNAVAILABLE","message":"scripted"}]}'
            await self._send(writer, b.status, {"Content-Length": str(len(body))}, body, head)
            return True
        if path in ("/v2/", "/v2"):
            await self._send(writer, 200, {"Content-Length": "2"}, b"{}", head)
            return True
        m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/]+)$", path)
        if m is None:
            await self._send(writer, 404, {"Content-Length": "0"})
            return True
        repo, kind, ref = m.groups()
        if kind == "manifests":
            found = self.manifests.get((repo, ref))
            if found is None:
                await self._send(writer, 404, {"Content-Length": "0"}, b"", head)
                return True
            body, mt = found
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            await self._send(writer, 200, {"Content-Type": mt, "Content-Length": str(len(body)),
                                           "Docker-Content-Digest": digest}, body, head)  # fmt: skip
            return True
        data = self.blobs.get(ref)
        if data is None:
            await self._send(writer, 404, {"Content-Length": "0"}, b"", head)
            return True
        if ref in b.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start, status = 0, 200
        hdrs = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": ref}
        rng = headers.get("range")
        if rng:
            self.ranges.append(rng)
        if rng and not b.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            status = 206
            hdrs["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        hdrs["Content-Length"] = str(len(data) - start)
        await self._send(writer, status, hdrs, b"", head=True)
        if head:
            return True
        cut = b.cut_after.get(ref)
        if cut is not None and self._cuts[ref] < b.cut_times:
            self._cuts[ref] += 1
        else:
            cut = None
        pos = start
        pause = b.pause_at.get(ref)
        while pos < len(data):
            if pause is not None and pos >= pause and not self.release.is_set():
                self.paused.set()
                await self.release.wait()
            n = min(b.chunk, len(data) - pos)
            if cut is not None and pos + n > cut:
                writer.write(data[pos:cut])
                await writer.drain()
                return False  # close mid-body
            writer.write(data[pos : pos + n])
            await writer.drain()
            pos += n
            if b.pace:
                await asyncio.sleep(b.pace)
        return True
