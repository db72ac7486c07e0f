"""Real kubectl (client-go's SPDY and WebSocket executors) against our streaming server."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator

import pytest

from app.api.cri.streaming.server import StreamServer
from tests.cri.hostbackend import HostCommands, HostDialer
from tests.cri.kubeproxy import KubeProxy
from tests.helpers.ports import free_port

KUBECTL = shutil.which("kubectl")


@pytest.fixture
async def proxy() -> AsyncIterator[KubeProxy]:
    assert KUBECTL, "kubectl is installed by scripts/setup-system.sh"
    streams = StreamServer(HostCommands(), HostDialer())
    await streams.start()
    kp = KubeProxy(streams)
    await kp.start()
    yield kp
    await kp.stop()
    await streams.stop()


async def kubectl(kp: KubeProxy, *args: str, websockets: bool, stdin: bytes | None = None,
                  timeout: float = 30) -> tuple[int, bytes, bytes]:
    env = dict(os.environ, KUBECONFIG="/dev/null",
               KUBECTL_REMOTE_COMMAND_WEBSOCKETS="true" if websockets else "false",
               KUBECTL_PORT_FORWARD_WEBSOCKETS="true" if websockets else "false")
    proc = await asyncio.create_subprocess_exec(
        KUBECTL or "kubectl", f"--server=http://127.0.0.1:{kp.port}", *args, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode or 0, out, err


@pytest.mark.parametrize("websockets", [False, True], ids=["spdy", "websocket"])
async def test_kubectl_exec(proxy: KubeProxy, websockets: bool) -> None:
    rc, out, err = await kubectl(proxy, "exec", "mypod", "--", "sh", "-c", "echo out; echo err >&2",
                                 websockets=websockets)
    assert (rc, out, err.strip().splitlines()[-1:]) == (0, b"out\n", [b"err"]), err
    rc, out, err = await kubectl(proxy, "exec", "-i", "mypod", "--", "sh", "-c", "cat; exit 3",
                                 websockets=websockets, stdin=b"piped through kubectl\n")
    assert out == b"piped through kubectl\n"
    assert rc == 3, err  # kubectl exits with the command's code, read from the error channel
    assert set(proxy.upgrades) == {"websocket" if websockets else "spdy/3.1"}


async def test_kubectl_port_forward(proxy: KubeProxy) -> None:
    """kubectl's WebSocket port-forward tunnels SPDY to the API server, which speaks SPDY to the
    node: so SPDY is what a runtime's streaming server sees (our WebSocket variant is tested in
    test_streaming.py)."""
    websockets = False
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"echo:" + await r.read(100))
        await w.drain()
        w.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    remote = srv.sockets[0].getsockname()[1]
    local = free_port()
    env = dict(os.environ, KUBECONFIG="/dev/null",
               KUBECTL_PORT_FORWARD_WEBSOCKETS="true" if websockets else "false")
    proc = await asyncio.create_subprocess_exec(
        KUBECTL or "kubectl", f"--server=http://127.0.0.1:{proxy.port}", "port-forward", "mypod",
        f"{local}:{remote}", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"Forwarding from" in line, line
        for attempt in (b"one", b"two"):
            reply = await asyncio.to_thread(_roundtrip, local, attempt)
            assert reply == b"echo:" + attempt
        assert set(proxy.upgrades) == {"websocket" if websockets else "spdy/3.1"}
    finally:
        proc.terminate()
        await proc.wait()
        srv.close()


def _roundtrip(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(100)
