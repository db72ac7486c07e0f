"""Health checks against real sockets and processes: TCP, HTTP status/body, command, deadlines."""

from __future__ import annotations

import asyncio

import pytest

from app.bootstrap.health import probe, wait_healthy
from app.bootstrap.schema import CommandCheck, HttpCheck, TcpCheck
from app.errors import DeadlineExceeded
from tests.helpers.ports import free_port


async def _http_server(status: int, body: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_tcp_check() -> None:
    server, port = await _http_server(200, b"ok")
    async with server:
        assert (await probe(TcpCheck(type="tcp", port=port), 1.0))[0]
    ok, detail = await probe(TcpCheck(type="tcp", port=free_port()), 1.0)
    assert not ok and "connect 127.0.0.1" in detail


async def test_http_status_and_body() -> None:
    server, port = await _http_server(503, b"starting")
    async with server:
        ok, detail = await probe(HttpCheck(type="http", url=f"http://127.0.0.1:{port}/"), 1.0)
        assert not ok and detail.startswith("status 503")
        ok, _ = await probe(HttpCheck(type="http", url=f"http://127.0.0.1:{port}/", expect_status=503), 1.0)
        assert ok
    server, port = await _http_server(200, b'{"health":"false"}')
    async with server:
        ok, detail = await probe(HttpCheck(type="http", url=f"http://127.0.0.1:{port}/",
                                           expect_body='"health":"true"'), 1.0)
        assert not ok and "body lacks" in detail
    ok, detail = await probe(HttpCheck(type="https", url="https://127.0.0.1:1/", ca="/nonexistent/ca.crt"), 1.0)
    assert not ok and "TLS material" in detail


async def test_command_check_and_deadlines() -> None:
    assert (await probe(CommandCheck(type="command", command=["true"]), 1.0))[0]
    ok, detail = await probe(CommandCheck(type="command", command=["sh", "-c", "echo nope; exit 4"]), 1.0)
    assert not ok and detail.startswith("exit 4") and "nope" in detail
    ok, detail = await probe(CommandCheck(type="command", command=["sleep", "5"]), 0.2)
    assert not ok and "timed out" in detail
    ok, detail = await probe(CommandCheck(type="command", command=["/no/such/binary"]), 1.0)
    assert not ok
    with pytest.raises(DeadlineExceeded, match=r"not healthy after 0\.3s"):
        await wait_healthy(TcpCheck(type="tcp", port=free_port()), timeout=0.3, interval=0.05)

    async def gone() -> bool:
        return False

    with pytest.raises(DeadlineExceeded, match="exited before becoming healthy"):
        await wait_healthy(TcpCheck(type="tcp", port=free_port()), timeout=5, interval=0.05, still_running=gone)
