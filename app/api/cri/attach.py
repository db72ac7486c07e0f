"""Attach: follow a container's CRI log as stdout/stderr, and feed stdin to its shim.

The container's stdio belongs to its shim, which writes output to the CRI log
(``<RFC 3339 nano> <stream> <P|F> <text>``). Attaching therefore follows that file
from its current end (reopening it when kubelet rotates it) and turns records back
into raw output, until the container stops or the client goes away. Input goes the other way through the
shim's ``attach.sock`` relay (the container service's ``attach_stdin``)::

    client stdin ──► io.stdin ──► attach.sock ──► shim ──► container stdin (pipe or pty master)
    client stdout/stderr ◄── records of <log_path> ◄── shim ◄── container stdout/stderr

Stdin is only relayed for containers created with ``stdin``; as containerd does,
a stdin stream asked of any other container is read and dropped rather than
failing the session. The client's stdin EOF half-closes the relay: with
``stdin_once`` the shim then closes the container's stdin, otherwise it stays
open for the next attach. Resizing the init process's terminal is not offered by
the container service, so resize messages are drained and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, BinaryIO

from app.api.cri.streaming.remotecommand import CommandIO
from app.errors import FailedPrecondition
from app.services.container_types import ContainerStatus

POLL = 0.1


def parse_record(line: bytes) -> tuple[str, bytes] | None:
    """``ts stream tag text`` → (stream, raw bytes incl. newline when the tag is F). Pure."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr"):
        return None
    text = parts[3] if len(parts) == 4 else b""
    return parts[1].decode(), text + (b"\n" if parts[2] == b"F" else b"")


async def follow_log(containers: Any, container_id: str, io: CommandIO, *, stdin: bool) -> int:
    info = await containers.inspect(container_id)
    path = info.log_path
    if not path:
        raise FailedPrecondition(f"container {container_id} has no log to attach to")
    fh = await _open_log(containers, container_id, path)
    tasks: list[asyncio.Task[None]] = [asyncio.create_task(_drain_resize(io))]
    try:
        fh.seek(0, os.SEEK_END)  # before any input, so the echo of our own stdin is seen
        if stdin:
            tasks.append(asyncio.create_task(_feed_stdin(containers, container_id, io)))
        pending = b""
        while True:
            chunk = fh.read(65536)
            if chunk:
                pending = await _emit(pending + chunk, io)
                continue
            if io.gone.is_set():  # the client left: stop following (the container runs on)
                return 0
            state = await containers.inspect(container_id)
            if state.status is not ContainerStatus.RUNNING:
                # what the shim wrote between our last read and the exit
                await _emit(pending + fh.read() + b"\n", io)
                return 0
            try:
                rotated = os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                fh = _reopen(fh, path)
            await asyncio.sleep(POLL)
    finally:
        fh.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _open_log(containers: Any, container_id: str, path: str) -> BinaryIO:
    """The shim creates the log just after it reports the container created: wait for it briefly."""
    for _ in range(50):
        try:
            return open(path, "rb")
        except FileNotFoundError:
            if (await containers.inspect(container_id)).status is not ContainerStatus.RUNNING:
                break
            await asyncio.sleep(POLL)
    raise FailedPrecondition(f"container {container_id} has no log file at {path} to attach to")


def _reopen(fh: BinaryIO, path: str) -> BinaryIO:
    fh.close()
    return open(path, "rb")


async def _emit(data: bytes, io: CommandIO) -> bytes:
    """Write the complete records in ``data`` out; return the incomplete tail."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        rec = parse_record(line)
        writer = io.write_stdout if rec and rec[0] == "stdout" else io.write_stderr
        if rec and writer is not None:
            await writer(rec[1])
    return rest


async def _feed_stdin(containers: Any, container_id: str, io: CommandIO) -> None:
    try:
        sock: socket.socket | None = await containers.attach_stdin(container_id)
    except FailedPrecondition:
        sock = None  # created without stdin (or stdin_once spent): drop the input, as containerd does
    loop = asyncio.get_running_loop()
    try:
        while (chunk := await io.stdin.get()) is not None:
            if sock is not None:
                try:
                    await loop.sock_sendall(sock, chunk)
                except OSError:  # the container closed its stdin
                    sock.close()
                    sock = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)  # EOF: with stdin_once the shim closes the container's stdin
            # keep the connection until the session ends: closing early is also EOF, so no harm either way
    finally:
        if sock is not None:
            sock.close()


async def _drain_resize(io: CommandIO) -> None:
    while True:
        await io.resize.get()
