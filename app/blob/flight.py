"""Single-flight stream-through: one upstream download per digest, every waiter fed as bytes land.

::

    request A ──┐                        ┌── A reads ingest data with pread() up to `readable`
    request B ──┼─> FlightTable[digest] ─┤
    request C ──┘    one Flight          └── C (joined late) starts at offset 0 of the same file
                        │
                        └─ download task (owned by the table, not by any client):
                           STARTING ──headers──> RECEIVING ──eof──> COMMITTING ──ok──> DONE
                              │                    │  ▲                   │
                              │         conn error │  │ Range: bytes=N-   └─mismatch─> FAILED
                              └──no endpoint────────┴──┴─(retries spent)──────────────> FAILED

The last byte of the blob is released to waiters only after the content store verified
digest and size, so a client never receives a complete, wrong blob: on a mismatch its
response is cut short and nothing is cached. A waiter that disconnects just stops
reading; the download goes on for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

import httpx

from app.blob import metrics
from app.blob.upstream import Upstream, UpstreamResponse
from app.content import ContentInfo, ContentStore, DigestMismatch, Writer
from app.errors import AlreadyExists, Category, Internal, NotFound, Unavailable, VappError

log = logging.getLogger(__name__)
READ_CHUNK = 1024 * 1024
MAX_ATTEMPTS = 6
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

OnCommit = Callable[["Flight", ContentInfo], Awaitable[None]]


class Flight:
    """One in-progress download of ``digest``; see the module docstring for the states."""

    def __init__(self, digest: str, upstream: Upstream, repository: str) -> None:
        self.digest = digest
        self.upstream = upstream
        self.repository = repository
        self.size: int | None = None
        self.written = 0
        self.verified = False
        self.error: VappError | None = None
        self.started = time.monotonic()
        self.waiters = 0
        self._ready = asyncio.Event()  # headers known (size) or failed
        self._done = asyncio.Event()
        self._progress = asyncio.Event()
        self._fd: int | None = None
        self._fd_users = 1  # the download itself

    # --- producer side ------------------------------------------------------------------
    def _notify(self) -> None:
        ev, self._progress = self._progress, asyncio.Event()
        ev.set()

    def _fail(self, error: VappError) -> None:
        self.error = error
        self._ready.set()
        self._done.set()
        self._notify()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def readable(self) -> int:
        """Bytes waiters may take: everything once verified, else all but the blob's last byte."""
        if self.verified:
            return self.written
        limit = (self.size if self.size is not None else self.written) - 1
        return max(0, min(self.written, limit))

    async def run(self, store: ContentStore, on_commit: OnCommit) -> None:
        ref = f"blob-{self.digest}"
        try:
            writer = await self._open_writer(store, ref)
        except VappError as exc:
            self._fail(exc)
            return
        self._fd = os.open(writer.open_reader().name, os.O_RDONLY | os.O_CLOEXEC)
        metrics.INFLIGHT_DOWNLOADS.inc()
        try:
            await self._download(writer)
            if writer.digest() == self.digest and (self.size is None or writer.offset == self.size):
                # The bytes are proven: release the last byte to waiters now; the fsync and rename
                # of commit() (which re-checks both) happen while they finish.
                self.verified = True
                self._notify()
            info = await asyncio.to_thread(writer.commit)
            self.verified = True
            self.written = info.size
            await on_commit(self, info)
            self._ready.set()
            self._done.set()
            self._notify()
        except DigestMismatch as exc:
            metrics.DIGEST_FAILURES.labels(upstream=self.upstream.registry).inc()
            log.warning("blob %s from %s failed verification: %s", self.digest, self.upstream.registry, exc.message)
            self._fail(
                Unavailable(
                    f"upstream sent content that does not match {self.digest}",
                    category=Category.IMAGE,
                    details={"digest": self.digest, "reason": exc.message},
                )
            )
        except VappError as exc:
            writer.close()  # keep the partial data: a later request resumes from it
            self._fail(exc)
        except BaseException as exc:
            writer.close()
            self._fail(Internal(f"download of {self.digest} failed: {exc!r}"))
            if not isinstance(exc, Exception):
                raise
        finally:
            metrics.INFLIGHT_DOWNLOADS.dec()
            self._release_fd()

    async def _open_writer(self, store: ContentStore, ref: str) -> Writer:
        for _ in range(50):  # another process (or a dying flight) may hold the ingest briefly
            try:
                return store.writer(ref, self.digest, None)
            except AlreadyExists:
                await asyncio.sleep(0.1)
        raise Unavailable(f"blob {self.digest} is being written by someone else", category=Category.IMAGE)

    async def _download(self, writer: Writer) -> None:
        attempt = 0
        while True:
            offset = writer.offset
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                resp = await self.upstream.open(
                    "GET", self.repository, f"blobs/{self.digest}", headers, ok=frozenset({200, 206})
                )
            except NotFound:
                raise
            except VappError:
                attempt += 1
                if attempt >= MAX_ATTEMPTS or not self._ready.is_set():
                    raise
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            try:
                self._accept_headers(resp, writer)
                finished = await self._receive(resp, writer)
            finally:
                await resp.aclose()
            if finished:
                return
            attempt += 1
            if attempt >= MAX_ATTEMPTS:
                raise Unavailable(
                    f"download of {self.digest} kept failing after {attempt} attempts",
                    category=Category.IMAGE,
                    details={"digest": self.digest, "offset": writer.offset},
                )
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt))

    def _accept_headers(self, resp: UpstreamResponse, writer: Writer) -> None:
        total: int | None = None
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("content-range", ""))
            if m is None or int(m.group(1)) != writer.offset:
                raise Unavailable(f"upstream answered a bad Content-Range for {self.digest}", category=Category.IMAGE)
            total = int(m.group(3)) if m.group(3) != "*" else None
            metrics.RESUMES.labels(mode="range").inc()
        else:
            if writer.offset:
                log.info("blob %s: upstream ignored Range, restarting from 0", self.digest)
                writer.reset()
                self.written = 0
                metrics.RESUMES.labels(mode="restart").inc()
            length = resp.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        if total is not None:
            if self.size is not None and self.size != total:
                raise Unavailable(f"upstream endpoints disagree on the size of {self.digest}", category=Category.IMAGE)
            self.size = total
        self.written = writer.offset
        self._ready.set()

    async def _receive(self, resp: UpstreamResponse, writer: Writer) -> bool:
        """Copy the body into the ingest; True when the whole blob is there, False to resume.

        Hashing and writing a chunk run in a worker thread (both release the GIL) while the
        loop receives the next one: one write in flight at a time keeps the file in order.
        """
        start, got = time.monotonic(), 0
        counter = metrics.BYTES_PULLED.labels(upstream=self.upstream.registry)
        pending: asyncio.Future[None] | None = None

        async def settle() -> None:
            nonlocal pending
            if pending is not None:
                fut, pending = pending, None
                await fut
                self.written = writer.offset
                self._notify()

        try:
            async for chunk in resp.response.aiter_raw():
                await settle()
                pending = asyncio.ensure_future(asyncio.to_thread(writer.write, chunk))
                got += len(chunk)
                counter.inc(len(chunk))
            await settle()
        except httpx.HTTPError as exc:
            await settle()
            resp.endpoint.stats.record_failure(f"body: {type(exc).__name__}")
            log.info("blob %s: upstream %s broke at %d bytes (%s); resuming", self.digest, resp.endpoint.url,
                     writer.offset, type(exc).__name__)  # fmt: skip
            return False
        except BaseException:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            raise
        resp.endpoint.stats.record_throughput(got, time.monotonic() - start)
        # A clean EOF short of the size means the connection was cut: resume.
        return self.size is None or writer.offset >= self.size

    def _release_fd(self) -> None:
        self._fd_users -= 1
        if self._fd_users == 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- consumer side ------------------------------------------------------------------
    async def wait_ready(self) -> int | None:
        """Wait for the header phase; return the blob size (None if upstream did not say)."""
        await self._ready.wait()
        if self.error is not None and self.written == 0:
            raise self.error
        return self.size

    async def wait_done(self, progress: Callable[[int, int | None], None] | None = None) -> None:
        while not self._done.is_set():
            ev = self._progress
            if progress is not None:
                progress(self.written, self.size)
            await ev.wait()
        if self.error is not None:
            raise self.error
        if progress is not None:
            progress(self.written, self.size)

    def reader(self, start: int = 0, end: int | None = None) -> FlightReader:
        """Bytes ``[start, end)`` as they become readable. Registers the waiter now, so the data file
        stays open for it even if the download finishes before the first read; close it with aclose()."""
        return FlightReader(self, start, end)


class FlightReader:
    """An async iterator over a flight's bytes; raises the flight's error if the download fails."""

    def __init__(self, flight: Flight, start: int, end: int | None) -> None:
        self._f = flight
        self._pos = start
        self._end = end
        self._open = flight._fd is not None or not flight._ready.is_set()
        if self._open:
            flight._fd_users += 1
            flight.waiters += 1
            metrics.SINGLEFLIGHT_WAITERS.inc()

    def __aiter__(self) -> FlightReader:
        return self

    def fileno(self) -> int:
        """The ingest file (same inode as the committed blob), for zero-copy senders."""
        fd = self._f._fd
        if fd is None:
            raise Unavailable(f"download of {self._f.digest} ended", category=Category.IMAGE)
        return fd

    async def next_span(self, limit: int | None = None) -> tuple[int, int] | None:
        """Wait for readable bytes; return ``(offset, count)`` (consumed) or None at the end."""
        f = self._f
        try:
            await f._ready.wait()
            if not self._open or f._fd is None:
                raise f.error or Unavailable(f"download of {f.digest} ended", category=Category.IMAGE)
            while self._end is None or self._pos < self._end:
                ev = f._progress
                avail = f.readable if self._end is None else min(f.readable, self._end)
                if self._pos < avail:
                    pos, n = self._pos, avail - self._pos
                    if limit is not None:
                        n = min(n, limit)
                    self._pos += n
                    return pos, n
                if f.error is not None:
                    raise f.error
                if (f.verified or f._done.is_set()) and self._pos >= f.written:
                    break  # verified: no need to wait for the fsync and rename of commit()
                await ev.wait()
        except BaseException:
            await self.aclose()
            raise
        await self.aclose()
        return None

    async def __anext__(self) -> bytes:
        span = await self.next_span(READ_CHUNK)
        if span is None:
            raise StopAsyncIteration
        fd = self._f._fd
        data = os.pread(fd, span[1], span[0]) if fd is not None else b""
        if len(data) != span[1]:
            await self.aclose()
            raise Internal(f"ingest of {self._f.digest} shrank under a reader")
        return data

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._f.waiters -= 1
            metrics.SINGLEFLIGHT_WAITERS.dec()
            self._f._release_fd()


class FlightTable:
    """digest -> the one live :class:`Flight`; downloads are tasks owned here."""

    def __init__(self, store: ContentStore, on_commit: OnCommit) -> None:
        self._store = store
        self._on_commit = on_commit
        self._flights: dict[str, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, digest: str) -> Flight | None:
        return self._flights.get(digest)

    def join(self, digest: str, upstream: Upstream, repository: str) -> tuple[Flight, bool]:
        """The live flight for ``digest`` or a new one; the bool says whether this call started it."""
        flight = self._flights.get(digest)
        if flight is not None and not flight.done:
            return flight, False
        flight = Flight(digest, upstream, repository)
        self._flights[digest] = flight
        task = asyncio.get_running_loop().create_task(self._run(flight), name=f"blob-flight-{digest[:19]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight, True

    async def _run(self, flight: Flight) -> None:
        try:
            await flight.run(self._store, self._on_commit)
        finally:
            if self._flights.get(flight.digest) is flight:
                del self._flights[flight.digest]

    def active(self) -> list[Flight]:
        return list(self._flights.values())

    def in_flight(self, digest: str) -> bool:
        return digest in self._flights

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
