"""Pure pieces: WWW-Authenticate parsing, tokens, docker config, the hedged race, eviction
planning, Range parsing and the error table."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest

from app.api.registry.app import parse_range
from app.api.registry.errors import registry_error
from app.blob import auth
from app.blob.eviction import plan_eviction
from app.blob.meta import BlobEntry
from app.blob.mirrors import AllFailed, AttemptFailed, EndpointStats, hedged_race
from app.errors import InvalidArgument, NotFound, ResourceExhausted, Unauthenticated, Unavailable


def test_www_authenticate_quoted_commas_and_several_challenges() -> None:
    h = ('Bearer realm="https://auth.example/token?a=1,b=2",service="registry.example",'
         'scope="repository:a/b:pull,push", Basic realm="x\\"y"')  # fmt: skip
    [bearer, basic] = auth.parse_www_authenticate(h)
    assert bearer.scheme == "bearer"
    assert bearer.realm == "https://auth.example/token?a=1,b=2"
    assert bearer.params["service"] == "registry.example"
    assert bearer.params["scope"] == "repository:a/b:pull,push"
    assert basic == auth.Challenge("basic", {"realm": 'x"y'})
    assert auth.parse_www_authenticate("BASIC  Realm=plain") == [auth.Challenge("basic", {"realm": "plain"})]
    assert auth.parse_www_authenticate("Bearer") == [auth.Challenge("bearer", {})]
    with pytest.raises(InvalidArgument):
        auth.parse_www_authenticate('Bearer realm="unterminated')


def test_token_url_replaces_scope_and_keeps_realm_query() -> None:
    ch = auth.Challenge("bearer", {"realm": "https://a/t?x=1", "service": "s v", "scope": "other"})
    url = auth.token_url(ch, auth.pull_scope("lib/app"))
    assert url == "https://a/t?x=1&service=s+v&scope=repository%3Alib%2Fapp%3Apull"
    with pytest.raises(InvalidArgument):
        auth.token_url(auth.Challenge("bearer", {"realm": "file:///etc/passwd"}), None)


def test_token_cache_expiry_margin() -> None:
    now = [1000.0]
    cache = auth.TokenCache(clock=lambda: now[0])
    tok = auth.parse_token_response(b'{"access_token": "SECRET-T", "expires_in": 300}', now[0])
    key = ("r", "s", "scope")
    cache.put(key, tok)
    assert cache.get(key) == "SECRET-T"
    now[0] += 289
    assert cache.get(key) == "SECRET-T"
    now[0] += 2  # inside the 10 s margin
    assert cache.get(key) is None
    short = auth.parse_token_response(b'{"token": "S", "expires_in": 8}', 0)
    assert 0 < short.expires_at < 8  # the margin never eats a short token entirely
    assert auth.parse_token_response(b'{"token": "D"}', 0).expires_at == pytest.approx(60 - 10)
    with pytest.raises(InvalidArgument):
        auth.parse_token_response(b"{}", 0)
    assert "SECRET" not in repr(tok)


def test_docker_config_auth(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
        "reg.example:5000": {"username": "u", "password": "p"},
    }}))  # fmt: skip
    hub = auth.docker_config_credentials(cfg, "docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hub", "pw:with:colons")
    assert "pw" not in repr(hub)
    reg = auth.docker_config_credentials(cfg, "reg.example:5000")
    assert reg is not None and reg.header() == "Basic " + base64.b64encode(b"u:p").decode()
    assert auth.docker_config_credentials(cfg, "ghcr.io") is None
    with pytest.raises(InvalidArgument):
        auth.docker_config_credentials(tmp_path / "missing.json", "x")


async def test_hedged_race_first_success_wins_and_failures_start_next() -> None:
    started: list[int] = []
    closed: list[str] = []

    async def attempt(i: int) -> str:
        started.append(i)
        if i == 0:
            await asyncio.sleep(10)  # slow: the hedge starts #1
        if i == 1:
            raise AttemptFailed("503", None)  # fails: #2 starts at once
        return f"r{i}"

    async def close(r: str) -> None:
        closed.append(r)

    t0 = time.monotonic()
    winner = await hedged_race(3, [0.05, 5, 5], attempt, on_lose=close)
    assert winner == (2, "r2")
    assert started == [0, 1, 2]
    assert time.monotonic() - t0 < 1

    async def always_fail(i: int) -> str:
        raise AttemptFailed(str(500 + i), i)

    with pytest.raises(AllFailed) as info:
        await hedged_race(2, [5, 5], always_fail)
    assert [f.reason for _, f in info.value.failures] == ["500", "501"]


def test_endpoint_scoring_prefers_fast_and_punishes_errors() -> None:
    fast, slow, flaky = EndpointStats(), EndpointStats(), EndpointStats()
    fast.record_success(0.01)
    slow.record_success(0.5)
    flaky.record_success(0.01)
    flaky.record_failure("503", now=time.monotonic())
    assert fast.score() < slow.score()
    assert fast.score() < flaky.score()
    assert 0.05 <= fast.hedge_delay() <= 2.0


def _e(d: str, size: int, last: float) -> BlobEntry:
    return BlobEntry(d, size, None, "blob", "r", 0, last)


def test_eviction_plan_lru_ttl_and_protection() -> None:
    entries = [_e("a", 10, 1), _e("b", 10, 2), _e("c", 10, 3), _e("d", 10, 4)]
    plan = plan_eviction(entries, quota_bytes=25, ttl_seconds=None, now=10, protected=lambda d: d == "a")
    assert plan == [("b", "quota"), ("c", "quota")]
    plan = plan_eviction(entries, quota_bytes=100, ttl_seconds=7.5, now=10, protected=lambda d: False)
    assert plan == [("a", "ttl"), ("b", "ttl")]
    assert plan_eviction(entries, quota_bytes=0, ttl_seconds=None, now=10, protected=lambda d: True) == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None), ("bytes=0-9", (0, 10)), ("bytes=5-", (5, 100)), ("bytes=-10", (90, 100)),
        ("bytes=90-200", (90, 100)), ("bytes=100-", False), ("bytes=-0", False), ("bytes=5-4", False),
        ("bytes=0-1,5-6", None), ("items=0-1", None), ("bytes=-", None),
    ],
)  # fmt: skip
def test_parse_range(header: str | None, expected: object) -> None:
    assert parse_range(header, 100) == expected


def test_error_table() -> None:
    assert registry_error(NotFound("x"), "manifest")[:2] == (404, "MANIFEST_UNKNOWN")
    assert registry_error(NotFound("x"), "blob")[:2] == (404, "BLOB_UNKNOWN")
    assert registry_error(InvalidArgument("x", details={"digest": "d"}), "blob")[:2] == (400, "DIGEST_INVALID")
    assert registry_error(InvalidArgument("x", details={"name": "n"}), "blob")[:2] == (400, "NAME_INVALID")
    assert registry_error(Unauthenticated("x"), "blob")[:2] == (401, "UNAUTHORIZED")
    assert registry_error(ResourceExhausted("x"), None)[:2] == (429, "TOOMANYREQUESTS")
    status, code, body = registry_error(Unavailable("down"), "blob")
    assert (status, code) == (503, "UNAVAILABLE")
    assert json.loads(body)["errors"][0]["message"] == "down"
