"""Health checks: HTTP, HTTPS (with a CA and a client certificate), TCP and command.

``probe(check, ...)`` runs one check once, bounded by ``timeout``, and returns
``(ok, detail)``; it never raises for an unhealthy target (that is an answer,
not an error). ``wait_healthy`` polls until ok or a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache

import httpx

from app.bootstrap.schema import CommandCheck, HttpCheck, TcpCheck
from app.errors import DeadlineExceeded

Exec = Callable[[Sequence[str], float], Awaitable[tuple[int, str]]]


@lru_cache(maxsize=64)
def _ssl_context(ca: str | None, cert: str | None, key: str | None, _stamp: float) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _stamp(*paths: str | None) -> float:
    """Cache key part that changes when a certificate is renewed on disk."""
    total = 0.0
    for p in paths:
        if p:
            with contextlib.suppress(OSError):
                total += os.stat(p).st_mtime
    return total


async def _http(check: HttpCheck, timeout: float) -> tuple[bool, str]:
    verify: ssl.SSLContext | bool = True
    if check.type == "https":
        try:
            verify = _ssl_context(check.ca, check.cert, check.key, _stamp(check.ca, check.cert, check.key))
        except (OSError, ssl.SSLError) as exc:
            return False, f"TLS material: {exc}"
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout, trust_env=False) as client:
            resp = await client.get(check.url)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    body = resp.text[:500]
    if resp.status_code != check.expect_status:
        return False, f"status {resp.status_code}: {body}"
    if check.expect_body is not None and check.expect_body not in body:
        return False, f"body lacks {check.expect_body!r}: {body}"
    return True, f"status {resp.status_code}"


async def _tcp(check: TcpCheck, timeout: float) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(check.host, int(check.port)), timeout)
    except (OSError, TimeoutError) as exc:
        return False, f"connect {check.host}:{check.port}: {exc or 'timeout'}"
    writer.close()
    return True, "connected"


async def host_exec(argv: Sequence[str], timeout: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"timed out after {timeout}s"
    return proc.returncode or 0, out.decode(errors="replace")[-500:]


async def probe(check: HttpCheck | TcpCheck | CommandCheck, timeout: float,
                in_container: Exec | None = None) -> tuple[bool, str]:
    if isinstance(check, HttpCheck):
        return await _http(check, timeout)
    if isinstance(check, TcpCheck):
        return await _tcp(check, timeout)
    runner = in_container if check.in_container and in_container is not None else host_exec
    try:
        code, out = await runner(check.command, timeout)
    except OSError as exc:
        return False, f"{check.command[0]}: {exc.strerror}"
    return code == 0, f"exit {code}: {out.strip()[-200:]}"


async def wait_healthy(check: HttpCheck | TcpCheck | CommandCheck, *, timeout: float, interval: float,
                       probe_timeout: float = 5.0, in_container: Exec | None = None,
                       still_running: Callable[[], Awaitable[bool]] | None = None) -> str:
    """Poll until healthy; :class:`DeadlineExceeded` with the last answer when time runs out."""
    deadline = time.monotonic() + timeout
    detail = "not probed"
    while True:
        left = deadline - time.monotonic()
        ok, detail = await probe(check, min(probe_timeout, max(left, 0.1)), in_container)
        if ok:
            return detail
        if still_running is not None and not await still_running():
            raise DeadlineExceeded(f"exited before becoming healthy: {detail}", phase="wait")
        if time.monotonic() + interval > deadline:
            raise DeadlineExceeded(f"not healthy after {timeout}s: {detail}", phase="wait")
        await asyncio.sleep(interval)
