"""Eviction planning, pure: which blobs to drop for a quota and a TTL, never a protected one.

Order: every unprotected blob idle longer than the TTL goes first; then, while the
total is above the quota, the least recently accessed unprotected blobs. A blob is
protected while it is pinned (the runtime's images in use), being served or
downloaded, or reported "in use" by the runtime's callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from app.blob.meta import BlobEntry


def plan_eviction(
    entries: Iterable[BlobEntry],
    *,
    quota_bytes: int,
    ttl_seconds: float | None,
    now: float,
    protected: Callable[[str], bool],
) -> list[tuple[str, str]]:
    """Return ``[(digest, reason)]`` with reason ``"ttl"`` or ``"quota"``, in eviction order."""
    items = sorted(entries, key=lambda e: (e.last_access, e.digest))
    total = sum(e.size for e in items)
    out: list[tuple[str, str]] = []
    kept: list[BlobEntry] = []
    for e in items:
        if ttl_seconds is not None and now - e.last_access > ttl_seconds and not protected(e.digest):
            out.append((e.digest, "ttl"))
            total -= e.size
        else:
            kept.append(e)
    for e in kept:
        if total <= quota_bytes:
            break
        if protected(e.digest):
            continue
        out.append((e.digest, "quota"))
        total -= e.size
    return out
