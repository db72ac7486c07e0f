"""CRI PullImage with AuthConfig against registries that require credentials.

The node's blob cache (CacheFetcher → BlobCache → upstream endpoints) and the direct
RegistryFetcher both carry the pull's own credentials; the node is configured with
none for the registry, so a pull without AuthConfig must be refused and one with it
must succeed, and the credentials must not linger for the next anonymous pull.
"""

from __future__ import annotations

import base64
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from app.api.cri.servicers import add_cri_servicers
from app.blob.cache import BlobCache
from app.blob.fetcher import CacheFetcher
from app.config import BlobSettings, Settings, UpstreamSettings
from app.content.store import LocalContentStore
from app.oci.credentials import RegistryCredentials
from app.oci.manifest import Platform
from app.runtime.images.fetch import RegistryFetcher
from app.runtime.images.pull import Puller
from app.runtime.images.unpacker import LayerUnpacker
from app.runtime.snapshots.layers import LayerSnapshots
from app.services.images import ImageService
from app.state.db import Database
from tests.blob.harness import auth_registry, serve_asgi, skopeo_copy
from tests.blob.tokenserver import TokenServer
from tests.cri.test_grpc import FakeNode, code_of

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

Stack = Callable[[str, str], Awaitable[pb_grpc.ImageServiceStub]]


@pytest.fixture
async def image_cri(tmp_path: Path, db: Database) -> AsyncIterator[Stack]:
    """``await make(kind, host)``: a CRI ImageService whose pulls go through ``kind`` ("cache"|"direct")."""
    closers: list[Callable[[], Awaitable[Any]]] = []

    async def make(kind: str, host: str) -> pb_grpc.ImageServiceStub:
        store = LocalContentStore(tmp_path / "state" / "content")
        layers = LayerSnapshots(tmp_path / "state" / "snapshots")
        fetcher: Any
        if kind == "cache":  # the node's configured upstream: no credentials for this registry
            settings = BlobSettings(upstreams={host: UpstreamSettings(url=f"http://{host}")})
            cache = BlobCache(settings, store, db)
            await cache.start()
            closers.append(cache.close)
            fetcher = CacheFetcher(cache)
        else:
            fetcher = RegistryFetcher(store, f"http://{host}")
            closers.append(fetcher.aclose)
        puller = Puller(fetcher, store, layers, LayerUnpacker.for_this_process(), platform=Platform.host(),
                        retry_deadline=2)
        node = FakeNode(Settings(state_dir=tmp_path / "state", run_dir=tmp_path / "run"),
                        images=ImageService(db, puller, layers, store))
        server = grpc.aio.server()
        add_cri_servicers(server, node)
        sock = f"/tmp/vt-cria-{uuid.uuid4().hex[:8]}.sock"
        server.add_insecure_port(f"unix:{sock}")
        await server.start()
        channel = grpc.aio.insecure_channel(f"unix:{sock}")
        closers.extend([channel.close, lambda: server.stop(0)])
        closers.append(lambda: _unlink(sock))
        return pb_grpc.ImageServiceStub(channel)

    yield make
    for close in reversed(closers):
        await close()


async def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def _pull(ref: str, **auth: str) -> pb.PullImageRequest:
    return pb.PullImageRequest(image=pb.ImageSpec(image=ref), auth=pb.AuthConfig(**auth))


async def _push(img: Any, host: str, user: str, password: str) -> str:
    res = await skopeo_copy(f"oci:{img.oci_layout}:latest", f"docker://{host}/{img.repository}:latest",
                            "--dest-creds", f"{user}:{password}")
    assert res.returncode == 0, res.stderr.decode()
    return f"{host}/{img.repository}:latest"


@pytest.mark.parametrize("kind", ["cache", "direct"])
async def test_pull_with_basic_auth(tmp_path: Path, test_images: Any, image_cri: Stack, kind: str) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"puller:{crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n")
    with auth_registry(tmp_path / "reg", {"htpasswd": {"realm": "test", "path": str(htpasswd)}}) as host:
        ref = await _push(test_images.busybox, host, "puller", "s3cret")
        im = await image_cri(kind, host)
        assert await code_of(im.PullImage(_pull(ref))) == grpc.StatusCode.UNAUTHENTICATED
        err = await _error(im.PullImage(_pull(ref, username="puller", password="wrong")))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "wrong" not in (err.details() or "")
        got = await im.PullImage(_pull(ref, username="puller", password="s3cret"))
        assert got.image_ref.startswith("sha256:")
        status = await im.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
        assert status.image.id == got.image_ref
        # the next pull without credentials does not ride on the previous pull's
        other = await _push(test_images.multilayer, host, "puller", "s3cret")
        assert await code_of(im.PullImage(_pull(other))) == grpc.StatusCode.UNAUTHENTICATED
        # AuthConfig.auth: base64("user:pass"), as kubelet passes docker config entries
        token = base64.b64encode(b"puller:s3cret").decode()
        assert (await im.PullImage(_pull(other, auth=token))).image_ref.startswith("sha256:")
        assert await code_of(im.PullImage(_pull(other, auth="%%%"))) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("kind", ["cache", "direct"])
async def test_pull_with_bearer_token_auth(tmp_path: Path, test_images: Any, image_cri: Stack, kind: str) -> None:
    tokens = TokenServer(tmp_path / "tok", users={"puller": "pw"})
    async with serve_asgi(tokens) as tport:
        with auth_registry(tmp_path / "reg", tokens.registry_auth(f"http://127.0.0.1:{tport}/token")) as host:
            ref = await _push(test_images.busybox, host, "puller", "pw")
            im = await image_cri(kind, host)
            assert await code_of(im.PullImage(_pull(ref))) == grpc.StatusCode.UNAUTHENTICATED
            tokens.requests.clear()
            assert (await im.PullImage(_pull(ref, username="puller", password="pw"))).image_ref
            assert tokens.requests and all(r["authorization"] for r in tokens.requests)
            other = await _push(test_images.multilayer, host, "puller", "pw")
            # the token earned above stays with that pull: a bare pull is refused again
            assert await code_of(im.PullImage(_pull(other))) == grpc.StatusCode.UNAUTHENTICATED


async def _error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def test_auth_config_parsing() -> None:
    c = RegistryCredentials.from_auth_config(auth=base64.b64encode(b"u:p:q").decode())
    assert c is not None and (c.username, c.password) == ("u", "p:q")
    assert RegistryCredentials.from_auth_config() is None
    assert "secret" not in repr(RegistryCredentials("u", "secret", "secret", "secret"))
    tok = RegistryCredentials.from_auth_config(registry_token="t")
    assert tok is not None and tok.basic() is None
