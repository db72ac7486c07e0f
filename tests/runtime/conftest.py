"""Runtime test helpers: a busybox rootfs from the shared image, a live ContainerService.

The busybox rootfs is unpacked once per worker from the ``test_images`` OCI layout with
plain tar (ownership kept: we run as root), then copied per test (``cp -a``, ~1 MB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.config import RuntimeSettings
from app.runtime.forkserver import ForkServer, start_forkserver
from app.services.containers import ContainerService
from app.state.db import open_database

REPO = Path(__file__).resolve().parents[2]


def unpack_layout(layout: Path, dest: Path) -> dict[str, Any]:
    """Unpack a single-manifest OCI layout's layers into ``dest``; return the image config."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]

    def blob(d: str) -> Path:
        algo, hexd = d.split(":", 1)
        return layout / "blobs" / algo / hexd

    manifest = json.loads(blob(digest).read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for layer in manifest["layers"]:
        subprocess.run(["tar", "-xf", str(blob(layer["digest"])), "-C", str(dest), "--numeric-owner"],
                       check=True)
    config: dict[str, Any] = json.loads(blob(manifest["config"]["digest"]).read_text())
    return config


@pytest.fixture(scope="session")
def busybox_image(test_images: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    base = tmp_path_factory.mktemp("busybox-base")
    config = unpack_layout(Path(test_images.busybox.oci_layout), base / "rootfs")
    base.chmod(0o755)
    return base / "rootfs", config


@pytest.fixture
def rootfs(busybox_image: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    dest = tmp_path / f"rootfs-{uuid.uuid4().hex[:6]}"
    subprocess.run(["cp", "-a", str(busybox_image[0]), str(dest)], check=True)
    return dest


@pytest.fixture
def image_config(busybox_image: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return busybox_image[1]


@pytest.fixture
def forkserver() -> Any:
    fs = start_forkserver()
    yield fs
    fs.close()


@pytest.fixture
async def service(tmp_path: Path, forkserver: ForkServer) -> AsyncIterator[ContainerService]:
    short = Path(f"/tmp/vrt-{uuid.uuid4().hex[:8]}")  # run dir: short paths for sockets
    db = open_database(f"sqlite:///{tmp_path / 'vapp.db'}")
    svc = ContainerService(db, forkserver, state_dir=tmp_path / "state", run_dir=short,
                           settings=RuntimeSettings(stop_grace_seconds=2.0))
    yield svc
    for info in await svc.list():
        with contextlib.suppress(Exception):
            await svc.remove(info.id, force=True)
    await svc.close()
    db.close()
    kill_leftovers(short)
    shutil.rmtree(short, ignore_errors=True)


def log_lines(path: str, stream: str | None = None) -> list[str]:
    """Content of a CRI log (all rotated files, oldest first), optionally one stream."""
    out = []
    files = sorted((p for p in Path(path).parent.glob(Path(path).name + ".*")), key=lambda p: -int(p.suffix[1:]))
    for file in [*files, Path(path)]:
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            _, s, _tag, content = line.split(" ", 3) if line.count(" ") >= 3 else (*line.split(" ", 2), "")
            if stream is None or s == stream:
                out.append(content)
    return out


def mount_count() -> int:
    return len(Path("/proc/self/mountinfo").read_text().splitlines())


def vapp_oci() -> str:
    return str(REPO / ".venv" / "bin" / "vapp-oci")


def env_for_tests() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def user_tmp(unpriv_user: Any) -> Any:
    """A temp dir the unprivileged user owns (pytest's own tmp dirs are root-only)."""
    path = Path(f"/tmp/vrt-u-{uuid.uuid4().hex[:8]}")
    path.mkdir(mode=0o755)
    os.chown(path, unpriv_user.uid, unpriv_user.gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def user_rootfs(busybox: Path, dest: Path, user: Any) -> Path:
    """A busybox rootfs owned by ``user`` (as a rootless unpack would leave it)."""
    subprocess.run(["cp", "-a", str(busybox), str(dest)], check=True)
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(dest)], check=True)
    return dest


def kill_leftovers(run_dir: Path) -> None:
    """After a failed test: SIGKILL every container and shim recorded under ``run_dir``."""
    for record in Path(run_dir).glob("runtime/shims/*/shim.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        for pid in (data.get("pid"), data.get("shimPid")):
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(pid), 9)
