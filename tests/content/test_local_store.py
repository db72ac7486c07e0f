"""The conformance suite against :class:`LocalContentStore`, plus its on-disk specifics."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from app.content import ContentStore, LocalContentStore
from tests.content.conformance import *  # noqa: F403
from tests.content.conformance import Reopen


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return LocalContentStore(tmp_path / "content")


@pytest.fixture
def reopen(tmp_path: Path) -> Reopen:
    return lambda: LocalContentStore(tmp_path / "content")


def test_layout_and_modes(tmp_path: Path) -> None:
    s = LocalContentStore(tmp_path / "c")
    w = s.writer("r")
    w.write(b"abc")
    [d] = [p for p in (tmp_path / "c" / "ingest").iterdir()]
    assert {p.name for p in d.iterdir()} >= {"data", "meta.json", "lock"}
    info = w.commit()
    p = tmp_path / "c" / "sha256" / info.digest.split(":")[1]
    assert p.read_bytes() == b"abc"
    assert stat.S_IMODE(p.stat().st_mode) == 0o444
    assert list((tmp_path / "c" / "ingest").iterdir()) == []


def test_cleanup_removes_strays_in_blob_dir(tmp_path: Path) -> None:
    s = LocalContentStore(tmp_path / "c")
    (tmp_path / "c" / "sha256" / "tmp-123").write_bytes(b"junk")
    os.mkdir(tmp_path / "c" / "sha256" / ("A" * 64))
    s.cleanup_stale_ingests()
    assert list((tmp_path / "c" / "sha256").iterdir()) == []
