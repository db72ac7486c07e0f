"""Conformance suite for :class:`app.content.ContentStore` implementations.

A test module provides a ``store`` fixture (a fresh, empty store) and a ``reopen``
fixture (a callable returning a new store object over the same storage, i.e. a
restart), then star-imports this module.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

import pytest

from app.content import ContentStore, DigestMismatch
from app.errors import AlreadyExists, InvalidArgument, NotFound

Reopen = Callable[[], ContentStore]


def _dg(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ingest_commit_read(store: ContentStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    d = _dg(data)
    assert not store.exists(d)
    w = store.writer("r1", d, len(data))
    for i in range(0, len(data), 65536):
        w.write(data[i : i + 65536])
    assert w.offset == len(data)
    info = w.commit()
    assert (info.digest, info.size) == (d, len(data))
    assert store.exists(d)
    assert store.info(d).size == len(data)
    assert store.read(d) == data
    assert store.read(d, 10, 100) == data[10:110]
    assert store.read(d, len(data) - 5) == data[-5:]
    with store.open(d) as fh:
        assert fh.read() == data
    assert store.path(d).read_bytes() == data
    assert [i.digest for i in store.walk()] == [d]
    assert store.ingests() == []


def test_commit_without_expectations_uses_actual_digest(store: ContentStore) -> None:
    w = store.writer("free")
    w.write(b"hello")
    assert w.commit().digest == _dg(b"hello")


def test_digest_mismatch_leaves_nothing(store: ContentStore) -> None:
    w = store.writer("bad", _dg(b"good"), 4)
    w.write(b"evil")
    with pytest.raises(DigestMismatch):
        w.commit()
    assert not store.exists(_dg(b"good"))
    assert not store.exists(_dg(b"evil"))
    assert list(store.walk()) == []
    assert store.ingests() == []


def test_size_mismatch_short_and_long(store: ContentStore) -> None:
    w = store.writer("short", _dg(b"abcdef"), 6)
    w.write(b"abc")
    with pytest.raises(DigestMismatch):
        w.commit()
    w = store.writer("long", _dg(b"ab"), 2)
    with pytest.raises(DigestMismatch):
        w.write(b"abc")
    assert list(store.walk()) == [] and store.ingests() == []


def test_resume_after_close_and_restart(store: ContentStore, reopen: Reopen) -> None:
    data = os.urandom(2 * 1024 * 1024)
    d = _dg(data)
    w = store.writer("resume", d, len(data))
    w.write(data[:700_000])
    w.close()
    [status] = store.ingests()
    assert (status.ref, status.offset, status.total, status.expected) == ("resume", 700_000, len(data), d)
    again = reopen()
    w2 = again.writer("resume", d, len(data))
    assert w2.offset == 700_000
    w2.write(data[700_000:])
    assert w2.commit().digest == d
    assert again.read(d) == data


def test_resume_with_other_expectation_restarts(store: ContentStore) -> None:
    w = store.writer("x", _dg(b"aaaa"), 4)
    w.write(b"aa")
    w.close()
    w2 = store.writer("x", _dg(b"bbbb"), 4)
    assert w2.offset == 0
    w2.write(b"bbbb")
    w2.commit()
    assert store.read(_dg(b"bbbb")) == b"bbbb"


def test_one_writer_per_ref(store: ContentStore) -> None:
    w = store.writer("busy", None, None)
    with pytest.raises(AlreadyExists):
        store.writer("busy", None, None)
    with pytest.raises(AlreadyExists):
        store.abort("busy")
    w.abort()
    store.writer("busy", None, None).abort()
    assert store.abort("busy") is False


def test_commit_of_present_digest_is_noop(store: ContentStore) -> None:
    for ref in ("a", "b"):
        w = store.writer(ref, _dg(b"same"), 4)
        w.write(b"same")
        w.commit()
    assert [i.digest for i in store.walk()] == [_dg(b"same")]
    assert store.ingests() == []


def test_concurrent_writers_same_digest_different_refs(store: ContentStore) -> None:
    data = os.urandom(512 * 1024)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            w = store.writer(f"t{i}", _dg(data), len(data))
            w.write(data)
            w.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.read(_dg(data)) == data


def test_delete_and_missing(store: ContentStore) -> None:
    d = _dg(b"x")
    with pytest.raises(NotFound):
        store.info(d)
    with pytest.raises(NotFound):
        store.read(d)
    assert store.delete(d) is False
    w = store.writer("x", d, 1)
    w.write(b"x")
    w.commit()
    assert store.delete(d) is True
    assert not store.exists(d)


@pytest.mark.parametrize(
    "digest", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "0" * 32, "", "x"]
)
def test_bad_digests_rejected(store: ContentStore, digest: str) -> None:
    with pytest.raises(InvalidArgument):
        store.exists(digest)
    with pytest.raises(InvalidArgument):
        store.writer("r", digest, 1)


def test_cleanup_stale_ingests(store: ContentStore, reopen: Reopen) -> None:
    w = store.writer("stale", None, None)
    w.write(b"partial")
    w.close()
    live = store.writer("live", None, None)
    live.write(b"x")
    again = reopen()
    assert again.cleanup_stale_ingests(older_than=3600) == 0
    assert again.cleanup_stale_ingests() == 1
    assert [s.ref for s in again.ingests()] == ["live"]
    live.abort()
    assert list(again.walk()) == []


def test_empty_blob(store: ContentStore) -> None:
    w = store.writer("empty", _dg(b""), 0)
    info = w.commit()
    assert info.size == 0 and store.read(info.digest) == b""


def test_reset_and_reader_survive_commit(store: ContentStore) -> None:
    data = os.urandom(100_000)
    w = store.writer("rr", _dg(data), len(data))
    reader = w.open_reader()
    w.write(b"garbage")
    w.reset()
    assert w.offset == 0
    w.write(data[:50_000])
    assert reader.read(50_000) == data[:50_000]
    w.write(data[50_000:])
    w.commit()
    assert reader.read() == data[50_000:]
    reader.close()
    assert store.read(_dg(data)) == data
