"""Per-request registry credentials (CRI ``AuthConfig``), scoped to one pull.

A pull's requests fan out through the puller's layer jobs, the blob cache's manifest
cache and single-flight downloads, and the upstream endpoints' auth dance. Rather than
add a parameter to every one of those layers, the pull sets :data:`_current` for its
own duration (``with using(creds): ...``); asyncio tasks started inside copy the
context, so the credentials follow that request's work and nothing else::

    CRI PullImage(auth) ─► ImageService.pull(credentials=) ─► Puller.pull(credentials=)
        └─ using(creds) ─► fetcher ─► upstream Endpoint reads current() for its Authorization

They are never stored (no database row, no shared token cache: bearer tokens they earn
live in the object itself and die with the request) and never logged (secrets are out
of ``repr``). Without them the node's configured upstream credentials apply.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar

from app.errors import Category, InvalidArgument


@dataclasses.dataclass(frozen=True)
class RegistryCredentials:
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    identity_token: str = dataclasses.field(default="", repr=False)  # OAuth2 refresh token
    registry_token: str = dataclasses.field(default="", repr=False)  # bearer token sent as is
    # bearer tokens earned with these credentials, keyed by (realm, service, scope): this request only
    tokens: dict[tuple[str, str, str], str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_auth_config(cls, username: str = "", password: str = "", auth: str = "",
                         identity_token: str = "", registry_token: str = "") -> RegistryCredentials | None:
        """CRI/Docker ``AuthConfig``: ``auth`` is base64("user:pass") and wins over the plain
        fields when set (as containerd's ParseAuth); None when nothing was given. Pure."""
        if auth:
            try:
                decoded = base64.b64decode(auth, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise InvalidArgument("auth_config.auth is not base64", category=Category.IMAGE) from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise InvalidArgument("auth_config.auth must encode user:password", category=Category.IMAGE)
        if not (username or password or identity_token or registry_token):
            return None
        return cls(username.strip(), password.strip(), identity_token, registry_token)

    def basic(self) -> str | None:
        if not self.username and not self.password:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


_current: ContextVar[RegistryCredentials | None] = ContextVar("registry_credentials", default=None)


def current() -> RegistryCredentials | None:
    """The credentials of the pull this code runs for, if it brought any."""
    return _current.get()


@contextlib.contextmanager
def using(creds: RegistryCredentials | None) -> Iterator[None]:
    token = _current.set(creds)
    try:
        yield
    finally:
        _current.reset(token)
