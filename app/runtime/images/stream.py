"""Decompressing, digesting reader for layer blobs, pipelined on a thread.

::

    blob file ──read 1 MiB──► [thread: sha256(compressed) → inflate → sha256(tar)]
                                        │ bounded queue (8 chunks)
                                        ▼
                              LayerStream.read(n) ──► tarfile ──► extractor

zlib, zstd and hashlib release the GIL on large buffers, so decompression and
hashing run beside the extractor's writes (what ``tar -xzf`` gets from its
separate ``gzip`` process). The compression is chosen by media type, never
sniffed: a layer that claims gzip and is not gzip is an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import zlib
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from app.errors import Category, InvalidArgument

CHUNK = 1 << 20

GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
ZSTD_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
TAR_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)


class BadLayer(InvalidArgument):
    """A layer blob that cannot be decoded or does not match its digests."""

    default_category = Category.IMAGE


def compression_of(media_type: str) -> str:
    """``gzip`` / ``zstd`` / ``none`` for a layer media type; unknown types are refused."""
    if media_type in GZIP_TYPES:
        return "gzip"
    if media_type in ZSTD_TYPES:
        return "zstd"
    if media_type in TAR_TYPES:
        return "none"
    raise BadLayer(f"unsupported layer media type {media_type!r}", details={"mediaType": media_type})


def _gzip_inflater() -> Callable[[bytes], bytes]:
    # Layers are one gzip member in practice, but concatenated members are
    # valid gzip: start a new inflater whenever one member ends.
    state = {"d": zlib.decompressobj(zlib.MAX_WBITS | 16)}

    def feed(data: bytes) -> bytes:
        out = []
        while data:
            d = state["d"]
            out.append(d.decompress(data))
            if not d.eof:
                break
            data = d.unused_data
            state["d"] = zlib.decompressobj(zlib.MAX_WBITS | 16)
        return b"".join(out)

    return feed


def _zstd_inflater() -> Callable[[bytes], bytes]:
    # zstd layers may hold several frames (pigz-style parallel compressors).
    dobj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    return dobj.decompress


class LayerStream:
    """A readable, uncompressed view of a layer blob with both digests.

    ``read`` raises :class:`BadLayer` for a corrupt blob. After the consumer hit
    EOF, ``compressed_digest`` and ``diff_id`` are final.
    """

    def __init__(self, src: BinaryIO, media_type: str, *, hash_blob: bool = True) -> None:
        comp = compression_of(media_type)
        self._inflate: Callable[[bytes], bytes] | None = (
            _gzip_inflater() if comp == "gzip" else _zstd_inflater() if comp == "zstd" else None
        )
        self._src = src
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
        # A blob read from the content store was verified at ingest: hashing it
        # again costs a pass over every byte for nothing.
        self._compressed = hashlib.sha256() if hash_blob else None
        self._plain = hashlib.sha256()
        self.compressed_size = 0
        self.size = 0
        self._buf = memoryview(b"")
        self._pos = 0
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="layer-inflate", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                raw = self._src.read(CHUNK)
                if not raw:
                    break
                if self._compressed is not None:
                    self._compressed.update(raw)
                self.compressed_size += len(raw)
                data = self._inflate(raw) if self._inflate else raw
                if data:
                    self._plain.update(data)
                    self.size += len(data)
                    self._q.put(data)
            self._q.put(None)
        except (zlib.error, zstandard.ZstdError) as exc:
            self._q.put(BadLayer(f"layer does not decompress: {exc}"))
        except BaseException as exc:  # handed to the reader, who raises it
            self._q.put(exc)

    def _chunk(self) -> memoryview | None:
        if not self._buf:
            if self._eof:
                return None
            item = self._q.get()
            if item is None:
                self._eof = True
                return None
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._buf = memoryview(item)
        return self._buf

    def read_some(self, n: int) -> memoryview:
        """Up to ``n`` bytes without copying (empty at EOF); valid until the next read."""
        buf = self._chunk()
        if buf is None:
            return memoryview(b"")
        out, self._buf = buf[:n], buf[n:]
        self._pos += len(out)
        return out

    def read(self, n: int = -1) -> bytes:
        """Exactly ``n`` bytes unless the stream ends (tarfile reads 512-byte headers)."""
        if n < 0:
            n = 1 << 62
        parts = []
        while n > 0:
            piece = self.read_some(n)
            if not piece:
                break
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    # Forward-only seeking makes the stream usable by tarfile's random-access mode,
    # which reads headers straight from here: stream mode ("r|") buffers through a
    # bytes object it re-slices on every read, copying up to its buffer size per entry.
    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        target = pos if whence == 0 else self._pos + pos
        if whence not in (0, 1) or target < self._pos:
            raise OSError("layer streams only seek forward")
        while self._pos < target and self.read_some(target - self._pos):
            pass
        return self._pos

    def drain(self) -> None:
        """Read to the end (trailing tar padding counts towards the diff ID)."""
        while self.read_some(CHUNK):
            pass

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._q.get(timeout=0.1)
        self._thread.join()

    @property
    def compressed_digest(self) -> str:
        return "sha256:" + self._compressed.hexdigest() if self._compressed is not None else ""

    @property
    def diff_id(self) -> str:
        return "sha256:" + self._plain.hexdigest()
