"""WebSocket (RFC 6455) server side, sans-I/O: the handshake answer and the frame codec.

Kubernetes' channel protocols (``v4.channel.k8s.io``, ``v5.channel.k8s.io``,
``portforward.k8s.io``...) put one byte of channel number in front of every
binary message; that multiplexing lives in :mod:`.remotecommand` and
:mod:`.portforward`, not here.

Frame (client frames are always masked, ours never are)::

    FIN RSV(3) opcode(4) | MASK len(7) [len16 | len64] [mask key(4)] payload
    opcodes: 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
MAX_MESSAGE = 16 * 1024 * 1024


class WebSocketError(Exception):
    """A protocol violation: close the connection (status 1002)."""


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode()).digest()).decode()


@dataclass(frozen=True)
class Message:
    opcode: int  # OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
    data: bytes


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A frame; ``mask`` (4 bytes) only for client-side use (tests)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if mask:
        return head + mask + _unmask(payload, mask)
    return head + payload


def encode_close(code: int = 1000, reason: str = "") -> bytes:
    return encode_frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()[:120])


def _unmask(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    key = int.from_bytes((mask * ((len(data) + 3) // 4))[: len(data)], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")


class FrameReader:
    """Incremental parser of client frames: reassembles fragmented messages."""

    def __init__(self, *, require_mask: bool = True) -> None:
        self._buf = bytearray()
        self._frag_op: int | None = None
        self._frag: list[bytes] = []
        self._require_mask = require_mask

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return out
            fin, opcode, payload = parsed
            if opcode >= 8:  # control frames may interleave with fragments
                if not fin or len(payload) > 125:
                    raise WebSocketError("fragmented or oversized control frame")
                out.append(Message(opcode, payload))
            elif opcode == OP_CONT:
                if self._frag_op is None:
                    raise WebSocketError("continuation without a start")
                self._frag.append(payload)
                if fin:
                    out.append(Message(self._frag_op, b"".join(self._frag)))
                    self._frag_op, self._frag = None, []
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._frag_op is not None:
                    raise WebSocketError("new message inside a fragmented one")
                if fin:
                    out.append(Message(opcode, payload))
                else:
                    self._frag_op, self._frag = opcode, [payload]
            else:
                raise WebSocketError(f"unknown opcode {opcode}")
            if sum(map(len, self._frag)) > MAX_MESSAGE:
                raise WebSocketError("message too large")

    def _one(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise WebSocketError("reserved bits set (no extension negotiated)")
        masked, n, pos = bool(b1 & 0x80), b1 & 0x7F, 2
        if self._require_mask and not masked:
            raise WebSocketError("client frame not masked")
        if n == 126:
            if len(buf) < 4:
                return None
            (n,), pos = struct.unpack_from(">H", buf, 2), 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,), pos = struct.unpack_from(">Q", buf, 2), 10
        if n > MAX_MESSAGE:
            raise WebSocketError("frame too large")
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            key, pos = bytes(buf[pos: pos + 4]), pos + 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos: pos + n])
        del buf[: pos + n]
        return bool(b0 & 0x80), b0 & 0x0F, _unmask(payload, key) if masked else payload
