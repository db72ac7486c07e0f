"""CRI-format container logs with size-based rotation.

One line per record: ``<RFC 3339 nano timestamp> <stream> <P|F> <content>\\n``. ``F`` marks
the last chunk of a line, ``P`` a partial one (a line longer than ``max_line`` or a
chunk cut at EOF without a newline). Rotation: ``log`` → ``log.1`` → … ``log.<keep-1>``,
the oldest dropped, when the next write would pass ``max_bytes``.
"""

from __future__ import annotations

import os
import time


def timestamp(now: float | None = None) -> str:
    now = time.time() if now is None else now
    secs = int(now)
    nanos = int((now - secs) * 1e9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"


def format_records(stream: str, data: bytes, now: float | None = None, max_line: int = 16384) -> tuple[bytes, bytes]:
    """Pure: complete lines of ``data`` → CRI records; returns (records, leftover partial line)."""
    stamp = timestamp(now).encode()
    out = bytearray()
    tag = stream.encode()
    while data:
        nl = data.find(b"\n")
        if nl < 0:
            if len(data) < max_line:
                return bytes(out), data
            chunk, data, full = data[:max_line], data[max_line:], False
        elif nl > max_line:
            chunk, data, full = data[:max_line], data[max_line:], False
        else:
            chunk, data, full = data[:nl], data[nl + 1 :], True
        out += stamp + b" " + tag + (b" F " if full else b" P ") + chunk + b"\n"
    return bytes(out), b""


class LogWriter:
    """Appends CRI records to ``path`` and rotates it; used by the shim's copy loop."""

    def __init__(self, path: str, max_bytes: int = 10 * 1024**2, keep: int = 3) -> None:
        self.path, self.max_bytes, self.keep = path, max_bytes, max(1, keep)
        self.pending: dict[str, bytes] = {}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, stream: str, data: bytes) -> None:
        records, rest = format_records(stream, self.pending.pop(stream, b"") + data)
        if rest:
            self.pending[stream] = rest
        if records:
            self._append(records)

    def flush(self) -> None:
        """At EOF: write what is left of each stream as a partial record."""
        for stream, rest in list(self.pending.items()):
            self._append(f"{timestamp()} {stream} P ".encode() + rest + b"\n")
        self.pending.clear()

    def _append(self, records: bytes) -> None:
        if self.max_bytes > 0 and os.fstat(self.fd).st_size + len(records) > self.max_bytes:
            self.rotate()
        os.write(self.fd, records)

    def rotate(self) -> None:
        os.close(self.fd)
        for i in range(self.keep - 1, 0, -1):
            src = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i}")
        if self.keep == 1:
            os.truncate(self.path, 0)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """CRI ReopenContainerLog: the kubelet rotated the file away; start a new one."""
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def close(self) -> None:
        self.flush()
        os.close(self.fd)
