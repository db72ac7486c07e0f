"""The vappc listener: one transport code path for the Unix socket and AF_VSOCK.

Per connection::

    reader loop ──► LineDecoder ──► parse_request ──┬─ no "id": ordered queue ──► one worker
                         │                          │      (answers in request order: the
                         │                          │       original contract, old agents)
                         │                          └─ with "id": its own task, lines tagged
                         └─ line too long: Error line, close   with the id (interleaved)

Every request's lines (Progress..., then one terminal Ok/Error) are written by
that request alone and in order; writes are whole lines, so concurrent requests
never tear each other's lines. Requests are executed independently of the
connection: a client that goes away does not cancel a StartApp half-way (the
app would be left neither started nor cleaned up). AppState/ListApps/StopApp/Ping
never wait for a start, because the service does not serialise them behind it
and requests with an ``id`` are not serialised by the connection either.

Access control: on the Unix socket the peer's SO_PEERCRED uid/gid must be in
the allowed lists (default: the daemon's uid and root); AF_VSOCK peers are the
hypervisor side and have no credentials, so the optional CID list applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from app.api.sockets import bind_unix_socket
from app.config import VappcSettings
from app.errors import DeadlineExceeded, Internal, PermissionDenied, Unavailable, VappError
from app.metrics import VAPPC_COMMANDS, VAPPC_LATENCY
from app.services.app_types import (
    AppHandle,
    AppSpec,
    AppStatus,
    AppSummary,
    ContainerGroup,
    DnsRecord,
    GroupResult,
    Progress,
)
from app.vappc import intents
from app.vappc import protocol as p

log = logging.getLogger(__name__)
ProgressFn = Callable[[Progress], None]
_READ_CHUNK = 256 * 1024
_MAX_QUEUED = 64  # ordered requests buffered per connection before we stop reading
_MAX_CONCURRENT = 64  # id-tagged requests in flight per connection
_DRAIN_ABOVE = 64 * 1024
# Answered from the reader loop itself when nothing is queued before them: they are
# quick and touch no container, so a task and a queue hop would only add latency.
_INLINE = frozenset({"Ping", "Version", "AppState", "ListApps", "GetInterfaceIp"})
# Long commands run as their own task, shielded from the connection going away.
_DETACHED = frozenset({"StartApp", "StartContainerGroup", "StopApp", "UpdateDnsRecords", "ApplyIntent",
                       "DeleteIntent"})


class VappcBackend(Protocol):
    """What the listener needs from the service layer (``AppService`` implements it)."""

    async def start_app(self, spec: AppSpec, progress: ProgressFn) -> AppHandle: ...
    async def stop_app(self, app_id: str, timeout: float | None = None) -> None: ...
    async def app_state(self, app_id: str) -> AppStatus: ...
    async def list_apps(self) -> list[AppSummary]: ...
    async def start_group(self, group: ContainerGroup, progress: ProgressFn) -> GroupResult: ...
    async def interface_ip(self, interface: str) -> str | None: ...
    async def run_diagnostic(self) -> dict[str, str]: ...
    async def update_dns_records(self, records: list[DnsRecord]) -> int: ...


async def execute(backend: VappcBackend, req: p.Request, progress: ProgressFn,
                  bootstrap: intents.IntentBackend | None = None) -> bytes:
    """Run one request against the service; return its terminal line (Ok or Error).

    Counts and times every command (``vapp_vappc_commands_total{command,outcome}``,
    outcome ``ok`` or the error's category, e.g. ``Image``).
    """
    rid = req.id
    started = time.perf_counter()
    outcome = "ok"
    try:
        if req.cmd in intents.COMMANDS:
            return await intents.execute(bootstrap, req, progress)
        return await _execute(backend, req, progress)
    except VappError as exc:
        outcome = exc.category.value
        return p.error_line(exc, rid)
    except TimeoutError:
        outcome = "Timeout"
        return p.error_line(DeadlineExceeded(f"{req.cmd} timed out"), rid)
    except Exception as exc:  # a bug: answer, log the trace, keep the connection
        outcome = "Internal"
        log.exception("vappc %s failed", req.cmd)
        return p.error_line(Internal(f"internal error in {req.cmd}: {type(exc).__name__}: {exc}"), rid)
    finally:
        VAPPC_COMMANDS.labels(req.cmd, outcome).inc()
        VAPPC_LATENCY.labels(req.cmd).observe(time.perf_counter() - started)


async def _execute(backend: VappcBackend, req: p.Request, progress: ProgressFn) -> bytes:
    rid, d = req.id, req.data
    match req.cmd:
        case "Ping":
            return p.ok_line("Unit", req_id=rid)
        case "Version":
            info = {"protocol": p.PROTOCOL_VERSION, "features": list(p.FEATURES)}
            return p.ok_line("Version", info, rid)
        case "StartApp":
            handle = await backend.start_app(d.spec, progress)
            return p.ok_line("AppHandle", p.handle_to_wire(handle), rid)
        case "StopApp":
            await backend.stop_app(d.app_id, d.timeout_secs)
            return p.ok_line("Unit", req_id=rid)
        case "AppState":
            return p.ok_line("AppState", p.status_to_wire(await backend.app_state(d.app_id)), rid)
        case "ListApps":
            apps = await backend.list_apps()
            return p.ok_line("AppList", [p.summary_to_wire(s) for s in apps], rid)
        case "GetInterfaceIp":
            ip = await backend.interface_ip(d.interface)
            return p.ok_line("InterfaceIp", {"interface": d.interface, "ip": ip}, rid)
        case "StartContainerGroup":
            result = await backend.start_group(d.group, progress)
            return p.ok_line("ContainerGroup", p.group_to_wire(result), rid)
        case "RunDiagnostic":
            return p.ok_line("Diagnostic", await backend.run_diagnostic(), rid)
        case "UpdateDnsRecords":
            count = await backend.update_dns_records(list(d.records))
            return p.ok_line("DnsRecordsUpdated", {"count": count}, rid)
    raise Internal(f"command {req.cmd} has no handler")


class _Connection:
    """One client: its writer, its ordered queue and its in-flight tasks."""

    def __init__(self, server: VappcServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.closed = False
        self.queue: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue(_MAX_QUEUED)
        self.slots = asyncio.Semaphore(_MAX_CONCURRENT)
        self.tasks: set[asyncio.Task[None]] = set()
        self.pending = 0  # ordered jobs queued or running

    def send(self, line: bytes) -> None:
        if self.closed:
            return
        try:
            self.writer.write(line)
        except (ConnectionError, RuntimeError):
            self.closed = True

    async def flush(self) -> None:
        # drain() only matters when the peer reads slower than we write.
        if self.closed or self.writer.transport.get_write_buffer_size() < _DRAIN_ABOVE:
            return
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.closed = True

    async def worker(self) -> None:
        while (job := await self.queue.get()) is not None:
            try:
                await job()
            finally:
                self.pending -= 1

    async def enqueue(self, job: Callable[[], Awaitable[None]]) -> None:
        self.pending += 1
        await self.queue.put(job)

    async def run_request(self, req: p.Request) -> None:
        clamp = p.ProgressClamp()

        def progress(event: Progress) -> None:
            self.send(p.progress_line(clamp(event), req.id))

        terminal = await self.server.run(req, progress)
        self.send(terminal)
        await self.flush()

    async def answer(self, line: bytes) -> None:
        self.send(line)
        await self.flush()

    async def submit(self, line: bytes) -> None:
        """Route one request line: ordered queue, or its own task when it has an id."""
        try:
            req = p.parse_request(line)
        except p.RequestError as exc:
            err = p.error_line(exc, exc.request_id)
            if exc.request_id is None:
                await self.enqueue(functools.partial(self.answer, err))
            else:
                self.send(err)
            return
        if req.id is None:
            if self.pending == 0 and req.cmd in _INLINE:
                await self.run_request(req)
            else:
                await self.enqueue(functools.partial(self.run_request, req))
            return
        await self.slots.acquire()
        task = asyncio.get_running_loop().create_task(self.run_request(req))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release()


class VappcServer:
    """Listen on the vappc Unix socket (and AF_VSOCK when a port is set)."""

    name = "vappc"

    def __init__(
        self,
        settings: VappcSettings,
        backend: VappcBackend,
        *,
        socket_mode: int = 0o660,
        socket_group: str | None = None,
        bootstrap: intents.IntentBackend | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.bootstrap = bootstrap  # None: the intent commands answer "bootstrap is disabled"
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._requests: set[asyncio.Task[bytes]] = set()
        uid = os.geteuid()
        self.allowed_uids = set(settings.allowed_uids) or {uid, 0}
        self.allowed_gids = set(settings.allowed_gids)
        self.addresses: list[str] = []

    async def start(self) -> list[str]:
        path = Path(self.settings.socket)
        sock = bind_unix_socket(path, self.socket_mode, self.socket_group)
        await self._serve(sock, self._check_unix_peer)
        self.addresses.append(f"unix://{path}")
        if self.settings.vsock_port is not None:
            vsock = bind_vsock(self.settings.vsock_port)
            await self._serve(vsock, self._check_vsock_peer)
            cid, port = vsock.getsockname()
            self.addresses.append(f"vsock:{cid}:{port}")
        log.info("vappc listening on %s", ", ".join(self.addresses))
        return list(self.addresses)

    async def _serve(self, sock: socket.socket, check: Callable[[Any], VappError | None]) -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await self._handle(reader, writer, check)
            finally:
                self._connections.discard(task)

        server = await asyncio.start_server(on_connect, sock=sock, limit=_READ_CHUNK)
        self._servers.append(server)

    async def stop(self, grace: float) -> None:
        """Stop accepting; let requests in flight finish for ``grace`` seconds, then cancel."""
        for server in self._servers:
            server.close()
        if self._requests:
            _, pending = await asyncio.wait(set(self._requests), timeout=grace)
            for task in pending:
                task.cancel()
        for conn_task in list(self._connections):
            conn_task.cancel()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=1.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        with contextlib.suppress(FileNotFoundError):
            Path(self.settings.socket).unlink()

    async def run(self, req: p.Request, progress: ProgressFn) -> bytes:
        """Execute a request; long ones as their own task, so a vanished client cannot cancel them."""
        if req.cmd not in _DETACHED:
            return await execute(self.backend, req, progress, self.bootstrap)
        task = asyncio.get_running_loop().create_task(execute(self.backend, req, progress, self.bootstrap))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        return await asyncio.shield(task)

    def _check_unix_peer(self, sock: Any) -> VappError | None:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        if uid in self.allowed_uids or gid in self.allowed_gids:
            return None
        log.warning("vappc: refused peer pid=%d uid=%d gid=%d", pid, uid, gid)
        return PermissionDenied(f"peer uid {uid} gid {gid} is not allowed on this socket", phase="connect")

    def _check_vsock_peer(self, sock: Any) -> VappError | None:
        return None

    async def _handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        check: Callable[[Any], VappError | None],
    ) -> None:
        conn = _Connection(self, writer)
        refused = check(writer.get_extra_info("socket"))
        if refused is not None:
            await conn.answer(p.error_line(refused))
            await _linger(reader, writer)
            return
        worker = asyncio.get_running_loop().create_task(conn.worker())
        try:
            await self._read_requests(reader, conn)
            # The peer closed its side (or overflowed): answer what it already asked, then close.
            await conn.queue.put(None)
            await worker
            if conn.tasks:
                await asyncio.wait(set(conn.tasks))
        except (ConnectionError, OSError):
            conn.closed = True
        finally:
            worker.cancel()
            await _close(writer)

    async def _read_requests(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        decoder = p.LineDecoder(self.settings.max_line_bytes)
        while True:
            data = await reader.read(_READ_CHUNK)
            if not data:
                tail = decoder.eof()
                if tail is not None:
                    await conn.submit(tail)
                return
            for event in decoder.feed(data):
                if isinstance(event, p.LineTooLong):
                    limit = self.settings.max_line_bytes
                    err = p.RequestError(f"request line longer than {limit} bytes; closing the connection")
                    await conn.enqueue(functools.partial(conn.answer, p.error_line(err)))
                    return
                await conn.submit(event)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then swallow what the refused peer still sends (briefly), then close.

    Closing at once would make a peer that writes its request right after
    connecting fail with EPIPE before it can read why it was refused.
    """
    with contextlib.suppress(Exception):
        writer.write_eof()
        budget = 1024 * 1024
        async with asyncio.timeout(1.0):
            while budget > 0 and (chunk := await reader.read(65536)):
                budget -= len(chunk)
    await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)


def bind_vsock(port: int) -> socket.socket:
    """A listening AF_VSOCK socket on (VMADDR_CID_ANY, port); port -1: any free port."""
    try:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    except OSError as exc:
        raise Unavailable(f"AF_VSOCK is not available on this node: {exc.strerror}", phase="listen") from exc
    try:
        want = socket.VMADDR_PORT_ANY if port < 0 else port
        sock.bind((socket.VMADDR_CID_ANY, want))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise Unavailable(f"cannot listen on AF_VSOCK port {port}: {exc.strerror}", phase="listen") from exc
    return sock
