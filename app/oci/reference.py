"""THE image-reference parser of the project (the only one: everything else imports it).

Grammar (distribution's ``reference`` package, which docker, containerd and podman share)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path                    len(name) <= 255
    domain           := host [ ":" port ]
    host             := domain-name | IPv4 | "[" IPv6 "]"
    domain-name      := component ( "." component )*
    component        := [A-Za-z0-9] ( [A-Za-z0-9-]* [A-Za-z0-9] )?
    path             := path-component ( "/" path-component )*
    path-component   := [a-z0-9]+ ( separator [a-z0-9]+ )*     separator: "." | "_" | "__" | "-"+
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := algorithm ":" hex                      sha256: 64 hex, sha512: 128 hex (lowercase)

Normalisation (docker's "familiar" names):

* The first ``/``-separated component is a registry only if it contains ``.`` or
  ``:``, is ``localhost``, or has an uppercase letter; otherwise the name is a
  Docker Hub name (``busybox`` -> ``docker.io/library/busybox``).
* ``index.docker.io`` and ``registry-1.docker.io`` are aliases of ``docker.io``.
* Docker Hub names with one path component get ``library/``.
* With neither tag nor digest, the tag defaults to ``latest`` (pass ``default_tag=None``
  to keep it absent).

``Reference.canonical`` is the fully-qualified form (``docker.io/library/busybox:latest``);
``Reference.familiar`` is the short form docker prints (``busybox:latest``).
"""

from __future__ import annotations

import dataclasses
import re

from app.errors import Category, InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_API = "registry-1.docker.io"  # where docker.io's /v2 API actually lives
NAME_MAX = 255
TAG_MAX = 128

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$", re.ASCII)
_DIGEST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[+._-][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$")
_DIGEST_HEX_LEN = {"sha256": 64, "sha512": 128}


def _fail(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid image reference {text!r}: {why}",
        category=Category.IMAGE,
        details={"reference": text[:512], "reason": why},
    )


def validate_digest(digest: str) -> str:
    """Check ``algorithm:hex``; only sha256 and sha512 are accepted. Return it unchanged."""
    if not _DIGEST_RE.match(digest):
        raise InvalidArgument(
            f"invalid digest {digest[:200]!r}: expected algorithm:hex",
            category=Category.IMAGE,
            details={"digest": digest[:200]},
        )
    algo, _, hexpart = digest.partition(":")
    want = _DIGEST_HEX_LEN.get(algo)
    if want is None:
        raise InvalidArgument(
            f"unsupported digest algorithm {algo!r}",
            category=Category.IMAGE,
            details={"digest": digest[:200]},
        )
    if len(hexpart) != want or hexpart != hexpart.lower():
        raise InvalidArgument(
            f"invalid {algo} digest {digest[:200]!r}: expected {want} lowercase hex characters",
            category=Category.IMAGE,
            details={"digest": digest[:200]},
        )
    return digest


def is_digest(text: str) -> bool:
    try:
        validate_digest(text)
    except InvalidArgument:
        return False
    return True


def validate_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise InvalidArgument(
            f"invalid tag {tag[:200]!r}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}",
            category=Category.IMAGE,
            details={"tag": tag[:200]},
        )
    return tag


def validate_repository(path: str) -> str:
    """Check a repository path (no registry part): lowercase components, separators."""
    if not path:
        raise InvalidArgument("repository name is empty", category=Category.IMAGE)
    if len(path) > NAME_MAX:
        raise InvalidArgument(
            f"repository name longer than {NAME_MAX} characters",
            category=Category.IMAGE,
            details={"name": path[:300]},
        )
    if not _PATH_RE.match(path):
        why = "must be lowercase" if _PATH_RE.match(path.lower()) else "invalid path component"
        raise InvalidArgument(
            f"invalid repository name {path[:300]!r}: {why}",
            category=Category.IMAGE,
            details={"name": path[:300]},
        )
    return path


def looks_like_registry(component: str) -> bool:
    """Docker's rule for the first path component: is it a registry host?"""
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def normalize_registry(host: str) -> str:
    """``index.docker.io``/``registry-1.docker.io`` -> ``docker.io``; hosts are case-insensitive."""
    low = host.lower()
    return DOCKER_HUB if low in DOCKER_HUB_ALIASES else low


def validate_registry(host: str) -> str:
    if not _HOST_RE.match(host):
        raise InvalidArgument(
            f"invalid registry host {host[:200]!r}", category=Category.IMAGE, details={"registry": host[:200]}
        )
    _, sep, port = host.rpartition(":")
    if sep and "]" not in port and port.isdigit() and int(port) > 65535:
        raise InvalidArgument(f"invalid registry port in {host!r}", category=Category.IMAGE)
    return host


def split_name(name: str) -> tuple[str, str]:
    """Split ``[registry/]path`` into (normalised registry, repository path) with Hub rules."""
    first, sep, rest = name.partition("/")
    if sep and looks_like_registry(first):
        registry, path = normalize_registry(validate_registry(first)), rest
    else:
        registry, path = DOCKER_HUB, name
    if registry == DOCKER_HUB and path and "/" not in path:
        path = "library/" + path
    return registry, path


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """A parsed, normalised image reference. Immutable; build with :meth:`parse`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = "latest") -> Reference:
        """Parse and normalise ``text``; raise :class:`InvalidArgument` (category Image)."""
        if not isinstance(text, str) or not text:
            raise _fail(str(text), "empty reference")
        if text != text.strip() or any(c.isspace() for c in text):
            raise _fail(text, "contains whitespace")
        rest, digest = text, None
        if "@" in rest:
            rest, _, digest = rest.partition("@")
            if "@" in digest:
                raise _fail(text, "more than one '@'")
            try:
                validate_digest(digest)
            except InvalidArgument as exc:
                raise _fail(text, exc.message) from None
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:  # a ':' after the last '/' starts the tag; earlier ones are ports
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise _fail(text, f"invalid tag {tag[:200]!r}")
        if not rest:
            raise _fail(text, "missing repository name")
        if len(rest) > NAME_MAX:
            raise _fail(text, f"name longer than {NAME_MAX} characters")
        try:
            registry, path = split_name(rest)
        except InvalidArgument as exc:
            raise _fail(text, exc.message) from None
        if not path:
            raise _fail(text, "missing repository name")
        if not _PATH_RE.match(path):
            why = (
                "repository name must be lowercase"
                if _PATH_RE.match(path.lower())
                else (f"invalid repository name {path[:200]!r}")
            )
            raise _fail(text, why)
        if len(registry) + 1 + len(path) > NAME_MAX:
            raise _fail(text, f"name longer than {NAME_MAX} characters")
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    # --- forms ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def canonical(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def familiar(self) -> str:
        """Docker's short form: drop ``docker.io/`` and ``library/``."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = (
                self.repository.removeprefix("library/")
                if self.repository.count("/") == 1
                else (self.repository)
            )
        out = name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def object(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        """The host that serves this registry's /v2 API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def with_digest(self, digest: str) -> Reference:
        return dataclasses.replace(self, digest=validate_digest(digest))

    def with_tag(self, tag: str) -> Reference:
        return dataclasses.replace(self, tag=validate_tag(tag))

    def __str__(self) -> str:
        return self.canonical


def parse(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Shorthand for :meth:`Reference.parse`."""
    return Reference.parse(text, default_tag=default_tag)
