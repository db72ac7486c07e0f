"""The shared fixtures work: registry, pushed images, unprivileged user, postgres."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TestImages
from tests.fixtures.images import MULTILAYER_EXPECTED, MULTILAYER_OWNERS
from tests.helpers.registry import RegistryInfo
from tests.helpers.users import UnprivUser, run_as

ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def _get(url: str, accept: str = ACCEPT) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status), dict(resp.headers), resp.read()


def test_registry_answers_v2(registry: RegistryInfo) -> None:
    status, headers, _ = _get(f"{registry.url}/v2/")
    assert status == 200
    assert headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")


@pytest.mark.parametrize("name", ["busybox", "multilayer", "multiarch", "zstd", "uncompressed", "big"])
def test_image_manifest_digest_matches(registry: RegistryInfo, test_images: TestImages, name: str) -> None:
    image = test_images[name]
    assert image.ref == f"{registry.host}/test/{name}:latest"
    status, headers, body = _get(f"{registry.url}/v2/test/{name}/manifests/latest")
    assert status == 200
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert digest == image.manifest_digest == headers["Docker-Content-Digest"]
    assert headers["Content-Type"] == image.media_type
    layout_blob = image.oci_layout / "blobs" / "sha256" / digest.split(":")[1]
    assert layout_blob.read_bytes() == body


def test_layer_media_types(test_images: TestImages) -> None:
    def layer_types(name: str) -> list[str]:
        image = test_images[name]
        blob = image.oci_layout / "blobs/sha256" / image.manifest_digest.split(":")[1]
        return [layer["mediaType"] for layer in json.loads(blob.read_bytes())["layers"]]

    assert layer_types("zstd") == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    assert layer_types("uncompressed") == ["application/vnd.oci.image.layer.v1.tar"]
    assert len(layer_types("multilayer")) == 3
    big = test_images.big
    size = (big.oci_layout / "blobs/sha256" / big.layers[1].split(":")[1]).stat().st_size
    assert size > 50 * 1024 * 1024 * 0.99


def test_multiarch_platform_manifests_fetch(registry: RegistryInfo, test_images: TestImages) -> None:
    image = test_images.multiarch
    assert set(image.platforms) == {"linux/amd64", "linux/arm64/v8"}
    for digest in image.platforms.values():
        status, _headers, body = _get(f"{registry.url}/v2/test/multiarch/manifests/{digest}")
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_multilayer_unpacks_as_documented(test_images: TestImages, tmp_path: Path) -> None:
    """umoci (a reference unpacker) agrees with MULTILAYER_EXPECTED."""
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{test_images.multilayer.oci_layout}:latest",
                    str(bundle)], check=True, capture_output=True, timeout=60)
    rootfs = bundle / "rootfs"
    for rel, expect in MULTILAYER_EXPECTED.items():
        path = rootfs / rel
        kind = expect[0]
        if kind == "absent":
            assert not os.path.lexists(path), rel
            continue
        st = path.lstat()
        if kind == "file":
            assert stat.S_ISREG(st.st_mode) and path.read_text() == expect[1], rel
            assert stat.S_IMODE(st.st_mode) == expect[2], (rel, oct(st.st_mode))
        elif kind == "dir":
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == expect[1], rel
        elif kind == "symlink":
            assert os.readlink(path) == expect[1], rel
        elif kind == "fifo":
            assert stat.S_ISFIFO(st.st_mode), rel
        elif kind == "hardlink":
            assert st.st_ino == (rootfs / str(expect[1])).lstat().st_ino, rel
    for rel, (uid, gid) in MULTILAYER_OWNERS.items():
        st = (rootfs / rel).lstat()
        assert (st.st_uid, st.st_gid) == (uid, gid), rel


def test_run_as_unprivileged(unpriv_user: UnprivUser) -> None:
    result = run_as(unpriv_user, ["id", "-u"], check=True)
    assert int(result.stdout) == unpriv_user.uid != 0
    assert unpriv_user.subuid_count >= 65536
    py = run_as(unpriv_user, [".venv/bin/python", "-c", "import app, os; print(os.getuid())"], check=True)
    assert int(py.stdout) == unpriv_user.uid


def test_postgres_url_connects(postgres_url: str) -> None:
    import psycopg

    assert postgres_url.startswith("postgresql://vapp@127.0.0.1:")
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_private_registry_as_pull_through_peer(registry: RegistryInfo, test_images: TestImages,
                                               tmp_path: Path) -> None:
    """running_registry: a docker-registry proxying the shared one, stopped on exit."""
    from tests.helpers.procs import pid_alive
    from tests.helpers.registry import running_registry

    with running_registry(tmp_path / "proxy", proxy_url=registry.url) as proxy:
        assert proxy.host != registry.host
        status, headers, _ = _get(f"{proxy.url}/v2/test/busybox/manifests/latest")
        assert status == 200 and headers["Docker-Content-Digest"] == test_images.busybox.manifest_digest
    assert not pid_alive(proxy.pid)
