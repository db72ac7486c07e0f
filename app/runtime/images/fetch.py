"""The Fetcher protocol pull depends on, and a direct registry implementation.

The node's blob cache implements :class:`Fetcher` in-process (auth, mirrors,
single-flight, eviction); wiring hands it in, so ``runtime/images`` never
imports ``app.blob``. :class:`RegistryFetcher` speaks the distribution API to
one registry URL directly (anonymous, Basic or bearer-token registries, plain HTTP
allowed), for a node configured without a cache and for tests. Both honour the
pull's own credentials (``app.oci.credentials.current()``, set by the puller).

Both write blobs into THE content store (ingest → verify → rename): a blob a
pull verified once is never downloaded again, and a partial ingest left by a
killed pull is resumed with an HTTP Range request.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from app.content.store import ContentStore
from app.errors import AlreadyExists, Category, NotFound, PermissionDenied, Unauthenticated, Unavailable
from app.oci import credentials
from app.oci import mediatypes as mt
from app.oci.credentials import RegistryCredentials
from app.oci.reference import Reference

Progress = Callable[[int, "int | None"], None]  # (bytes done, total) — monotonic


@dataclasses.dataclass(frozen=True)
class Resolved:
    body: bytes
    media_type: str
    digest: str


class ManifestBytes(Protocol):
    @property
    def body(self) -> bytes: ...
    @property
    def media_type(self) -> str: ...
    @property
    def digest(self) -> str: ...


class Fetcher(Protocol):
    """Lifecycle: ``resolve`` (tag or pinned digest) → ``fetch_manifest`` (an index's
    child) → ``ensure_blob`` for config and layers (verified into the content store).
    ``app.blob.fetcher.CacheFetcher`` implements it over the node's cache."""

    async def resolve(self, ref: Reference) -> ManifestBytes: ...

    async def fetch_manifest(self, ref: Reference, digest: str) -> ManifestBytes:
        """The manifest ``digest`` of ``ref``'s repository; the body hashes to ``digest``."""
        ...

    async def ensure_blob(
        self, ref: Reference, digest: str, size: int | None = None, progress: Progress | None = None
    ) -> Path | None:
        """Make ``digest`` present and verified in the content store."""
        ...


def _map_status(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    details = {"status": resp.status_code, "what": what}
    if resp.status_code == 404:
        raise NotFound(f"{what}: not found in registry", category=Category.IMAGE, details=details)
    if resp.status_code == 401:
        raise Unauthenticated(f"{what}: registry requires authentication", category=Category.IMAGE, details=details)
    if resp.status_code == 403:
        raise PermissionDenied(f"{what}: access denied by registry", category=Category.IMAGE, details=details)
    raise Unavailable(f"{what}: registry answered {resp.status_code}", category=Category.IMAGE, details=details)


class RegistryFetcher:
    def __init__(self, store: ContentStore, base_url: str | None = None, *, timeout: float = 60.0) -> None:
        self.store = store
        self.base_url = base_url.rstrip("/") if base_url else None
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True)
        self._tokens: dict[tuple[str, str, str], str] = {}  # (registry, "", repository) → Authorization

    async def aclose(self) -> None:
        await self._client.aclose()

    def _url(self, ref: Reference, kind: str, obj: str) -> str:
        base = self.base_url or f"https://{ref.api_host}"
        return f"{base}/v2/{ref.repository}/{kind}/{obj}"

    async def _request(self, ref: Reference, url: str, headers: dict[str, str], stream: bool = False) -> httpx.Response:
        creds = credentials.current()
        # a pull's own credentials earn tokens for that pull only, never the fetcher's shared ones
        tokens = creds.tokens if creds is not None else self._tokens
        key = (self.base_url or ref.api_host, "", ref.repository)
        for _ in range(2):
            hdrs = dict(headers)
            if key in tokens:
                hdrs["Authorization"] = tokens[key]
            try:
                req = self._client.build_request("GET", url, headers=hdrs)
                resp = await self._client.send(req, stream=stream)
            except httpx.TransportError as exc:
                raise Unavailable(f"registry unreachable: {exc.__class__.__name__}", category=Category.IMAGE) from exc
            if resp.status_code != 401 or key in tokens:
                return resp
            await resp.aclose()
            tokens[key] = await self._login(ref, resp.headers.get("www-authenticate", ""), creds)
        return resp

    async def _login(self, ref: Reference, challenge: str, creds: RegistryCredentials | None) -> str:
        """The Authorization for a 401 challenge: the pull's credentials for Basic; a bearer token
        (anonymous, or earned with those credentials) for Bearer."""
        basic = creds.basic() if creds is not None else None
        if challenge.lower().startswith("basic") and basic:
            return basic
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        if not challenge.lower().startswith("bearer "):
            raise Unauthenticated("registry requires credentials this fetcher has not got", category=Category.IMAGE)
        params = dict(part.split("=", 1) for part in challenge[7:].replace('"', "").split(",") if "=" in part)
        realm = params.pop("realm", "")
        params["scope"] = f"repository:{ref.repository}:pull"
        try:
            resp = await self._client.get(realm, params=params, headers={"Authorization": basic} if basic else {})
        except httpx.TransportError as exc:
            raise Unavailable(f"token endpoint unreachable: {exc}", category=Category.IMAGE) from exc
        _map_status(resp, "token")
        doc = resp.json()
        return "Bearer " + (doc.get("token") or doc.get("access_token") or "")

    async def resolve(self, ref: Reference) -> Resolved:
        return await self._manifest(ref, ref.object)

    async def fetch_manifest(self, ref: Reference, digest: str) -> Resolved:
        return await self._manifest(ref, digest)

    async def _manifest(self, ref: Reference, reference: str) -> Resolved:
        resp = await self._request(
            ref, self._url(ref, "manifests", reference), {"Accept": ", ".join(mt.DEFAULT_ACCEPT)}
        )
        _map_status(resp, f"manifest {ref.name}:{reference}")
        body = resp.content
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise Unavailable("manifest does not match its digest", category=Category.IMAGE)
        media_type = resp.headers.get("content-type", "").split(";")[0].strip()
        return Resolved(body, media_type, digest)

    async def ensure_blob(
        self, ref: Reference, digest: str, size: int | None = None, progress: Progress | None = None
    ) -> Path:
        if self.store.exists(digest):
            if progress:
                progress(size or 0, size)
            return self.store.path(digest)
        try:
            writer = self.store.writer(f"pull-{digest}", expected_digest=digest, expected_size=size)
        except AlreadyExists as exc:  # another process is fetching it: wait and look again
            raise Unavailable(f"blob {digest} is being fetched by another pull", category=Category.IMAGE) from exc
        try:
            offset = writer.offset
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            resp = await self._request(ref, self._url(ref, "blobs", digest), headers, stream=True)
            try:
                _map_status(resp, f"blob {digest}")
                if offset and resp.status_code != 206:
                    # Server ignored the range: start over rather than duplicate bytes.
                    writer.abort()
                    writer = self.store.writer(f"pull-{digest}", expected_digest=digest, expected_size=size)
                    offset = 0
                done = offset
                if progress:
                    progress(done, size)
                async for chunk in resp.aiter_bytes(1 << 20):
                    writer.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, size)
            except httpx.TransportError as exc:
                raise Unavailable(f"blob {digest}: download interrupted", category=Category.IMAGE) from exc
            finally:
                await resp.aclose()
            writer.commit()
        finally:
            writer.close()
        return self.store.path(digest)
