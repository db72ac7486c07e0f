"""Mirror scoring and the hedged race over a registry's endpoints (generic; no HTTP here).

Race of the header phase, endpoints ordered best score first::

    t=0        start E1
    t=h(E1)    E1 still pending -> start E2 too      (h = delay derived from E1's latency)
    E2 fails   -> start E3 at once (a failure never waits for the hedge delay)
    E1 wins    -> cancel E2/E3, return E1's result

An attempt returns a value (win) or raises :class:`AttemptFailed` carrying a
classification; after every endpoint failed, :func:`hedged_race` raises
:class:`AllFailed` with every failure so the caller can decide (404 vs 503 vs 429).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
E = TypeVar("E")

EWMA_ALPHA = 0.3
HEDGE_MIN = 0.05  # seconds
HEDGE_MAX = 2.0
HEDGE_UNKNOWN = 0.5  # before an endpoint has any observation
ERROR_HALF_LIFE = 60.0  # seconds for the error penalty to halve


@dataclasses.dataclass
class EndpointStats:
    """Observed behaviour of one endpoint; lower :meth:`score` is better."""

    latency: float | None = None  # EWMA of header-phase seconds
    throughput: float | None = None  # EWMA of body bytes/second
    successes: int = 0
    failures: int = 0
    penalty: float = 0.0  # decays with ERROR_HALF_LIFE
    penalty_at: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None

    def _decayed_penalty(self, now: float) -> float:
        if self.penalty <= 0:
            return 0.0
        return self.penalty * 0.5 ** ((now - self.penalty_at) / ERROR_HALF_LIFE)

    def record_success(self, seconds: float) -> None:
        self.successes += 1
        self.record_latency(seconds)

    def record_latency(self, seconds: float) -> None:
        self.latency = seconds if self.latency is None else (1 - EWMA_ALPHA) * self.latency + EWMA_ALPHA * seconds

    def record_throughput(self, nbytes: int, seconds: float) -> None:
        if seconds <= 0 or nbytes < 1024 * 1024:
            return  # too small to say anything about bandwidth
        bps = nbytes / seconds
        self.throughput = bps if self.throughput is None else (1 - EWMA_ALPHA) * self.throughput + EWMA_ALPHA * bps

    def record_failure(self, reason: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.failures += 1
        self.penalty = self._decayed_penalty(now) + 1.0
        self.penalty_at = now
        self.last_error = reason
        self.last_error_at = time.time()

    def score(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        base = self.latency if self.latency is not None else HEDGE_UNKNOWN
        if self.throughput:
            base += 8 * 1024 * 1024 / self.throughput  # time for a typical 8 MiB layer
        return base * (1.0 + 4.0 * self._decayed_penalty(now))

    def hedge_delay(self) -> float:
        if self.latency is None:
            return HEDGE_UNKNOWN
        return min(HEDGE_MAX, max(HEDGE_MIN, 3.0 * self.latency))


class AttemptFailed(Exception, Generic[E]):
    """One endpoint's attempt failed; ``reason`` is a short classification ("5xx", "404"...)."""

    def __init__(self, reason: str, detail: E) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class AllFailed(Exception):
    def __init__(self, failures: list[tuple[int, AttemptFailed]]) -> None:  # type: ignore[type-arg]
        super().__init__(", ".join(f"#{i}: {f.reason}" for i, f in failures))
        self.failures = failures


async def hedged_race(
    count: int,
    delays: Sequence[float],
    attempt: Callable[[int], Awaitable[T]],
    on_lose: Callable[[T], Awaitable[None]] | None = None,
) -> tuple[int, T]:
    """Run ``attempt(i)`` for i in 0..count-1, hedged; return (index, result) of the first success.

    ``delays[i]`` is how long to wait on attempt i before starting i+1. A result
    that arrives after a winner was chosen is handed to ``on_lose`` (to close it).
    """
    if count <= 0:
        raise AllFailed([])
    pending: dict[asyncio.Task[T], int] = {}
    failures: list[tuple[int, AttemptFailed]] = []  # type: ignore[type-arg]
    next_i = 0

    def start_next() -> None:
        nonlocal next_i
        if next_i < count:
            pending[asyncio.ensure_future(attempt(next_i))] = next_i
            next_i += 1

    start_next()
    try:
        while pending:
            timeout = delays[next_i - 1] if next_i < count else None
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                start_next()  # the hedge: the current best is slow
                continue
            winner: tuple[int, T] | None = None
            for task in done:
                i = pending.pop(task)
                exc = task.exception()
                if exc is None:
                    if winner is None:
                        winner = (i, task.result())
                    elif on_lose is not None:
                        await on_lose(task.result())
                elif isinstance(exc, AttemptFailed):
                    failures.append((i, exc))
                    start_next()
                else:
                    failures.append((i, AttemptFailed(f"error: {exc!r}", exc)))
                    start_next()
            if winner is not None:
                return winner
        raise AllFailed(sorted(failures, key=lambda f: f[0]))
    finally:
        # Losers are cancelled without waiting for them (awaiting here could swallow our own
        # cancellation); one that already produced a result gets it closed in the background.
        for task in pending:
            task.cancel()
            if on_lose is not None:
                task.add_done_callback(_closer(on_lose))


def _closer(on_lose: Callable[[T], Awaitable[None]]) -> Callable[[asyncio.Task[T]], None]:
    def done(task: asyncio.Task[T]) -> None:
        if not task.cancelled() and task.exception() is None:
            _background.add(fut := asyncio.ensure_future(on_lose(task.result())))
            fut.add_done_callback(_background.discard)

    return done


_background: set[asyncio.Future[None]] = set()
