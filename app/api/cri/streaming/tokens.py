"""Single-use, expiring tokens for stream URLs (the kubelet streaming server's request cache).

``Exec``/``Attach``/``PortForward`` store the request here and return
``http://<addr>/<verb>/<token>``; the first connection to that URL takes the
request out. A token is 128 random bits, lives ``ttl`` seconds (kubelet uses
one minute), and the cache holds at most ``max_entries`` (oldest dropped first)
so a client asking for URLs and never using them cannot grow memory.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class TokenCache(Generic[T]):
    def __init__(self, ttl: float = 60.0, max_entries: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.max_entries, self._clock = ttl, max_entries, clock
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def put(self, item: T) -> str:
        self._expire()
        while len(self._items) >= self.max_entries:
            self._items.popitem(last=False)
        token = secrets.token_urlsafe(16)
        self._items[token] = (self._clock() + self.ttl, item)
        return token

    def take(self, token: str) -> T | None:
        """The request behind ``token``, once; None if unknown, used or expired."""
        entry = self._items.pop(token, None)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1]

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            token, (deadline, _) = next(iter(self._items.items()))
            if deadline >= now:
                break
            del self._items[token]
