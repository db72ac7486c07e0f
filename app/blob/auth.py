"""Registry authentication, sans-I/O: challenge parsing, credentials, a token cache.

The bearer flow (distribution's token spec) as the upstream client drives it::

    GET /v2/<name>/manifests/x            -> 401  WWW-Authenticate: Bearer realm="R",service="S",scope="S1"
    GET R?service=S&scope=repository:<name>:pull   (Basic auth if we have credentials)
                                          -> {"token"|"access_token", "expires_in", "issued_at"}
    GET /v2/<name>/manifests/x  Authorization: Bearer <token>   -> 200

Tokens are cached by (realm, service, scope) until ``expires_in`` minus a margin;
each endpoint (mirror) answers its own challenge, so each gets its own token.
Nothing here performs I/O; :mod:`app.blob.upstream` does the requests.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from app.errors import Category, InvalidArgument

TOKEN_MIN_LIFETIME = 60.0  # the token spec's default when expires_in is absent
DOCKER_HUB_CONFIG_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "bearer", "basic"
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _read_token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] not in ' \t,="':
        i += 1
    return text[start:i], i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """``i`` points after the opening quote; handles backslash escapes."""
    out = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted string")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Parse RFC 7235 challenges: ``Bearer realm="a,b",scope="x"``, several per header.

    Quoted values may contain commas and escaped quotes. Malformed input raises
    :class:`InvalidArgument` rather than guessing.
    """
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    scheme: str | None = None
    params: dict[str, str] = {}
    try:
        while i < n:
            i = _skip_ws(header, i)
            if i < n and header[i] == ",":
                i += 1
                continue
            if i >= n:
                break
            word, j = _read_token(header, i)
            if not word:
                raise ValueError(f"unexpected {header[i]!r} at {i}")
            k = _skip_ws(header, j)
            if scheme is not None and k < n and header[k] == "=":
                # auth-param of the current challenge
                k = _skip_ws(header, k + 1)
                if k < n and header[k] == '"':
                    value, i = _read_quoted(header, k + 1)
                else:
                    value, i = _read_token(header, k)
                params[word.lower()] = value
                continue
            # a new scheme starts here
            if scheme is not None:
                challenges.append(Challenge(scheme, params))
            scheme, params, i = word.lower(), {}, j
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
    except ValueError as exc:
        raise InvalidArgument(
            f"malformed WWW-Authenticate header: {exc}", category=Category.IMAGE, details={"header": header[:300]}
        ) from None
    return challenges


@dataclasses.dataclass(frozen=True)
class BasicCredentials:
    username: str
    password: str = dataclasses.field(repr=False)

    def header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


def pull_scope(repository: str) -> str:
    return f"repository:{repository}:pull"


def token_url(challenge: Challenge, scope: str | None) -> str:
    """The GET URL for a bearer challenge; our scope replaces the one in the challenge."""
    realm = challenge.realm
    if not realm or not realm.startswith(("http://", "https://")):
        raise InvalidArgument(f"bearer challenge without a usable realm: {realm!r}", category=Category.IMAGE)
    query: list[tuple[str, str]] = []
    if challenge.params.get("service"):
        query.append(("service", challenge.params["service"]))
    wanted = scope or challenge.params.get("scope")
    if wanted:
        query.extend(("scope", s) for s in wanted.split(" ") if s)
    sep = "&" if "?" in realm else "?"
    return realm + (sep + urllib.parse.urlencode(query) if query else "")


@dataclasses.dataclass(frozen=True)
class Token:
    value: str = dataclasses.field(repr=False)
    expires_at: float


def parse_token_response(body: bytes, now: float, margin: float = 10.0) -> Token:
    """``{"token"|"access_token", "expires_in", "issued_at"}`` -> Token valid until expiry - margin."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise InvalidArgument("token endpoint returned invalid JSON", category=Category.IMAGE) from None
    value = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
    if not isinstance(value, str) or not value:
        raise InvalidArgument("token endpoint returned no token", category=Category.IMAGE)
    expires_in = doc.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else TOKEN_MIN_LIFETIME
    # Never let the margin eat the whole lifetime of a short token.
    margin = min(margin, lifetime / 4)
    return Token(value=value, expires_at=now + lifetime - margin)


class TokenCache:
    """Bearer tokens by (realm, service, scope); expired entries are dropped on lookup."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tokens: dict[tuple[str, str, str], Token] = {}
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def key(challenge: Challenge, scope: str) -> tuple[str, str, str]:
        return (challenge.realm or "", challenge.params.get("service", ""), scope)

    def get(self, key: tuple[str, str, str]) -> str | None:
        tok = self._tokens.get(key)
        if tok is None:
            return None
        if tok.expires_at <= self.now():
            del self._tokens[key]
            return None
        return tok.value

    def put(self, key: tuple[str, str, str], token: Token) -> None:
        self._tokens[key] = token

    def invalidate(self, key: tuple[str, str, str]) -> None:
        self._tokens.pop(key, None)

    def __len__(self) -> int:
        return len(self._tokens)


def docker_config_credentials(path: Path, registry: str) -> BasicCredentials | None:
    """The ``auths`` entry for ``registry`` in a docker ``config.json`` (``auth`` or username/password)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument(f"docker config {path}: {exc.strerror}", category=Category.CONFIG) from exc
    except ValueError:
        raise InvalidArgument(f"docker config {path}: invalid JSON", category=Category.CONFIG) from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    keys = (
        DOCKER_HUB_CONFIG_KEYS if registry == "docker.io" else (registry, f"https://{registry}", f"http://{registry}")
    )
    entry = None
    for key in keys:
        entry = auths.get(key) or auths.get(key.rstrip("/"))
        if entry:
            break
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"docker config {path}: bad auth entry for {registry}") from None
        return BasicCredentials(user, password)
    if entry.get("username") and entry.get("password"):
        return BasicCredentials(str(entry["username"]), str(entry["password"]))
    return None
