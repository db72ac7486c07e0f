"""The /v2 front door: a lean ASGI app (no framework on the hot path) over :class:`CacheService`.

Routes (pull side of the distribution spec; everything else is 405 UNSUPPORTED)::

    GET|HEAD /v2/                                  200 {}  Docker-Distribution-API-Version
    GET|HEAD /v2/<name>/manifests/<tag|digest>     upstream bytes, media type, Docker-Content-Digest
    GET|HEAD /v2/<name>/blobs/<digest>             Range -> 206 + Content-Range, 416 if unsatisfiable
    GET      /v2/<name>/tags/list?n=&last=         proxied, Link rewritten to our name

Upstream choice: ``?ns=<registry>``, a registry prefix in ``<name>``, or the default.
Names are checked on the raw path: percent-encoded bytes (``%2F``), ``.``/``..`` segments
and empty segments are NAME_INVALID before anything is resolved.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from app.api.registry.basicauth import Htpasswd
from app.api.registry.errors import encode, registry_error
from app.blob import metrics
from app.blob.cache import BlobHandle
from app.errors import Category, InvalidArgument, VappError
from app.services.cache import CacheService

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")
FILE_CHUNK = 4 * 1024 * 1024
_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?:(?P<kind>manifests|blobs)/(?P<ref>[^/]+)|(?P<tags>tags/list))$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """``(start, end_exclusive)``; None: serve everything; False: unsatisfiable (416)."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # unparseable or multi-range: RFC 9110 lets us ignore it
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        return (max(0, size - n), size) if n > 0 else False
    start = int(m.group(1))
    end = int(m.group(2)) + 1 if m.group(2) else size
    if start >= size or end <= start:
        return False
    return start, min(end, size)


def _headers(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [API_VERSION, *((k.encode(), v.encode("latin-1")) for k, v in pairs)]


async def _respond(send: Send, status: int, headers: list[tuple[str, str]], body: bytes = b"",
                   head: bool = False) -> None:  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": _headers(headers)})
    await send({"type": "http.response.body", "body": b"" if head else body})


class RegistryApp:
    def __init__(self, service: CacheService, htpasswd: Htpasswd | None = None) -> None:
        self.service = service
        self.htpasswd = htpasswd

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            key = k.decode("latin-1").lower()
            # Repeated headers (clients send one Accept per media type) combine with commas.
            headers[key] = f"{headers[key]}, {v.decode('latin-1')}" if key in headers else v.decode("latin-1")
        if self.htpasswd is not None and not self.htpasswd.check(headers.get("authorization")):
            body = encode("UNAUTHORIZED", "authentication required")
            await _respond(send, 401, [("content-type", "application/json"), ("content-length", str(len(body))),
                                       ("www-authenticate", 'Basic realm="vapp-registry-cache"')], body)  # fmt: skip
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        route = "base"
        started = False
        send_ = send

        async def tracked(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = True
            await send_(message)

        send = tracked
        try:
            if path in ("/v2", "/v2/"):
                if method not in ("GET", "HEAD"):
                    raise _unsupported(method)
                await _respond(
                    send,
                    200,
                    [("content-type", "application/json"), ("content-length", "2")],
                    b"{}",
                    head=method == "HEAD",
                )
                metrics.REQUESTS.labels(kind="base", status="200", cache="none").inc()
                return
            m = _ROUTE.match(path)
            if m is None:
                raise InvalidArgument(
                    f"unknown registry path {path[:200]!r}",
                    category=Category.IMAGE,
                    details={"code": "NAME_UNKNOWN" if path.startswith("/v2/") else "UNSUPPORTED"},
                )
            name = m.group("name")
            _check_name(name)
            ns = _first(query, "ns")
            if m.group("tags"):
                route = "tags"
                if method != "GET":
                    raise _unsupported(method)
                await self._tags(send, name, ns, query)
                return
            route = "manifest" if m.group("kind") == "manifests" else "blob"
            if method not in ("GET", "HEAD"):
                raise _unsupported(method)
            if route == "manifest":
                await self._manifest(send, name, m.group("ref"), ns, headers, method == "HEAD")
            else:
                await self._blob(scope, receive, send, name, m.group("ref"), ns, headers, method == "HEAD")
        except VappError as exc:
            if started:
                # Mid-body failure: propagate so the server drops the connection; the client
                # sees a short read (never a complete, unverified blob).
                log.warning("registry %s %s failed mid-response: %s", method, path[:200], exc.message)
                raise
            send = send_
            status, code, body = registry_error(exc, route)
            metrics.REQUESTS.labels(kind=route, status=str(status), cache="none").inc()
            if status >= 500 or status == 429:
                log.warning("registry %s %s -> %d %s: %s", method, path[:200], status, code, exc.message)
            await _respond(send, status, [("content-type", "application/json"), ("content-length", str(len(body)))],
                           body, head=method == "HEAD")  # fmt: skip

    async def _manifest(self, send: Send, name: str, ref: str, ns: str | None, headers: dict[str, str],
                        head: bool) -> None:  # fmt: skip
        accept = [a.strip() for a in headers.get("accept", "").split(",") if a.strip()]
        res = await self.service.get_manifest(name, ref, accept, ns)
        await _respond(send, 200, [
            ("content-type", res.media_type), ("content-length", str(len(res.body))),
            ("docker-content-digest", res.digest), ("etag", f'"{res.digest}"'),
        ], res.body, head=head)  # fmt: skip
        metrics.REQUESTS.labels(kind="manifest", status="200", cache=res.cache).inc()

    async def _tags(self, send: Send, name: str, ns: str | None, query: dict[str, list[str]]) -> None:
        n_text = _first(query, "n")
        if n_text is not None and not n_text.isdigit():
            raise InvalidArgument("n must be a non-negative integer", category=Category.IMAGE,
                                  details={"code": "PAGINATION_NUMBER_INVALID"})  # fmt: skip
        body, next_query = await self.service.list_tags(name, ns, int(n_text) if n_text else None,
                                                        _first(query, "last"))  # fmt: skip
        hdrs = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if next_query:
            extra = "&" + urllib.parse.urlencode({"ns": ns}) if ns else ""
            hdrs.append(("link", f'</v2/{name}/tags/list?{next_query}{extra}>; rel="next"'))
        await _respond(send, 200, hdrs, body)
        metrics.REQUESTS.labels(kind="tags", status="200", cache="none").inc()

    async def _blob(self, scope: Scope, receive: Receive, send: Send, name: str, digest: str, ns: str | None,
                    headers: dict[str, str], head: bool) -> None:  # fmt: skip
        handle = await self.service.open_blob(name, digest, ns, head=head)
        try:
            zerocopy = "http.response.zerocopy" in scope.get("extensions", {})
            await self._send_blob(receive, send, handle, headers.get("range"), head, zerocopy)
        finally:
            handle.release()

    async def _send_blob(self, receive: Receive, send: Send, handle: BlobHandle, range_hdr: str | None,
                         head: bool, zerocopy: bool = False) -> None:  # fmt: skip
        size = handle.size
        base = [("content-type", "application/octet-stream"), ("docker-content-digest", handle.digest),
                ("etag", f'"{handle.digest}"'), ("accept-ranges", "bytes")]  # fmt: skip
        span = parse_range(range_hdr, size) if size is not None else None
        if span is False:
            await _respond(send, 416, [*base, ("content-range", f"bytes */{size}"), ("content-length", "0")])
            metrics.REQUESTS.labels(kind="blob", status="416", cache=handle.cache).inc()
            return
        end: int | None
        if isinstance(span, tuple):
            start, end = span
            status, hdrs = 206, [*base, ("content-range", f"bytes {start}-{end - 1}/{size}")]
        else:
            start, end = 0, size
            status, hdrs = 200, list(base)
        if end is not None:
            hdrs.append(("content-length", str(end - start)))
        await send({"type": "http.response.start", "status": status, "headers": _headers(hdrs)})
        metrics.REQUESTS.labels(kind="blob", status=str(status), cache=handle.cache).inc()
        if head:
            await send({"type": "http.response.body", "body": b""})
            return
        served = metrics.BYTES_SERVED.labels(upstream=handle.upstream)
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(receive, gone))
        try:
            if handle.path is not None and zerocopy:
                with handle.path.open("rb", buffering=0) as fh:
                    count = (end or 0) - start
                    await send({"type": "http.response.zerocopy", "file": fh, "offset": start, "count": count,
                                "more_body": False})  # fmt: skip
                sent = count
            elif handle.path is not None:
                sent = await _send_file(send, handle.path, start, end or 0, gone)
            elif zerocopy and end is not None:
                sent = await _sendfile_flight(send, handle, start, end, gone)
            else:
                sent = await _send_flight(send, handle, start, end, gone)
            served.inc(sent)
        finally:
            watcher.cancel()


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _send_file(send: Send, path: Path, start: int, end: int, gone: asyncio.Event) -> int:
    # The fd stays valid even if eviction unlinks the file meanwhile (and "serving" pins it anyway).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with_advice = end - start > FILE_CHUNK
        if with_advice:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_SEQUENTIAL)
        pos = start
        while pos < end and not gone.is_set():
            chunk = os.pread(fd, min(FILE_CHUNK, end - pos), pos)
            if not chunk:
                raise InvalidArgument(f"blob file {path.name} is shorter than expected", category=Category.IMAGE)
            pos += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": pos < end})
        return pos - start
    finally:
        os.close(fd)


async def _send_flight(send: Send, handle: BlobHandle, start: int, end: int | None, gone: asyncio.Event) -> int:
    reader = handle.reader(start, end)
    sent = 0
    try:
        async for chunk in reader:
            if gone.is_set():
                break  # this client left; the download goes on for the others
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await reader.aclose()
    # An error from the flight propagates before this point: the response stays short and the
    # server closes the connection, so the client sees a failure rather than a wrong blob.
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return sent


async def _sendfile_flight(send: Send, handle: BlobHandle, start: int, end: int, gone: asyncio.Event) -> int:
    """Stream-through with sendfile(2) from the ingest file, span by span as the download lands."""
    reader = handle.reader(start, end)
    sent = 0
    try:
        with os.fdopen(os.dup(reader.fileno()), "rb", buffering=0) as fh:
            while (span := await reader.next_span()) is not None and not gone.is_set():
                await send({"type": "http.response.zerocopy", "file": fh, "offset": span[0], "count": span[1],
                            "more_body": True})  # fmt: skip
                sent += span[1]
    finally:
        await reader.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return sent


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _unsupported(method: str) -> InvalidArgument:
    return InvalidArgument(f"{method} is not supported by this pull-through cache", category=Category.IMAGE,
                           details={"code": "UNSUPPORTED"})  # fmt: skip


def _check_name(name: str) -> None:
    if "%" in name or "\\" in name:
        raise InvalidArgument("repository names may not contain encoded or escaped characters",
                              category=Category.IMAGE, details={"name": name[:300]})  # fmt: skip
    if any(seg in ("", ".", "..") for seg in name.split("/")):
        raise InvalidArgument("repository names may not contain empty, '.' or '..' segments",
                              category=Category.IMAGE, details={"name": name[:300]})  # fmt: skip


def create_registry_app(service: CacheService, htpasswd: Path | None = None) -> ASGIApp:
    """The /v2 ASGI app; ``htpasswd`` turns on client basic auth (bcrypt/SHA entries)."""
    return RegistryApp(service, Htpasswd.load(htpasswd) if htpasswd else None)
