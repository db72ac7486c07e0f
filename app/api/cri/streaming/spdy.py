"""SPDY/3.1 framing, sans-I/O: what Kubernetes' remote-command clients speak after ``Upgrade: SPDY/3.1``.

Only framing lives here (no sockets, no streams bookkeeping): feed bytes to a
:class:`FrameReader`, get frames; build frames with the ``encode_*`` functions
through a :class:`HeaderCodec` (one per direction per connection, because the
zlib context is shared by every header block of the connection).

Wire format (draft-mbelshe-httpbis-spdy-00, version 3)::

    control frame                          data frame
    +-+--------------+---------------+     +-+------------------------------+
    |1| version (15) | type (16)     |     |0| stream id (31)               |
    +-+--------------+---------------+     +--------+-----------------------+
    | flags (8) | length (24)        |     | flags  | length (24)           |
    +-----------+--------------------+     +--------+-----------------------+
    | payload (length bytes)         |     | data (length bytes)            |

    SYN_STREAM(1)  stream id, associated id, priority(3)+unused(5), slot, header block
    SYN_REPLY(2)   stream id, header block
    RST_STREAM(3)  stream id, status
    SETTINGS(4)    count, {flags(8) id(24) value(32)}*
    PING(6)        id
    GOAWAY(7)      last good stream id, status
    HEADERS(8)     stream id, header block
    WINDOW_UPDATE(9) stream id, delta
    flags: FIN=0x01 (all stream frames), UNIDIRECTIONAL=0x02 (SYN_STREAM)

A header block is ``count(32) {len(32) name len(32) value}*`` (names lower
case, several values joined by NUL), zlib-deflated with the SPDY/3 dictionary
and a SYNC_FLUSH after each block.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN, FLAG_UNIDIRECTIONAL = 0x01, 0x02
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_REFUSED_STREAM, RST_CANCEL = 1, 2, 3, 5
GOAWAY_OK, GOAWAY_PROTOCOL_ERROR = 0, 1
MAX_FRAME = 1 << 24

_WORDS = [*(  # noqa: SIM905 (one readable string beats 57 quoted words)
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date etag "
    "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
    "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
    "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
    "method get status"
).split(), "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
# The spec's zlib dictionary (1423 bytes): length-prefixed common words, then a literal tail.
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class SpdyError(Exception):
    """A framing violation: the connection must be closed with GOAWAY(PROTOCOL_ERROR)."""


Headers = dict[str, list[str]]


@dataclass
class Frame:
    """One decoded frame. ``kind`` is 0 for DATA, else the control type."""

    kind: int
    flags: int = 0
    stream_id: int = 0
    headers: Headers = field(default_factory=dict)
    data: bytes = b""
    status: int = 0  # RST_STREAM / GOAWAY status, PING id, WINDOW_UPDATE delta
    associated_id: int = 0
    priority: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class HeaderCodec:
    """The two zlib contexts of one connection end (deflate what we send, inflate what we get)."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8,
                                         zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._inflate = zlib.decompressobj(15, DICTIONARY)

    def encode(self, headers: Headers) -> bytes:
        out = [struct.pack(">I", len(headers))]
        for name, values in headers.items():
            key, value = name.lower().encode(), "\x00".join(values).encode()
            out += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
        raw = b"".join(out)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def decode(self, block: bytes) -> Headers:
        try:
            raw = self._inflate.decompress(block)
        except zlib.error as exc:
            raise SpdyError(f"bad header block: {exc}") from exc
        try:
            (count,), pos = struct.unpack_from(">I", raw), 4
            headers: Headers = {}
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4: pos + 4 + n].decode()
                pos += 4 + n
                (v,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4: pos + 4 + v].decode()
                pos += 4 + v
                headers.setdefault(name.lower(), []).extend(value.split("\x00"))
        except (struct.error, UnicodeDecodeError) as exc:
            raise SpdyError(f"malformed header block: {exc}") from exc
        return headers


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) >= MAX_FRAME:
        raise SpdyError("control frame too large")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def encode_data(stream_id: int, data: bytes, fin: bool = False) -> bytes:
    """One or more DATA frames (split at the 24-bit length limit)."""
    out, view = [], memoryview(data)
    chunk = MAX_FRAME - 1
    while True:
        part, view = view[:chunk], view[chunk:]
        last = not view
        flags = FLAG_FIN if (fin and last) else 0
        out.append(struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(part)) + bytes(part))
        if last:
            return b"".join(out)


def encode_syn_stream(codec: HeaderCodec, stream_id: int, headers: Headers, *, fin: bool = False,
                      unidirectional: bool = False, associated_id: int = 0, priority: int = 0) -> bytes:
    flags = (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)
    head = struct.pack(">IIBB", stream_id & 0x7FFFFFFF, associated_id & 0x7FFFFFFF, (priority & 7) << 5, 0)
    return _control(SYN_STREAM, flags, head + codec.encode(headers))


def encode_syn_reply(codec: HeaderCodec, stream_id: int, headers: Headers | None = None,
                     fin: bool = False) -> bytes:
    body = struct.pack(">I", stream_id & 0x7FFFFFFF) + codec.encode(headers or {})
    return _control(SYN_REPLY, FLAG_FIN if fin else 0, body)


def encode_headers(codec: HeaderCodec, stream_id: int, headers: Headers, fin: bool = False) -> bytes:
    body = struct.pack(">I", stream_id & 0x7FFFFFFF) + codec.encode(headers)
    return _control(HEADERS, FLAG_FIN if fin else 0, body)


def encode_rst_stream(stream_id: int, status: int) -> bytes:
    return _control(RST_STREAM, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, status))


def encode_ping(ping_id: int) -> bytes:
    return _control(PING, 0, struct.pack(">I", ping_id))


def encode_goaway(last_stream_id: int, status: int = GOAWAY_OK) -> bytes:
    return _control(GOAWAY, 0, struct.pack(">II", last_stream_id & 0x7FFFFFFF, status))


def encode_window_update(stream_id: int, delta: int) -> bytes:
    return _control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF))


def encode_settings(settings: dict[int, int]) -> bytes:
    body = struct.pack(">I", len(settings)) + b"".join(
        struct.pack(">II", key & 0xFFFFFF, value) for key, value in settings.items())
    return _control(SETTINGS, 0, body)


class FrameReader:
    """Incremental parser: ``feed(bytes)`` returns the complete frames so far."""

    def __init__(self, codec: HeaderCodec) -> None:
        self._codec = codec
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames = []
        while len(self._buf) >= 8:
            first, second = struct.unpack_from(">II", self._buf)
            length = second & 0xFFFFFF
            if len(self._buf) < 8 + length:
                break
            payload = bytes(self._buf[8: 8 + length])
            del self._buf[: 8 + length]
            flags = second >> 24
            if first & 0x80000000:
                frame = self._control(first, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                frames.append(Frame(0, flags, first & 0x7FFFFFFF, data=payload))
        return frames

    def _control(self, first: int, flags: int, p: bytes) -> Frame | None:
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"unsupported SPDY version {version}")
        try:
            if kind == SYN_STREAM:
                sid, assoc, prio, _slot = struct.unpack_from(">IIBB", p)
                return Frame(kind, flags, sid & 0x7FFFFFFF, self._codec.decode(p[10:]),
                             associated_id=assoc & 0x7FFFFFFF, priority=prio >> 5)
            if kind in (SYN_REPLY, HEADERS):
                (sid,) = struct.unpack_from(">I", p)
                return Frame(kind, flags, sid & 0x7FFFFFFF, self._codec.decode(p[4:]))
            if kind in (RST_STREAM, WINDOW_UPDATE, GOAWAY):
                sid, status = struct.unpack_from(">II", p)
                return Frame(kind, flags, sid & 0x7FFFFFFF, status=status & (
                    0x7FFFFFFF if kind == WINDOW_UPDATE else 0xFFFFFFFF))
            if kind == PING:
                (pid,) = struct.unpack_from(">I", p)
                return Frame(kind, flags, status=pid)
            if kind == SETTINGS:
                return Frame(kind, flags, data=p)
        except struct.error as exc:
            raise SpdyError(f"short control frame type {kind}") from exc
        return None  # unknown control frames are ignored, as the spec says
