"""Attach, output side: follow a container's CRI log and replay it as stdout/stderr.

The container's stdio belongs to its shim, which writes it to the CRI log
(``<RFC 3339 nano> <stream> <P|F> <text>``). Attaching therefore follows that file
from its current end (reopening it when kubelet rotates it) and turns records back
into raw output, until the container stops. Input (stdin) to the main process is
not available on this node: such a request is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

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
    if stdin:
        raise FailedPrecondition("attach with stdin is not supported on this node (output only)")
    info = await containers.inspect(container_id)
    path = info.log_path
    if not path:
        raise FailedPrecondition(f"container {container_id} has no log to attach to")
    fh = open(path, "rb")  # noqa: SIM115 (reopened on rotation)
    try:
        fh.seek(0, os.SEEK_END)
        pending = b""
        while True:
            chunk = fh.read(65536)
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    rec = parse_record(line)
                    writer = io.write_stdout if rec and rec[0] == "stdout" else io.write_stderr
                    if rec and writer is not None:
                        await writer(rec[1])
                continue
            state = await containers.inspect(container_id)
            if state.status is not ContainerStatus.RUNNING:
                return 0
            try:
                rotated = os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                fh.close()
                fh = open(path, "rb")  # noqa: SIM115
            await asyncio.sleep(POLL)
    finally:
        fh.close()
