"""Upstream registry clients: endpoints (mirrors + the registry itself), auth, hedged requests.

::

    UpstreamPool  (one per cache; registry host -> Upstream, built lazily from BlobSettings)
      Upstream "docker.io"
        endpoints: [mirror A, mirror B, registry-1.docker.io]   each: httpx client, auth state, stats
        open(method, repository, "manifests/latest", headers)  -> UpstreamResponse (headers read,
                                                                    body not yet; caller closes)

Failures are classified per attempt: connection errors, timeouts, 5xx and 429 fall
through to the next endpoint; so does a 404 from a mirror (mirrors may lag). After
every endpoint failed, the combined outcome becomes one of our error kinds:
NotFound (the registry itself said 404), ResourceExhausted (429), Unauthenticated,
or Unavailable (the rest). Timeouts are connect and idle-read timeouts, never a total
one: a large layer may take as long as it needs while bytes keep coming.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from app.blob import auth, metrics
from app.blob.mirrors import AllFailed, AttemptFailed, EndpointStats, hedged_race
from app.config import BlobSettings, UpstreamSettings
from app.errors import (
    Category,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VappError,
)
from app.oci import credentials
from app.oci.credentials import RegistryCredentials
from app.oci.reference import DOCKER_HUB, DOCKER_HUB_API, normalize_registry

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass
class UpstreamResponse:
    """A response whose headers arrived; the body is still on the wire (``response.aiter_raw``)."""

    response: httpx.Response
    endpoint: Endpoint
    started: float

    @property
    def status(self) -> int:
        return self.response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    async def aclose(self) -> None:
        await self.response.aclose()


class Endpoint:
    """One base URL (a mirror or the registry) with its own client, auth state and score."""

    def __init__(
        self,
        registry: str,
        url: str,
        *,
        mirror: bool,
        settings: UpstreamSettings,
        credentials: auth.BasicCredentials | None,
        tokens: auth.TokenCache,
    ) -> None:
        self.registry = registry
        self.url = url.rstrip("/")
        self.api = self.url if self.url.endswith("/v2") else self.url + "/v2"
        self.mirror = mirror
        self.credentials = credentials
        self.static_token = settings.token.get_secret_value() if settings.token else None
        self.tokens = tokens
        self.stats = EndpointStats()
        self.challenge: auth.Challenge | None = None  # remembered so later requests authenticate up front
        self._token_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        verify: ssl.SSLContext | bool = True
        if settings.insecure:
            verify = False
        elif settings.ca_bundle:
            verify = ssl.create_default_context(cafile=str(settings.ca_bundle))
        self.client = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(connect=settings.connect_timeout, read=settings.read_timeout, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=True,  # blob GETs redirect to object storage on most registries
        )

    @property
    def label(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Endpoint({self.url!r}, mirror={self.mirror})"

    async def _bearer(self, challenge: auth.Challenge, repository: str, refresh: bool) -> str:
        scope = auth.pull_scope(repository)
        key = auth.TokenCache.key(challenge, scope)
        lock = self._token_locks.setdefault(key, asyncio.Lock())
        async with lock:  # one token fetch per key even with many concurrent requests
            if refresh:
                self.tokens.invalidate(key)
            cached = self.tokens.get(key)
            if cached:
                return cached
            url = auth.token_url(challenge, scope)
            headers = {"Authorization": self.credentials.header()} if self.credentials else {}
            try:
                resp = await self.client.get(url, headers=headers)
            except httpx.HTTPError as exc:
                raise Unavailable(f"token endpoint {challenge.realm}: {type(exc).__name__}") from exc
            if resp.status_code in (401, 403):
                raise Unauthenticated(
                    f"{self.registry}: token endpoint refused the credentials ({resp.status_code})",
                    category=Category.IMAGE,
                )
            if resp.status_code != 200:
                raise Unavailable(f"token endpoint {challenge.realm} answered {resp.status_code}")
            token = auth.parse_token_response(resp.content, self.tokens.now())
            self.tokens.put(key, token)
            return token.value

    async def _authorization(self, repository: str, refresh: bool = False) -> str | None:
        per_request = credentials.current()
        if per_request is not None:  # a CRI pull's own AuthConfig replaces the node's for that pull
            return await self._request_authorization(per_request, repository)
        ch = self.challenge
        if ch is None:
            return f"Bearer {self.static_token}" if self.static_token else None
        if ch.scheme == "bearer":
            if self.static_token:
                return f"Bearer {self.static_token}"
            return "Bearer " + await self._bearer(ch, repository, refresh)
        if ch.scheme == "basic" and self.credentials:
            return self.credentials.header()
        return None

    async def _request_authorization(self, creds: RegistryCredentials, repository: str) -> str | None:
        """Authorization from one request's credentials; tokens they earn stay in ``creds``."""
        if creds.registry_token:
            return f"Bearer {creds.registry_token}"
        ch = self.challenge
        if ch is None or ch.scheme == "basic":
            return creds.basic() if ch is not None else None
        scope = auth.pull_scope(repository)
        key = (ch.realm or "", ch.params.get("service", ""), scope)
        if key not in creds.tokens:
            try:
                if creds.identity_token:  # OAuth2 refresh token: POST form (distribution token spec)
                    form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                            "service": ch.params.get("service", ""), "scope": scope, "client_id": "4lock-core"}
                    resp = await self.client.post(auth.token_url(ch, None).split("?")[0], data=form)
                else:
                    basic = creds.basic()
                    resp = await self.client.get(auth.token_url(ch, scope),
                                                 headers={"Authorization": basic} if basic else {})
            except httpx.HTTPError as exc:
                raise Unavailable(f"token endpoint {ch.realm}: {type(exc).__name__}") from exc
            if resp.status_code in (401, 403):
                raise Unauthenticated(f"{self.registry}: token endpoint refused the pull's credentials "
                                      f"({resp.status_code})", category=Category.IMAGE)
            if resp.status_code != 200:
                raise Unavailable(f"token endpoint {ch.realm} answered {resp.status_code}")
            creds.tokens[key] = auth.parse_token_response(resp.content, self.tokens.now()).value
        return f"Bearer {creds.tokens[key]}"

    async def send(self, method: str, repository: str, path: str, headers: dict[str, str]) -> httpx.Response:
        """One request with the auth dance (at most one 401 retry); returns a streaming response."""
        url = f"{self.api}/{repository}/{path}" if repository else f"{self.api}/{path}"
        authz = await self._authorization(repository)
        for retry in (False, True):
            req_headers = dict(headers)
            if authz:
                req_headers["Authorization"] = authz
            req = self.client.build_request(method, url, headers=req_headers)
            resp = await self.client.send(req, stream=True)
            if resp.status_code != 401 or retry:
                return resp
            header = resp.headers.get("www-authenticate", "")
            await resp.aclose()
            challenges = auth.parse_www_authenticate(header) if header else []
            usable = [c for c in challenges if c.scheme in ("bearer", "basic")]
            if not usable:
                return resp
            self.challenge = usable[0]
            authz = await self._authorization(repository, refresh=True)
            if authz is None:
                raise Unauthenticated(
                    f"{self.registry} requires credentials ({self.challenge.scheme}) and none are configured",
                    category=Category.IMAGE,
                )
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.client.aclose()


class Upstream:
    """One registry: its endpoints in score order and the hedged request over them."""

    def __init__(self, registry: str, endpoints: list[Endpoint], settings: UpstreamSettings) -> None:
        self.registry = registry
        self.endpoints = endpoints
        self.settings = settings

    def ordered(self) -> list[Endpoint]:
        now = time.monotonic()
        # Stable sort: configuration order (mirrors first) breaks ties between unknown endpoints.
        return sorted(self.endpoints, key=lambda e: e.stats.score(now))

    async def open(
        self,
        method: str,
        repository: str,
        path: str,
        headers: dict[str, str] | None = None,
        ok: frozenset[int] = frozenset({200}),
        endpoints: list[Endpoint] | None = None,
    ) -> UpstreamResponse:
        """Race the header phase; return the first response whose status is in ``ok``."""
        order = endpoints or self.ordered()
        hdrs = dict(headers or {})

        async def attempt(i: int) -> UpstreamResponse:
            ep = order[i]
            start = time.monotonic()
            try:
                resp = await ep.send(method, repository, path, hdrs)
            except asyncio.CancelledError:
                # Lost the race while still waiting for headers: it is at least this slow.
                ep.stats.record_latency(time.monotonic() - start)
                raise
            except httpx.HTTPError as exc:
                ep.stats.record_failure(type(exc).__name__)
                raise AttemptFailed("unreachable", f"{type(exc).__name__}: {exc}") from exc
            except VappError as exc:
                ep.stats.record_failure(exc.kind.value)
                raise AttemptFailed(exc.kind.value, exc) from exc
            elapsed = time.monotonic() - start
            metrics.UPSTREAM_LATENCY.labels(upstream=self.registry, mirror=ep.label).observe(elapsed)
            if resp.status_code in ok:
                ep.stats.record_success(elapsed)
                return UpstreamResponse(resp, ep, start)
            await resp.aclose()
            code = resp.status_code
            if code in RETRY_STATUSES:
                ep.stats.record_failure(str(code))
            else:
                ep.stats.record_success(elapsed)  # a clean answer, just not the one we wanted
            raise AttemptFailed(str(code), resp)

        async def close(r: UpstreamResponse) -> None:
            await r.aclose()

        delays = [ep.stats.hedge_delay() for ep in order]
        try:
            _, result = await hedged_race(len(order), delays, attempt, on_lose=close)
        except AllFailed as exc:
            raise self._combine(exc, order, method, repository, path) from None
        return result

    def _combine(self, exc: AllFailed, order: list[Endpoint], method: str, repo: str, path: str) -> VappError:
        what = f"{self.registry}/{repo}/{path}" if repo else f"{self.registry}/{path}"
        reasons = {order[i].label: f.reason for i, f in exc.failures}
        details: dict[str, Any] = {"upstream": self.registry, "attempts": reasons}
        primary_404 = any(f.reason == "404" and not order[i].mirror for i, f in exc.failures)
        if primary_404 or (exc.failures and all(f.reason == "404" for _, f in exc.failures)):
            return NotFound(f"{what}: not found upstream", category=Category.IMAGE, details=details)
        for _, f in exc.failures:
            if isinstance(f.detail, VappError) and isinstance(f.detail, Unauthenticated | InvalidArgument):
                return f.detail
        if any(f.reason == "401" for _, f in exc.failures):
            return Unauthenticated(f"{what}: upstream refused access", category=Category.IMAGE, details=details)
        if any(f.reason == "403" for _, f in exc.failures):
            return PermissionDenied(f"{what}: upstream denied access", category=Category.IMAGE, details=details)
        if any(f.reason == "429" for _, f in exc.failures):
            return ResourceExhausted(f"{what}: upstream rate limit (429)", category=Category.IMAGE, details=details)
        summary = ", ".join(f"{k}: {v}" for k, v in reasons.items())
        return Unavailable(
            f"{what}: every upstream endpoint failed ({summary})", category=Category.IMAGE, details=details
        )

    def health(self) -> list[dict[str, Any]]:
        out = []
        for ep in self.ordered():
            s = ep.stats
            out.append({
                "url": ep.url, "mirror": ep.mirror, "score": round(s.score(), 4), "latency_seconds": s.latency,
                "throughput_bytes_per_second": s.throughput, "successes": s.successes, "failures": s.failures,
                "last_error": s.last_error, "last_error_at": s.last_error_at,
            })  # fmt: skip
        return out

    async def aclose(self) -> None:
        for ep in self.endpoints:
            await ep.aclose()


def _tune_httpcore() -> None:
    """Read 1 MiB per socket read instead of httpcore's 64 KiB: per-read overhead in Python,
    not the network, limits a loopback/LAN layer download (measured ~2x on 64 MiB blobs).
    A class attribute, so it applies process-wide; larger reads are harmless to other users."""
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:  # pragma: no cover - a future httpcore layout
        return
    AsyncHTTP11Connection.READ_NUM_BYTES = max(AsyncHTTP11Connection.READ_NUM_BYTES, 1024 * 1024)
    # httpx imports anyio's asyncio backend on the first request (~100+ ms): do it now, not mid-pull.
    with contextlib.suppress(ImportError):
        importlib.import_module("anyio._backends._asyncio")


def _credentials(registry: str, cfg: UpstreamSettings) -> auth.BasicCredentials | None:
    if cfg.username and cfg.password is not None:
        return auth.BasicCredentials(cfg.username, cfg.password.get_secret_value())
    if cfg.docker_config:
        return auth.docker_config_credentials(Path(cfg.docker_config), registry)
    return None


def _host_of(url: str) -> str:
    return httpx.URL(url).netloc.decode()


class UpstreamPool:
    """Registry host -> :class:`Upstream`; unconfigured registries are reached at https://<host>."""

    def __init__(self, settings: BlobSettings) -> None:
        self.settings = settings
        self.tokens = auth.TokenCache()
        # Keys as operators write them ("Docker.io", "index.docker.io") name the same registry.
        self._configured = {normalize_registry(k): v for k, v in settings.upstreams.items()}
        _tune_httpcore()
        self._upstreams: dict[str, Upstream] = {}

    def config_for(self, registry: str) -> UpstreamSettings:
        return self._configured.get(normalize_registry(registry)) or UpstreamSettings()

    def get(self, registry: str) -> Upstream:
        up = self._upstreams.get(registry)
        if up is None:
            up = self._upstreams[registry] = self._build(registry)
        return up

    def _build(self, registry: str) -> Upstream:
        cfg = self.config_for(registry)
        primary = cfg.url or f"https://{DOCKER_HUB_API if registry == DOCKER_HUB else registry}"
        endpoints = []
        for url in cfg.mirrors:
            # A mirror authenticates with its own entry (by host) if configured, never with ours.
            mcfg = self._configured.get(normalize_registry(_host_of(url))) or UpstreamSettings(
                insecure=cfg.insecure, ca_bundle=cfg.ca_bundle,
                connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout,
            )  # fmt: skip
            endpoints.append(
                Endpoint(
                    registry,
                    url,
                    mirror=True,
                    settings=mcfg,
                    credentials=_credentials(_host_of(url), mcfg),
                    tokens=self.tokens,
                )
            )
        endpoints.append(
            Endpoint(
                registry,
                primary,
                mirror=False,
                settings=cfg,
                credentials=_credentials(registry, cfg),
                tokens=self.tokens,
            )
        )
        return Upstream(registry, endpoints, cfg)

    def all(self) -> dict[str, Upstream]:
        return dict(self._upstreams)

    async def aclose(self) -> None:
        for up in self._upstreams.values():
            await up.aclose()
        self._upstreams.clear()
