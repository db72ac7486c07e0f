"""Real docker-registry upstreams: a mirror beside the registry, basic auth, bearer token auth."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import httpx

from tests.blob.harness import (
    auth_registry,
    blob_settings,
    extra_registry,
    push_layout,
    running_cache,
    serve_asgi,
    skopeo_copy,
)
from tests.blob.tokenserver import TokenServer
from tests.helpers.ports import free_port
from tests.helpers.registry import RegistryInfo

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


async def _pull(cache_host: str, repo: str, dest: Path) -> Any:
    dest.parent.mkdir(parents=True, exist_ok=True)
    res = await skopeo_copy(f"docker://{cache_host}/{repo}:latest", f"oci:{dest}:latest", "--all",
                            "--preserve-digests")  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    return json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]


async def test_mirror_serves_when_registry_is_down_and_registry_when_mirror_is(
    tmp_path: Path, registry: RegistryInfo, test_images: Any
) -> None:
    busybox, multi = test_images.busybox, test_images.multilayer
    dead = f"http://127.0.0.1:{free_port()}"
    with extra_registry(tmp_path / "mirror") as mirror:
        await push_layout(busybox.oci_layout, f"{mirror.host}/{busybox.repository}:latest")
        # The registry itself is unreachable: the mirror serves busybox.
        settings = blob_settings({"origin.test": {"url": dead, "mirrors": [mirror.url]}},
                                 default_registry="origin.test")  # fmt: skip
        async with running_cache(tmp_path / "c1", settings) as c:
            assert await _pull(c.host, busybox.repository, tmp_path / "o1") == busybox.manifest_digest
        # A dead mirror first, then the live one, then the registry: busybox from the mirror,
        # multilayer (absent from the mirror: 404 there) from the registry.
        settings = blob_settings({"origin.test": {"url": registry.url, "mirrors": [dead, mirror.url]}},
                                 default_registry="origin.test")  # fmt: skip
        async with running_cache(tmp_path / "c2", settings) as c:
            assert await _pull(c.host, busybox.repository, tmp_path / "o2") == busybox.manifest_digest
            assert await _pull(c.host, multi.repository, tmp_path / "o3") == multi.manifest_digest
            health = {e["url"]: e for e in c.service.health()["origin.test"]}
            assert health[dead]["failures"] >= 1 and health[mirror.url]["successes"] >= 1


async def test_basic_auth_upstream(tmp_path: Path, test_images: Any) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"puller:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    img = test_images.busybox
    with auth_registry(tmp_path / "reg", {"htpasswd": {"realm": "test", "path": str(htpasswd)}}) as host:
        res = await skopeo_copy(f"oci:{img.oci_layout}:latest", f"docker://{host}/{img.repository}:latest",
                                "--dest-creds", "puller:s3cret")  # fmt: skip
        assert res.returncode == 0, res.stderr.decode()
        good = blob_settings({host: {"url": f"http://{host}", "username": "puller", "password": "s3cret"}},
                             default_registry=host)  # fmt: skip
        async with running_cache(tmp_path / "c1", good) as c:
            assert await _pull(c.host, img.repository, tmp_path / "o1") == img.manifest_digest
        anonymous = blob_settings({host: {"url": f"http://{host}"}}, default_registry=host)
        async with running_cache(tmp_path / "c2", anonymous) as c, httpx.AsyncClient() as client:
            r = await client.get(f"{c.url}/v2/{img.repository}/manifests/latest")
            assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        wrong = blob_settings({host: {"url": f"http://{host}", "username": "puller", "password": "nope"}},
                              default_registry=host)  # fmt: skip
        async with running_cache(tmp_path / "c3", wrong) as c, httpx.AsyncClient() as client:
            r = await client.get(f"{c.url}/v2/{img.repository}/manifests/latest")
            assert r.status_code == 401
            assert "nope" not in r.text


async def test_bearer_token_flow_with_token_cache(tmp_path: Path, test_images: Any) -> None:
    tokens = TokenServer(tmp_path / "tok", users={"puller": "pw"})
    img = test_images.multilayer
    async with serve_asgi(tokens) as tport:
        realm = f"http://127.0.0.1:{tport}/token"
        with auth_registry(tmp_path / "reg", tokens.registry_auth(realm)) as host:
            res = await skopeo_copy(f"oci:{img.oci_layout}:latest", f"docker://{host}/{img.repository}:latest",
                                    "--dest-creds", "puller:pw")  # fmt: skip
            assert res.returncode == 0, res.stderr.decode()
            tokens.requests.clear()
            tokens.scopes.clear()
            settings = blob_settings({host: {"url": f"http://{host}", "username": "puller", "password": "pw"}},
                                     default_registry=host)  # fmt: skip
            async with running_cache(tmp_path / "c", settings) as c:
                assert await _pull(c.host, img.repository, tmp_path / "o") == img.manifest_digest
                scope = f"repository:{img.repository}:pull"
                # One token for manifest + config + 3 layers (+ HEADs): the cache keyed it by
                # realm/service/scope; our credentials went to the token endpoint only.
                assert tokens.scopes[scope] == 1, tokens.scopes
                assert all(r["authorization"] and r["authorization"].startswith("Basic ") for r in tokens.requests)
                async with httpx.AsyncClient() as client:
                    r = await client.head(f"{c.url}/v2/{img.repository}/blobs/{img.layers[0]}")
                    assert r.status_code == 200
                    r = await client.get(f"{c.url}/v2/{img.repository}/tags/list")
                    assert r.status_code == 200 and "latest" in r.json()["tags"]
                assert tokens.scopes[scope] == 1
