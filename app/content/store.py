"""Local content store on a filesystem (layout and lifecycle: see :mod:`app.content`)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from app.errors import AlreadyExists, Category, FailedPrecondition, Internal, InvalidArgument, NotFound
from app.oci.reference import validate_digest

log = logging.getLogger(__name__)
_READ_CHUNK = 1024 * 1024


class DigestMismatch(FailedPrecondition):
    """The bytes written do not hash to (or are not the size of) what was expected."""

    default_category = Category.IMAGE


@dataclasses.dataclass(frozen=True, slots=True)
class ContentInfo:
    digest: str
    size: int
    created_at: float


@dataclasses.dataclass(frozen=True, slots=True)
class IngestStatus:
    ref: str
    expected: str | None
    total: int | None
    offset: int
    started_at: float
    updated_at: float


class Writer(Protocol):
    """One in-progress ingest. Not thread-safe: one owner writes, then commits or closes."""

    @property
    def ref(self) -> str: ...
    @property
    def offset(self) -> int: ...
    def write(self, data: bytes | memoryview) -> None: ...
    def reset(self) -> None: ...
    def open_reader(self) -> BinaryIO: ...
    def digest(self) -> str: ...
    def commit(self) -> ContentInfo: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class ContentStore(Protocol):
    """What the cache and the image store need from a content store."""

    def writer(self, ref: str, expected_digest: str | None = None, expected_size: int | None = None) -> Writer: ...
    def info(self, digest: str) -> ContentInfo: ...
    def exists(self, digest: str) -> bool: ...
    def path(self, digest: str) -> Path: ...
    def open(self, digest: str) -> BinaryIO: ...
    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def delete(self, digest: str) -> bool: ...
    def walk(self) -> Iterator[ContentInfo]: ...
    def ingests(self) -> list[IngestStatus]: ...
    def abort(self, ref: str) -> bool: ...
    def cleanup_stale_ingests(self, older_than: float = 0.0) -> int: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ingest_key(ref: str) -> str:
    return hashlib.sha256(ref.encode()).hexdigest()[:32]


class LocalContentStore:
    """``root/sha256/<hex>`` plus ``root/ingest/<key>/``; safe across threads and processes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.blobs = self.root / "sha256"
        self.ingest_root = self.root / "ingest"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.ingest_root.mkdir(parents=True, exist_ok=True)

    # --- reading -----------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists); rejects anything but sha256."""
        validate_digest(digest)
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256":
            raise InvalidArgument(
                f"content store holds sha256 blobs only, not {algo}",
                category=Category.IMAGE,
                details={"digest": digest},
            )
        return self.blobs / hexpart

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def info(self, digest: str) -> ContentInfo:
        try:
            st = self.path(digest).stat()
        except FileNotFoundError:
            raise NotFound(
                f"blob {digest} not in content store", category=Category.IMAGE, details={"digest": digest}
            ) from None
        return ContentInfo(digest=digest, size=st.st_size, created_at=st.st_mtime)

    def open(self, digest: str) -> BinaryIO:
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError:
            raise NotFound(
                f"blob {digest} not in content store", category=Category.IMAGE, details={"digest": digest}
            ) from None

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise InvalidArgument("offset and length must be non-negative", category=Category.IMAGE)
        with self.open(digest) as fh:
            fh.seek(offset)
            return fh.read() if length is None else fh.read(length)

    def walk(self) -> Iterator[ContentInfo]:
        with os.scandir(self.blobs) as it:
            for entry in it:
                if len(entry.name) != 64 or not entry.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    yield ContentInfo(digest="sha256:" + entry.name, size=st.st_size, created_at=st.st_mtime)

    def delete(self, digest: str) -> bool:
        """Remove a blob; False if it was not there. Readers holding it open keep their copy."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.blobs)
        return True

    # --- ingest ------------------------------------------------------------------------
    def writer(self, ref: str, expected_digest: str | None = None, expected_size: int | None = None) -> Writer:
        """Open (or resume) the ingest named ``ref``. Raises AlreadyExists if another writer holds it."""
        if not ref:
            raise InvalidArgument("ingest ref must not be empty", category=Category.IMAGE)
        if expected_digest is not None:
            self.path(expected_digest)
        if expected_size is not None and expected_size < 0:
            raise InvalidArgument("expected size must be non-negative", category=Category.IMAGE)
        return _LocalWriter(self, ref, expected_digest, expected_size)

    def ingests(self) -> list[IngestStatus]:
        out = []
        for d in sorted(self.ingest_root.iterdir()):
            try:
                meta = json.loads((d / "meta.json").read_text())
                st = (d / "data").stat()
            except (OSError, ValueError):
                continue
            out.append(
                IngestStatus(
                    ref=meta.get("ref", ""),
                    expected=meta.get("expected"),
                    total=meta.get("size"),
                    offset=st.st_size,
                    started_at=meta.get("started", st.st_mtime),
                    updated_at=st.st_mtime,
                )
            )
        return out

    def abort(self, ref: str) -> bool:
        d = self.ingest_root / _ingest_key(ref)
        lock = _try_lock(d)
        if lock is None:
            if d.exists():
                raise AlreadyExists(f"ingest {ref!r} is being written", category=Category.IMAGE)
            return False
        try:
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(lock)
        return True

    def cleanup_stale_ingests(self, older_than: float = 0.0) -> int:
        """Remove ingests no live writer holds (and, if ``older_than`` > 0, idle that long)."""
        removed = 0
        now = time.time()
        for d in list(self.ingest_root.iterdir()):
            if not d.is_dir():
                with contextlib.suppress(OSError):
                    d.unlink()
                continue
            if older_than > 0:
                try:
                    age = now - max(p.stat().st_mtime for p in d.iterdir())
                except (OSError, ValueError):
                    age = older_than
                if age < older_than:
                    continue
            lock = _try_lock(d)
            if lock is None:
                continue
            try:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
            finally:
                os.close(lock)
        # Stray names in sha256/ can only come from outside this code; never serve them.
        for entry in os.scandir(self.blobs):
            if len(entry.name) != 64 or any(c not in "0123456789abcdef" for c in entry.name):
                log.warning("content store: removing stray entry %s", entry.path)
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
        return removed


def _try_lock(d: Path, create: bool = False) -> int | None:
    """flock ``d/lock`` exclusively without waiting; None if someone holds it (or no dir)."""
    if create:
        d.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


class _LocalWriter:
    def __init__(self, store: LocalContentStore, ref: str, expected: str | None, size: int | None) -> None:
        self._store = store
        self._ref = ref
        self._expected = expected
        self._size = size
        self._dir = store.ingest_root / _ingest_key(ref)
        lock = _try_lock(self._dir, create=True)
        if lock is None:
            raise AlreadyExists(
                f"ingest {ref!r} is already being written", category=Category.IMAGE, details={"ref": ref}
            )
        self._lock: int | None = lock
        self._hash = hashlib.sha256()
        try:
            self._file = self._open_or_resume()
        except BaseException:
            self._release()
            raise

    def _open_or_resume(self) -> BinaryIO:
        meta_path, data_path = self._dir / "meta.json", self._dir / "data"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
        resumable = (
            meta is not None
            and meta.get("ref") == self._ref
            and meta.get("expected") == self._expected
            and meta.get("size") == self._size
            and data_path.exists()
        )
        if resumable:
            fh = data_path.open("r+b", buffering=0)  # unbuffered: readers see every write at once
            while chunk := fh.read(_READ_CHUNK):  # rebuild the hash so it covers the whole blob
                self._hash.update(chunk)
            self._offset = fh.tell()
            if self._size is not None and self._offset > self._size:
                fh.close()
                resumable = False
            else:
                return fh
        meta = {"ref": self._ref, "expected": self._expected, "size": self._size, "started": time.time()}
        tmp = self._dir / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
        self._hash = hashlib.sha256()
        self._offset = 0
        return data_path.open("w+b", buffering=0)

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        if self._lock is None:
            raise FailedPrecondition(f"ingest {self._ref!r} is closed", category=Category.IMAGE)
        n = len(data)
        if self._size is not None and self._offset + n > self._size:
            got = self._offset + n
            self.abort()
            raise DigestMismatch(
                f"ingest {self._ref!r}: more data than the expected {self._size} bytes",
                details={"expected_size": self._size, "size": got},
            )
        self._file.write(data)
        self._hash.update(data)
        self._offset += n

    def reset(self) -> None:
        """Start over at offset 0 (same file, so readers of :meth:`open_reader` keep working)."""
        if self._lock is None:
            raise FailedPrecondition(f"ingest {self._ref!r} is closed", category=Category.IMAGE)
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self._offset = 0

    def open_reader(self) -> BinaryIO:
        """A read-only handle on the bytes written so far; it stays valid across commit (same inode)."""
        return (self._dir / "data").open("rb")

    def commit(self) -> ContentInfo:
        if self._lock is None:
            raise FailedPrecondition(f"ingest {self._ref!r} is closed", category=Category.IMAGE)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            actual = self.digest()
            if self._size is not None and self._offset != self._size:
                raise DigestMismatch(
                    f"ingest {self._ref!r}: got {self._offset} bytes, expected {self._size}",
                    details={"expected_size": self._size, "size": self._offset},
                )
            if self._expected is not None and actual != self._expected:
                raise DigestMismatch(
                    f"ingest {self._ref!r}: content digest {actual} does not match {self._expected}",
                    details={"expected": self._expected, "actual": actual},
                )
            target = self._store.path(actual)
            if not target.exists():
                os.chmod(self._dir / "data", 0o444)
                os.rename(self._dir / "data", target)
                _fsync_dir(self._store.blobs)
            st = target.stat()
            return ContentInfo(digest=actual, size=st.st_size, created_at=st.st_mtime)
        except DigestMismatch:
            raise
        except OSError as exc:
            raise Internal(f"content store commit of {self._ref!r} failed: {exc.strerror}") from exc
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._release()

    def close(self) -> None:
        """Stop writing and keep the partial data for a later resume."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self._file.flush()
            self._file.close()
        self._release()

    def abort(self) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            self._file.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
