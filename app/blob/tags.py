"""``GET /v2/<name>/tags/list`` proxied to the upstream (with ``n``/``last`` pagination)."""

from __future__ import annotations

import json
import urllib.parse

from app.blob.upstream import Upstream
from app.errors import Category, InvalidArgument, Unavailable

TAGS_MAX = 4 * 1024 * 1024


async def list_tags(up: Upstream, repo: str, n: int | None, last: str | None) -> tuple[bytes, str | None]:
    """Return the upstream's JSON body and the query of its ``next`` page (``n=..&last=..``) if any."""
    query = {}
    if n is not None:
        if n < 0 or n > 10000:
            raise InvalidArgument("n must be between 0 and 10000", category=Category.IMAGE,
                                  details={"code": "PAGINATION_NUMBER_INVALID"})  # fmt: skip
        query["n"] = str(n)
    if last:
        query["last"] = last
    path = "tags/list" + ("?" + urllib.parse.urlencode(query) if query else "")
    resp = await up.open("GET", repo, path, {"Accept": "application/json"})
    try:
        body = await resp.response.aread()
    finally:
        await resp.aclose()
    if len(body) > TAGS_MAX:
        raise Unavailable("upstream tag list too large", category=Category.IMAGE)
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError:
        raise Unavailable("upstream returned an invalid tag list", category=Category.IMAGE) from None
    next_query = None
    link = resp.headers.get("link")
    if link and 'rel="next"' in link:
        target = link.split(";", 1)[0].strip().strip("<>")
        next_query = urllib.parse.urlsplit(target).query or None
    return body, next_query
