"""vappc clients: one asyncio core (:class:`AsyncClient`) and a blocking wrapper (:class:`Client`).

The core keeps one connection and tags every request with an ``id`` (protocol
2), so many calls can share the connection concurrently; a reader task routes
each line to the call waiting for that id::

    call() ──request line──► socket ──► daemon
      ▲                                    │
      └── queue[id] ◄── reader task ◄──────┘  Progress*, then Ok | Error

Progress reaches callers either as a callback (``start_app(spec, progress=fn)``)
or as an async iterator (``async for msg in client.stream("StartApp", data)``:
``ProgressMsg`` items, then the ``OkMsg``).

Failures arrive as :class:`RemoteError` (a ``VappError`` carrying the daemon's
``category``, ``phase`` and ``retryable``); a dead connection is
:class:`ConnectionLost` (retryable, category Io); an expired timeout is
``DeadlineExceeded``. Results are typed (``AppStatus``, ``AppSummary``...).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from app.errors import Category, DeadlineExceeded, Unavailable, VappError
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
from app.vappc import protocol as p

DEFAULT_SOCKET = "/tmp/vappc"
DEFAULT_TIMEOUT = 30.0
START_TIMEOUT = 900.0
ProgressCallback = Callable[[Progress], None]
T = TypeVar("T")


class RemoteError(VappError):
    """An ``Error`` line from the daemon."""

    def __init__(self, msg: p.ErrorMsg) -> None:
        try:
            category = Category(msg.category)
        except ValueError:
            category = Category.INTERNAL
        super().__init__(msg.message, category=category, phase=msg.phase)
        self.remote_retryable = msg.is_retryable

    @property
    def retryable(self) -> bool:
        return self.remote_retryable


class ConnectionLost(Unavailable):
    """The connection closed before the terminal line."""


async def open_stream(address: str | Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``/path/to/socket`` or ``vsock:CID:PORT``."""
    text = str(address)
    limit = 64 * 1024 * 1024
    if text.startswith("vsock:"):
        _, cid, port = text.split(":")
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (int(cid), int(port)))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=limit)
    return await asyncio.open_unix_connection(text.removeprefix("unix:"), limit=limit)


class AsyncClient:
    """A multiplexed connection to the daemon. Use ``async with AsyncClient(path) as c``."""

    def __init__(self, address: str | Path = DEFAULT_SOCKET, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Queue[p.Response | None]] = {}
        self._ids = itertools.count(1)

    async def connect(self, timeout: float = 5.0) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(open_stream(self.address), timeout)
        except (OSError, TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to vappc at {self.address}: {exc}") from exc
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = self._reader_task = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while line := await self._reader.readline():
                try:
                    msg = p.parse_response(line)
                except (ValueError, KeyError):
                    continue
                queue = self._waiting.get(msg.id) if isinstance(msg.id, int) else None
                if queue is not None:
                    queue.put_nowait(msg)
                elif isinstance(msg, p.ErrorMsg) and msg.id is None:
                    # A connection-level refusal (peer credentials, line too long).
                    for q in self._waiting.values():
                        q.put_nowait(msg)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            for q in self._waiting.values():
                q.put_nowait(None)

    async def stream(self, cmd: str, data: dict[str, Any] | None = None) -> AsyncIterator[p.Response]:
        """Send one request; yield its Progress lines and finally its Ok (errors raise)."""
        if self._writer is None:
            await self.connect()
        assert self._writer is not None
        rid = next(self._ids)
        queue: asyncio.Queue[p.Response | None] = asyncio.Queue()
        self._waiting[rid] = queue
        try:
            self._writer.write(p.request_line(cmd, data, rid))
            await self._writer.drain()
            while True:
                msg = await queue.get()
                if msg is None:
                    raise ConnectionLost(f"connection to vappc closed during {cmd}")
                if isinstance(msg, p.ErrorMsg):
                    raise RemoteError(msg)
                yield msg
                if isinstance(msg, p.OkMsg):
                    return
        except ConnectionError as exc:
            raise ConnectionLost(f"connection to vappc lost during {cmd}: {exc}") from exc
        finally:
            self._waiting.pop(rid, None)

    async def call(
        self,
        cmd: str,
        data: dict[str, Any] | None = None,
        *,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> p.OkMsg:
        """One request to its terminal line, within ``timeout`` seconds."""

        async def run() -> p.OkMsg:
            async for msg in self.stream(cmd, data):
                if isinstance(msg, p.ProgressMsg):
                    if progress is not None:
                        progress(msg.progress)
                elif isinstance(msg, p.OkMsg):
                    return msg
            raise ConnectionLost(f"no answer to {cmd}")

        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(run(), limit)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{cmd}: no answer within {limit}s") from exc

    # --- typed commands ------------------------------------------------------------
    async def ping(self) -> None:
        await self.call("Ping")

    async def version(self) -> dict[str, Any]:
        return dict((await self.call("Version")).data)

    async def start_app(
        self, spec: AppSpec | dict[str, Any], *, progress: ProgressCallback | None = None,
        timeout: float = START_TIMEOUT,
    ) -> AppHandle:
        body = spec.model_dump(exclude_none=True) if isinstance(spec, AppSpec) else spec
        ok = await self.call("StartApp", {"spec": body}, progress=progress, timeout=timeout)
        return AppHandle(ok.data["app_id"], ok.data["name"])

    async def stop_app(self, app_id: str, *, timeout: float = 120.0, grace: float | None = None) -> None:
        data: dict[str, Any] = {"app_id": app_id}
        if grace is not None:
            data["timeout_secs"] = grace
        await self.call("StopApp", data, timeout=timeout)

    async def app_state(self, app_id: str) -> AppStatus:
        return p.status_from_wire((await self.call("AppState", {"app_id": app_id})).data)

    async def list_apps(self) -> list[AppSummary]:
        ok = await self.call("ListApps")
        return [AppSummary(a["app_id"], a["name"], p.status_from_wire(a["state"])) for a in ok.data]

    async def interface_ip(self, interface: str) -> str | None:
        ip = (await self.call("GetInterfaceIp", {"interface": interface})).data.get("ip")
        return str(ip) if ip is not None else None

    async def start_group(
        self, group: ContainerGroup | dict[str, Any], *, progress: ProgressCallback | None = None,
        timeout: float = START_TIMEOUT,
    ) -> GroupResult:
        body = group.model_dump(exclude_none=True) if isinstance(group, ContainerGroup) else group
        ok = await self.call("StartContainerGroup", {"group": body}, progress=progress, timeout=timeout)
        handles = [AppHandle(h["app_id"], h["name"]) for h in ok.data.get("handles", [])]
        result = GroupResult(ok.data["group_name"], handles)
        if ok.data.get("error") is not None:
            detail = ok.data.get("error_detail") or {}
            result.error = RemoteError(p.ErrorMsg(
                detail.get("category", "Internal"), str(ok.data["error"]), detail.get("phase"),
                bool(detail.get("is_retryable", False)),
            ))
        return result

    async def diagnostic(self, timeout: float = 60.0) -> dict[str, str]:
        return dict((await self.call("RunDiagnostic", timeout=timeout)).data)

    async def update_dns_records(self, records: list[DnsRecord] | list[dict[str, str]]) -> int:
        body = [r.model_dump() if isinstance(r, DnsRecord) else r for r in records]
        return int((await self.call("UpdateDnsRecords", {"records": body})).data["count"])

    # --- intents (bootstrap) ---------------------------------------------------------
    async def apply_intent(
        self, intent: dict[str, Any], *, progress: ProgressCallback | None = None,
        timeout: float = START_TIMEOUT, apply_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Store and converge one intent: ``{"intent": ..., "components": [...]}``; a component
        that does not converge raises ``RemoteError`` (category Bootstrap, phase = component)."""
        data: dict[str, Any] = {"intent": intent}
        if apply_timeout is not None:
            data["timeout_secs"] = apply_timeout
        return dict((await self.call("ApplyIntent", data, progress=progress, timeout=timeout)).data)

    async def delete_intent(self, name: str) -> None:
        await self.call("DeleteIntent", {"name": name})

    async def list_intents(self) -> dict[str, Any]:
        """``{"intents": [...], "components": [...]}`` (component status as in bootstrap status)."""
        return dict((await self.call("ListIntents")).data)


class Client:
    """Blocking wrapper: the same methods as :class:`AsyncClient`, run on a private loop."""

    def __init__(self, address: str | Path = DEFAULT_SOCKET, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._loop = asyncio.new_event_loop()
        self._core = AsyncClient(address, timeout=timeout)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._core.close())
            self._loop.close()

    def __enter__(self) -> Client:
        self._run(self._core.connect())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, cmd: str, data: dict[str, Any] | None = None, **kw: Any) -> p.OkMsg:
        return self._run(self._core.call(cmd, data, **kw))

    def ping(self) -> None:
        self._run(self._core.ping())

    def version(self) -> dict[str, Any]:
        return self._run(self._core.version())

    def start_app(self, spec: AppSpec | dict[str, Any], **kw: Any) -> AppHandle:
        return self._run(self._core.start_app(spec, **kw))

    def stop_app(self, app_id: str, **kw: Any) -> None:
        self._run(self._core.stop_app(app_id, **kw))

    def app_state(self, app_id: str) -> AppStatus:
        return self._run(self._core.app_state(app_id))

    def list_apps(self) -> list[AppSummary]:
        return self._run(self._core.list_apps())

    def interface_ip(self, interface: str) -> str | None:
        return self._run(self._core.interface_ip(interface))

    def start_group(self, group: ContainerGroup | dict[str, Any], **kw: Any) -> GroupResult:
        return self._run(self._core.start_group(group, **kw))

    def diagnostic(self, timeout: float = 60.0) -> dict[str, str]:
        return self._run(self._core.diagnostic(timeout))

    def update_dns_records(self, records: list[DnsRecord] | list[dict[str, str]]) -> int:
        return self._run(self._core.update_dns_records(records))

    def apply_intent(self, intent: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return self._run(self._core.apply_intent(intent, **kw))

    def delete_intent(self, name: str) -> None:
        self._run(self._core.delete_intent(name))

    def list_intents(self) -> dict[str, Any]:
        return self._run(self._core.list_intents())
