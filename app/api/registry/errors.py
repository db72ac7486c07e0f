"""Our error kinds -> distribution-spec error codes, in one table (per route kind)."""

from __future__ import annotations

import json

from app.errors import Kind, VappError

# (kind, route) -> (code, status); route None is the fallback for every route.
_TABLE: dict[tuple[Kind, str | None], tuple[str, int]] = {
    (Kind.NOT_FOUND, "manifest"): ("MANIFEST_UNKNOWN", 404),
    (Kind.NOT_FOUND, "blob"): ("BLOB_UNKNOWN", 404),
    (Kind.NOT_FOUND, "tags"): ("NAME_UNKNOWN", 404),
    (Kind.NOT_FOUND, None): ("NAME_UNKNOWN", 404),
    (Kind.INVALID_ARGUMENT, "manifest"): ("MANIFEST_INVALID", 400),
    (Kind.INVALID_ARGUMENT, None): ("NAME_INVALID", 400),
    (Kind.UNAUTHENTICATED, None): ("UNAUTHORIZED", 401),
    (Kind.PERMISSION_DENIED, None): ("DENIED", 403),
    (Kind.RESOURCE_EXHAUSTED, None): ("TOOMANYREQUESTS", 429),
    (Kind.UNAVAILABLE, None): ("UNAVAILABLE", 503),
    (Kind.DEADLINE_EXCEEDED, None): ("UNAVAILABLE", 503),
    (Kind.UNIMPLEMENTED, None): ("UNSUPPORTED", 405),
    (Kind.FAILED_PRECONDITION, None): ("DENIED", 409),
    (Kind.ALREADY_EXISTS, None): ("DENIED", 409),
    (Kind.INTERNAL, None): ("UNKNOWN", 500),
}
_STATUS_OF_CODE = {
    "DIGEST_INVALID": 400, "NAME_INVALID": 400, "TAG_INVALID": 400, "MANIFEST_INVALID": 400,
    "PAGINATION_NUMBER_INVALID": 400, "UNSUPPORTED": 405, "NAME_UNKNOWN": 404,
}  # fmt: skip


def registry_error(exc: VappError, route: str | None) -> tuple[int, str, bytes]:
    """(status, code, JSON body) for ``exc`` on a route kind (manifest | blob | tags | base)."""
    code = exc.details.get("code") if isinstance(exc.details.get("code"), str) else None
    if code is None and exc.kind == Kind.INVALID_ARGUMENT:
        if "digest" in exc.details:
            code = "DIGEST_INVALID"
        elif "tag" in exc.details:
            code = "TAG_INVALID"
        elif "name" in exc.details or "registry" in exc.details:
            code = "NAME_INVALID"
    if code is not None:
        status = _STATUS_OF_CODE.get(code) or _lookup(exc.kind, route)[1]
    else:
        code, status = _lookup(exc.kind, route)
    detail = {k: v for k, v in exc.details.items() if k != "code"}
    return status, code, encode(code, exc.message, detail)


def _lookup(kind: Kind, route: str | None) -> tuple[str, int]:
    return _TABLE.get((kind, route)) or _TABLE.get((kind, None)) or ("UNKNOWN", 500)


def encode(code: str, message: str, detail: object = None) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail or {}}]}).encode()
