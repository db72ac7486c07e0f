"""The streaming server, driven over SPDY/3.1 and WebSocket against real host processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from app.api.cri.streaming import spdy
from app.api.cri.streaming.portforward import PortForwardRequest
from app.api.cri.streaming.remotecommand import CommandRequest, ResizeDecoder, status_json
from app.api.cri.streaming.server import StreamServer
from app.api.cri.streaming.tokens import TokenCache
from tests.cri.hostbackend import HostCommands, HostDialer
from tests.cri.streamclients import SpdyClient


@pytest.fixture
async def server() -> AsyncIterator[StreamServer]:
    srv = StreamServer(HostCommands(), HostDialer(), token_ttl=5)
    await srv.start()
    yield srv
    await srv.stop()


def ws_url(url: str) -> str:
    return "ws://" + url.removeprefix("http://")


# -- pure parts -----------------------------------------------------------------------
def test_spdy_dictionary_is_the_spec_one() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options") and spdy.DICTIONARY.endswith(b",enq=0.")


def test_spdy_frames_roundtrip_across_split_feeds() -> None:
    tx, rx = spdy.HeaderCodec(), spdy.HeaderCodec()
    wire = (spdy.encode_syn_stream(tx, 1, {"streamtype": ["stdin"], "x": ["a", "b"]}, fin=False)
            + spdy.encode_data(1, b"hello", fin=True) + spdy.encode_ping(7) + spdy.encode_rst_stream(3, 5)
            + spdy.encode_syn_stream(tx, 3, {"streamtype": ["error"]}))
    reader = spdy.FrameReader(rx)
    frames = [f for i in range(len(wire)) for f in reader.feed(wire[i:i + 1])]
    assert [f.kind for f in frames] == [spdy.SYN_STREAM, 0, spdy.PING, spdy.RST_STREAM, spdy.SYN_STREAM]
    assert frames[0].headers == {"streamtype": ["stdin"], "x": ["a", "b"]}
    assert frames[1].data == b"hello" and frames[1].fin
    assert frames[2].status == 7 and frames[3].status == 5
    assert frames[4].header("streamtype") == "error"  # the shared zlib context carries over


def test_spdy_rejects_bad_version() -> None:
    bad = b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
    with pytest.raises(spdy.SpdyError):
        spdy.FrameReader(spdy.HeaderCodec()).feed(bad)


def test_status_json_shapes() -> None:
    assert json.loads(status_json(0)) == {"metadata": {}, "status": "Success"}
    fail = json.loads(status_json(3))
    assert fail["reason"] == "NonZeroExitCode"
    assert fail["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_resize_decoder_handles_split_objects() -> None:
    dec = ResizeDecoder()
    assert dec.feed(b'{"Width":80,"Hei') == []
    assert dec.feed(b'ght":24}{"Width":100,"Height":40}') == [(80, 24), (100, 40)]


def test_tokens_single_use_and_expiry() -> None:
    now = [0.0]
    cache: TokenCache[str] = TokenCache(ttl=10, max_entries=2, clock=lambda: now[0])
    a = cache.put("a")
    assert cache.take(a) == "a" and cache.take(a) is None
    b = cache.put("b")
    now[0] = 11
    assert cache.take(b) is None
    c, d, e = cache.put("c"), cache.put("d"), cache.put("e")
    assert cache.take(c) is None and cache.take(d) == "d" and cache.take(e) == "e"


# -- SPDY exec ---------------------------------------------------------------------------
async def test_spdy_exec_stdin_stdout_stderr_and_exit_code(server: StreamServer) -> None:
    url = server.url_for(CommandRequest("exec", "c1", ("sh", "-c", "cat; echo oops >&2; exit 3"),
                                        stdin=True))
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io", "v3.channel.k8s.io"])
    assert client.protocol == "v4.channel.k8s.io"
    err = client.open({"streamtype": "error"})
    sin = client.open({"streamtype": "stdin"})
    out = client.open({"streamtype": "stdout"})
    serr = client.open({"streamtype": "stderr"})
    client.send(sin, b"hello over spdy\n", fin=True)
    assert await client.wait_fin(out) == b"hello over spdy\n"
    assert await client.wait_fin(serr) == b"oops\n"
    status = json.loads(await client.wait_fin(err))
    assert status["status"] == "Failure" and status["details"]["causes"][0]["message"] == "3"
    assert {err, sin, out, serr} <= client.replied
    await client.close()


async def test_spdy_exec_tty_resize(server: StreamServer) -> None:
    backend = server.commands
    assert isinstance(backend, HostCommands)
    url = server.url_for(CommandRequest("exec", "c1", ("sh", "-c", "read x; stty size"), tty=True,
                                        stdin=True, stderr=False))
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    err = client.open({"streamtype": "error"})
    sin = client.open({"streamtype": "stdin"})
    out = client.open({"streamtype": "stdout"})
    rsz = client.open({"streamtype": "resize"})
    client.send(rsz, json.dumps({"Width": 123, "Height": 45}).encode())
    for _ in range(100):
        if backend.resizes:
            break
        await asyncio.sleep(0.02)
    client.send(sin, b"go\n")
    output = await client.wait_fin(out)
    assert b"45 123" in output
    assert json.loads(await client.wait_fin(err)) == {"metadata": {}, "status": "Success"}
    await client.close()


async def test_spdy_backend_error_is_a_status(server: StreamServer) -> None:
    url = server.url_for(CommandRequest("exec", "missing", ("true",)))
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    err = client.open({"streamtype": "error"})
    client.open({"streamtype": "stdout"})
    client.open({"streamtype": "stderr"})
    status = json.loads(await client.wait_fin(err))
    assert status["status"] == "Failure" and "not found" in status["message"]
    await client.close()


async def test_token_is_single_use_and_verb_bound(server: StreamServer) -> None:
    url = server.url_for(CommandRequest("exec", "c1", ("true",)))
    with pytest.raises(ConnectionRefusedError, match="404"):
        await SpdyClient.connect(url.replace("/exec/", "/attach/"), ["v4.channel.k8s.io"])
    with pytest.raises(ConnectionRefusedError, match="404"):  # the wrong-verb attempt consumed it
        await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    url = server.url_for(CommandRequest("exec", "c1", ("true",)))
    with pytest.raises(ConnectionRefusedError, match="403"):
        await SpdyClient.connect(url, ["v9.channel.k8s.io"])


async def test_plain_http_is_refused(server: StreamServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /exec/abc HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.read(100)).startswith(b"HTTP/1.1 400")
    writer.close()


# -- WebSocket exec / attach ---------------------------------------------------------------
async def collect(ws: websockets.ClientConnection) -> dict[int, bytes]:
    got: dict[int, bytes] = {}
    try:
        async for msg in ws:
            assert isinstance(msg, bytes)
            got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    except websockets.ConnectionClosed:
        pass
    return got


async def test_websocket_v5_exec_with_stdin_close(server: StreamServer) -> None:
    url = server.url_for(CommandRequest("exec", "c1", ("sh", "-c", "cat; echo e >&2; exit 7"), stdin=True))
    protocols = [Subprotocol("v5.channel.k8s.io"), Subprotocol("v4.channel.k8s.io")]
    async with ws_connect(ws_url(url), subprotocols=protocols) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        await ws.send(b"\x00from ws")
        await ws.send(b"\xff\x00")  # v5: close stdin
        got = await asyncio.wait_for(collect(ws), 10)
    assert got[1] == b"from ws" and got[2] == b"e\n"
    status = json.loads(got[3])
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"][0]["message"] == "7"


async def test_websocket_v4_attach_tty(server: StreamServer) -> None:
    url = server.url_for(CommandRequest("attach", "c1", tty=True, stdin=True, stderr=False))
    async with ws_connect(ws_url(url), subprotocols=[Subprotocol("v4.channel.k8s.io")]) as ws:
        await ws.send(b'\x04{"Width":90,"Height":30}')
        await ws.send(b"\x00typed\n\x04")  # ^D ends cat on the tty
        got = await asyncio.wait_for(collect(ws), 10)
    assert b"typed" in got[1]
    assert json.loads(got[3])["status"] == "Success"


async def test_websocket_unknown_protocol_refused(server: StreamServer) -> None:
    url = server.url_for(CommandRequest("exec", "c1", ("true",)))
    with pytest.raises(websockets.InvalidStatus):
        async with ws_connect(ws_url(url), subprotocols=[Subprotocol("v9.channel.k8s.io")]):
            pass


# -- port-forward ----------------------------------------------------------------------------
@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(b"echo:" + data)
            await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()


async def test_spdy_portforward_two_connections(server: StreamServer, echo_port: int) -> None:
    url = server.url_for(PortForwardRequest("pod1", (echo_port,)))
    client = await SpdyClient.connect(url, ["portforward.k8s.io"])
    for rid in ("0", "1"):
        err = client.open({"streamtype": "error", "port": str(echo_port), "requestid": rid}, fin=True)
        data = client.open({"streamtype": "data", "port": str(echo_port), "requestid": rid})
        client.send(data, f"req{rid}".encode(), fin=True)
        assert await client.wait_fin(data) == f"echo:req{rid}".encode()
        assert await client.wait_fin(err) == b""
    # a port that was not requested reports on the error stream
    err = client.open({"streamtype": "error", "port": "1", "requestid": "9"}, fin=True)
    client.open({"streamtype": "data", "port": "1", "requestid": "9"})
    assert b"not requested" in await client.wait_fin(err)
    await client.close()


async def test_websocket_portforward(server: StreamServer, echo_port: int) -> None:
    url = server.url_for(PortForwardRequest("pod1", ()))
    async with ws_connect(ws_url(url) + f"?port={echo_port}", subprotocols=[Subprotocol("portforward.k8s.io")]) as ws:
        first = [await ws.recv(), await ws.recv()]
        port_bytes = echo_port.to_bytes(2, "little")
        assert first == [b"\x00" + port_bytes, b"\x01" + port_bytes]
        await ws.send(b"\x00hello")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00echo:hello"


async def test_portforward_dial_failure(server: StreamServer) -> None:
    url = server.url_for(PortForwardRequest("missing", ()))
    client = await SpdyClient.connect(url, ["portforward.k8s.io"])
    err = client.open({"streamtype": "error", "port": "80", "requestid": "0"}, fin=True)
    client.open({"streamtype": "data", "port": "80", "requestid": "0"})
    assert b"pod missing not found" in await client.wait_fin(err)
    await client.close()
