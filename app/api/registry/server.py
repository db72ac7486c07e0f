"""A lean HTTP/1.1 server for the /v2 ASGI app, with zero-copy blob bodies (``sendfile(2)``).

Why not uvicorn here: every body byte through an ASGI server is copied two or three
times in Python; a registry cache mostly sends large verified files, which the kernel
can send straight from the page cache. This server speaks exactly what registry
clients need, and offers the ASGI ``http.response.zerocopy`` extension::

    await send({"type": "http.response.zerocopy", "file": fileobj, "offset": n, "count": m,
                "more_body": False})

Connection life::

    accept ─> read head (≤ 64 KiB, 30 s) ─> ASGI app ─> response written
                  ▲                                         │ keep-alive (HTTP/1.1 default)
                  └────────────── idle ≤ 75 s ──────────────┘ else / error / body with request: close

Requests with a body (the push side, which the cache refuses) are answered, then the
connection is closed rather than parsing the body. Responses without Content-Length use
chunked encoding. An app error after the response started aborts the connection, so a
client never mistakes a cut body for a complete one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from app.config import parse_host_port

log = logging.getLogger(__name__)
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT = 30.0
IDLE_TIMEOUT = 75.0
ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
_REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 416: "Range Not Satisfiable", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


class _ClientGone(Exception):
    pass


class _Exchange:
    """One request/response on a connection: the ASGI receive/send pair."""

    def __init__(self, writer: asyncio.StreamWriter, head_only: bool, keep_alive: bool) -> None:
        self.writer = writer
        self.head_only = head_only
        self.keep_alive = keep_alive
        self.started = False
        self.finished = False
        self.chunked = False
        self.gone = asyncio.Event()
        self._request_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.gone.set()
            raise _ClientGone() from exc
        if self.writer.transport.is_closing():
            self.gone.set()
            raise _ClientGone()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}".encode()]
            has_length = False
            for k, v in message.get("headers", []):
                has_length = has_length or k.lower() == b"content-length"
                lines.append(k + b": " + v)
            if not has_length and not self.head_only and status not in (204, 304):
                self.chunked = True
                lines.append(b"transfer-encoding: chunked")
            lines.append(b"connection: keep-alive" if self.keep_alive else b"connection: close")
            self.writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
            self.started = True
            return
        if kind == "http.response.body":
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if not self.head_only:
                if self.chunked:
                    if body:
                        self.writer.write(b"%x\r\n" % len(body) + body + b"\r\n")
                    if not more:
                        self.writer.write(b"0\r\n\r\n")
                elif body:
                    self.writer.write(body)
            await self._drain()
            self.finished = not more
            return
        if kind == "http.response.zerocopy":
            await self._drain()  # headers first
            count = message.get("count")
            if not self.head_only and count:
                loop = asyncio.get_running_loop()
                try:
                    await loop.sendfile(self.writer.transport, message["file"], message.get("offset", 0), count)
                except (ConnectionError, RuntimeError) as exc:
                    self.gone.set()
                    raise _ClientGone() from exc
            self.finished = not message.get("more_body", False)
            return
        raise RuntimeError(f"unexpected ASGI message {kind!r}")


def _parse_head(head: bytes) -> tuple[str, bytes, str, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    method, target, version = lines[0].decode("latin-1").split(" ")
    if not version.startswith("HTTP/1.") or not method.isalpha():
        raise ValueError("bad request line")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ValueError("bad header line")
        headers.append((name.lower(), value.strip()))
    return method, target.encode("latin-1"), version, headers


class RegistryServer:
    """A Listener (``name``, ``start``, ``stop``) serving one ASGI app on one TCP address."""

    def __init__(self, name: str, app: ASGIApp, address: str, *, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> None:  # fmt: skip
        self.name = name
        self.app = app
        self.address = address
        self.ssl: ssl.SSLContext | None = None
        if tls_cert:
            self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> list[str]:
        host, port = parse_host_port(self.address)
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.ssl, limit=HEAD_LIMIT,
                                                  backlog=1024, reuse_address=True)  # fmt: skip
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        scheme = "https" if self.ssl else "http"
        return [f"{scheme}://{host if ':' not in host else f'[{host}]'}:{self.port}"]

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._conns:
            _, pending = await asyncio.wait(self._conns, timeout=grace)
            for task in pending:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        try:
            timeout = HEAD_TIMEOUT
            while True:
                try:
                    first = await asyncio.wait_for(reader.readexactly(1), timeout)
                    if not first.isupper():
                        # Not HTTP (a TLS ClientHello from a client trying https first): answer at
                        # once so it falls back to plain HTTP instead of waiting for a timeout.
                        writer.write(b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        return
                    head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                try:
                    method, target, version, headers = _parse_head(head[:-4])
                except ValueError:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                hdrs = dict(headers)
                conn_hdr = hdrs.get(b"connection", b"").lower()
                has_body = b"transfer-encoding" in hdrs or hdrs.get(b"content-length", b"0") not in (b"0", b"")
                keep = b"close" not in conn_hdr if version == "HTTP/1.1" else b"keep-alive" in conn_hdr
                keep = keep and not has_body
                path, _, query = target.partition(b"?")
                scope = {
                    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": version[5:],
                    "method": method, "scheme": "https" if self.ssl else "http",
                    "path": path.decode("latin-1"), "raw_path": path, "query_string": query, "root_path": "",
                    "headers": headers, "client": peer, "server": local,
                    "extensions": {"http.response.zerocopy": {}},
                }  # fmt: skip
                ex = _Exchange(writer, method == "HEAD", keep)
                try:
                    await self.app(scope, ex.receive, ex.send)
                except _ClientGone:
                    return
                except Exception:
                    if ex.started:
                        return  # abort: the client sees a cut response, never a wrong complete one
                    log.exception("registry server: app failed on %s %s", method, path[:200])
                    writer.write(
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    return
                finally:
                    ex.gone.set()
                if not ex.started or not ex.finished or not keep:
                    with contextlib.suppress(Exception):
                        await writer.drain()
                    return
                timeout = IDLE_TIMEOUT
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()
