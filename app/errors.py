"""The project's error classes: a small set of kinds, mapped once per front door.

Every failure the service layer reports is a :class:`VappError`. Two orthogonal
labels travel with it:

* ``kind`` (what went wrong, containerd's errdefs style) decides the status code
  on each transport: HTTP status, gRPC code, registry error code.
* ``category`` (which part of the node failed) is what the vappc protocol shows
  the agent (``Config``, ``Runtime``, ``Image``...), together with ``phase``.

Tree::

    VappError
     ├── InvalidArgument      bad input from a client           HTTP 400 / INVALID_ARGUMENT
     ├── NotFound             no such object                    404 / NOT_FOUND
     ├── AlreadyExists        id or name taken                  409 / ALREADY_EXISTS
     ├── FailedPrecondition   wrong state for the operation     409 / FAILED_PRECONDITION
     ├── PermissionDenied     caller not allowed                403 / PERMISSION_DENIED
     ├── Unauthenticated      caller not identified             401 / UNAUTHENTICATED
     ├── Unavailable          a dependency is down, retry later 503 / UNAVAILABLE
     ├── DeadlineExceeded     a bounded wait ran out            504 / DEADLINE_EXCEEDED
     ├── ResourceExhausted    quota, rate limit, disk           429 / RESOURCE_EXHAUSTED
     ├── Unimplemented        not supported by this node        501 / UNIMPLEMENTED
     └── Internal             a bug or an unexpected OS error   500 / INTERNAL

Convert foreign exceptions at the boundary where they happen
(``raise NotFound(...) from exc``) so that front doors only ever see these.
"""

from __future__ import annotations

import enum
from typing import Any


class Category(enum.StrEnum):
    """The part of the node a failure belongs to (vappc ``Error.category``)."""

    CONFIG = "Config"
    RUNTIME = "Runtime"
    IMAGE = "Image"
    VOLUME = "Volume"
    NETWORK = "Network"
    BOOTSTRAP = "Bootstrap"
    IO = "Io"
    INTERNAL = "Internal"
    TIMEOUT = "Timeout"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset({Category.RUNTIME, Category.IMAGE, Category.NETWORK, Category.IO, Category.TIMEOUT})


class Kind(enum.StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    PERMISSION_DENIED = "permission_denied"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


class VappError(Exception):
    """Base of every error the service layer raises.

    ``message`` is for humans and must never contain secrets. ``details`` is
    structured context (ids, paths, field names) that front doors may expose.
    """

    kind: Kind = Kind.INTERNAL
    default_category: Category = Category.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        category: Category | None = None,
        phase: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category or self.default_category
        self.phase = phase
        self.details = dict(details or {})

    @property
    def retryable(self) -> bool:
        return self.category.retryable

    def with_phase(self, phase: str) -> VappError:
        """Attach the phase the error happened in, unless a deeper layer already did."""
        if self.phase is None:
            self.phase = phase
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind.value, "category": self.category.value, "message": self.message}
        if self.phase:
            out["phase"] = self.phase
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, category={self.category.value})"


class InvalidArgument(VappError):
    kind = Kind.INVALID_ARGUMENT
    default_category = Category.CONFIG


class NotFound(VappError):
    kind = Kind.NOT_FOUND
    default_category = Category.RUNTIME


class AlreadyExists(VappError):
    kind = Kind.ALREADY_EXISTS
    default_category = Category.RUNTIME


class FailedPrecondition(VappError):
    kind = Kind.FAILED_PRECONDITION
    default_category = Category.RUNTIME


class PermissionDenied(VappError):
    kind = Kind.PERMISSION_DENIED
    default_category = Category.CONFIG


class Unauthenticated(VappError):
    kind = Kind.UNAUTHENTICATED
    default_category = Category.CONFIG


class Unavailable(VappError):
    kind = Kind.UNAVAILABLE
    default_category = Category.IO


class DeadlineExceeded(VappError):
    kind = Kind.DEADLINE_EXCEEDED
    default_category = Category.TIMEOUT


class ResourceExhausted(VappError):
    kind = Kind.RESOURCE_EXHAUSTED
    default_category = Category.IO


class Unimplemented(VappError):
    kind = Kind.UNIMPLEMENTED
    default_category = Category.INTERNAL


class Internal(VappError):
    kind = Kind.INTERNAL
    default_category = Category.INTERNAL


HTTP_STATUS: dict[Kind, int] = {
    Kind.INVALID_ARGUMENT: 400,
    Kind.NOT_FOUND: 404,
    Kind.ALREADY_EXISTS: 409,
    Kind.FAILED_PRECONDITION: 409,
    Kind.PERMISSION_DENIED: 403,
    Kind.UNAUTHENTICATED: 401,
    Kind.UNAVAILABLE: 503,
    Kind.DEADLINE_EXCEEDED: 504,
    Kind.RESOURCE_EXHAUSTED: 429,
    Kind.UNIMPLEMENTED: 501,
    Kind.INTERNAL: 500,
}
