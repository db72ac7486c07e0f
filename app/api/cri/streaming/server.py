"""The streaming server behind Exec/Attach/PortForward URLs (what kubelet's streaming server does).

Listens on loopback (a random port by default). The CRI servicer stores a
request with :meth:`StreamServer.exec_url` (etc.) and hands out
``http://127.0.0.1:<port>/<verb>/<token>``; a client (kubelet proxying
kubectl, crictl, or a test) upgrades that URL once:

    GET|POST /exec/<token>         Upgrade: SPDY/3.1 + X-Stream-Protocol-Version: v4.channel.k8s.io…
    GET      /attach/<token>       Upgrade: websocket + Sec-WebSocket-Protocol: v5.channel.k8s.io…
    GET|POST /portforward/<token>  same, with portforward.k8s.io

    unknown / used / expired token → 404; wrong verb → 404; no upgrade → 400;
    no common protocol → 403 (SPDY) / 400 (WebSocket)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from app.api.cri.streaming import portforward, remotecommand, websocket
from app.api.cri.streaming.portforward import PortDialer, PortForwardRequest
from app.api.cri.streaming.remotecommand import CommandBackend, CommandRequest
from app.api.cri.streaming.tokens import TokenCache
from app.api.cri.streaming.transport import SpdyConnection, WsConnection

log = logging.getLogger(__name__)
MAX_HEAD = 32 * 1024
HEAD_TIMEOUT = 10.0
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]]

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower())
        return values[0] if values else ""

    def header_values(self, name: str) -> list[str]:
        """All values of a header, comma-separated lists split (as clients send protocol lists)."""
        out: list[str] = []
        for v in self.headers.get(name.lower(), []):
            out += [p.strip() for p in v.split(",") if p.strip()]
        return out


def parse_head(raw: bytes) -> HttpRequest:
    """Request line + headers of an HTTP/1.1 request (pure). Raises ValueError."""
    lines = raw.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    url = urlsplit(target)
    return HttpRequest(method.upper(), url.path, parse_qs(url.query), headers)


def _response(status: str, headers: dict[str, str] | None = None, body: str = "") -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    if not status.startswith("101"):
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body.encode())}",
                  "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class StreamServer:
    """Owns the listener, the token cache and the two backends."""

    def __init__(self, commands: CommandBackend, ports: PortDialer, *, address: str = "127.0.0.1",
                 port: int = 0, token_ttl: float = 60.0) -> None:
        self.commands, self.ports = commands, ports
        self.address, self.port = address, port
        self.tokens: TokenCache[CommandRequest | PortForwardRequest] = TokenCache(token_ttl)
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("CRI streaming server on %s", self.base_url)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._sessions):
                t.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    def url_for(self, request: CommandRequest | PortForwardRequest) -> str:
        verb = request.kind if isinstance(request, CommandRequest) else "portforward"
        return f"{self.base_url}/{verb}/{self.tokens.put(request)}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("streaming session failed")
        finally:
            if task is not None:
                self._sessions.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            if len(raw) > MAX_HEAD:
                raise ValueError("request head too large")
            req = parse_head(raw[:-4])
        except (ValueError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.write(_response("400 Bad Request", body="malformed request\n"))
            return
        parts = req.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("exec", "attach", "portforward"):
            writer.write(_response("404 Not Found", body="not found\n"))
            return
        verb, token = parts
        upgrade = req.header("upgrade").lower()
        if upgrade not in ("websocket", "spdy/3.1"):
            writer.write(_response("400 Bad Request", body="Upgrade request required\n"))
            return
        stored = self.tokens.take(token)
        kind = "portforward" if isinstance(stored, PortForwardRequest) else getattr(stored, "kind", None)
        if stored is None or kind != verb:
            writer.write(_response("404 Not Found", body="invalid or expired stream token\n"))
            return
        if upgrade == "websocket":
            await self._websocket(req, reader, writer, stored)
        else:
            await self._spdy(req, reader, writer, stored)

    async def _spdy(self, req: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    stored: CommandRequest | PortForwardRequest) -> None:
        offered = req.header_values("x-stream-protocol-version")
        supported = remotecommand.SPDY_PROTOCOLS if isinstance(stored, CommandRequest) else PORTFORWARD_PROTOCOLS
        chosen = next((p for p in supported if p in offered), None)
        if chosen is None:
            body = f"unable to upgrade: no common protocol; server supports {', '.join(supported)}\n"
            writer.write(_response("403 Forbidden", {"X-Accepted-Stream-Protocol-Versions":
                                                     ", ".join(supported)}, body))
            return
        writer.write(_response("101 Switching Protocols", {
            "Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": chosen}))
        await writer.drain()
        conn = SpdyConnection(reader, writer)
        conn.start()
        try:
            if isinstance(stored, CommandRequest):
                await remotecommand.serve_spdy(conn, chosen, stored, self.commands)
            else:
                await portforward.serve_spdy(conn, stored, self.ports)
        finally:
            await conn.close()

    async def _websocket(self, req: HttpRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         stored: CommandRequest | PortForwardRequest) -> None:
        key = req.header("sec-websocket-key")
        offered = req.header_values("sec-websocket-protocol")
        if isinstance(stored, CommandRequest):
            supported: tuple[str, ...] = remotecommand.WS_PROTOCOLS
        else:
            supported = (*PORTFORWARD_PROTOCOLS, "v4.channel.k8s.io")
        chosen = next((p for p in offered if p in supported), None)
        if not key or req.header("sec-websocket-version") != "13" or chosen is None:
            body = f"websocket upgrade needs version 13 and one of: {', '.join(supported)}\n"
            writer.write(_response("400 Bad Request", {"Sec-WebSocket-Version": "13"}, body))
            return
        writer.write(_response("101 Switching Protocols", {
            "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Accept": websocket.accept_key(key), "Sec-WebSocket-Protocol": chosen}))
        await writer.drain()
        ws = WsConnection(reader, writer)
        if isinstance(stored, CommandRequest):
            await remotecommand.serve_websocket(ws, chosen, stored, self.commands)
            return
        ports = stored.ports
        if not ports:
            try:
                ports = tuple(int(p) for p in req.query.get("port", []))
            except ValueError:
                ports = ()
        if not ports:
            await ws.send(bytes([1]) + b"no port given to forward")
            await ws.close(1008)
            return
        await portforward.serve_websocket(ws, stored, ports, self.ports)
