"""CRI Attach with stdin, driven through the real gRPC API and both streaming protocols.

critest's attach check: a container running ``cat`` (stdin, no tty) gets "hello" written
over attach and must echo it on stdout.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as pb
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from tests.cri.streamclients import SpdyClient
from tests.cri.test_containers import stack  # noqa: F401 (fixture)
from tests.cri.test_grpc import pod_config

V5 = Subprotocol("v5.channel.k8s.io")


async def _cat_container(rt: Any, im: Any, ref: str, tmp: Any, name: str, *, stdin: bool = True, tty: bool = False,
                         command: tuple[str, ...] = ("cat",)) -> str:
    await im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)))
    config = pod_config(name, log_directory=str(tmp / f"{name}-logs"))
    pod_id = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config))).pod_sandbox_id
    cfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="cat"), image=pb.ImageSpec(image=ref),
                             command=list(command), stdin=stdin, stdin_once=stdin, tty=tty, log_path="cat.log")
    cid = (await rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=cfg))).container_id
    await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
    return cid


async def _exited_with(rt: Any, cid: str, code: int) -> None:
    for _ in range(100):
        st = (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status
        if st.state == pb.CONTAINER_EXITED:
            assert st.exit_code == code
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"container {cid} still {st.state} after its stdin closed")


async def test_attach_stdin_echo_over_websocket(stack: Any, test_images: Any) -> None:  # noqa: F811
    rt, im, _node, tmp = stack
    cid = await _cat_container(rt, im, test_images.busybox.ref, tmp, "attws")
    url = (await rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True))).url
    got: dict[int, bytes] = {}
    async with ws_connect("ws://" + url.removeprefix("http://"), subprotocols=[V5]) as ws:
        await ws.send(b"\x00hello\n")
        async with asyncio.timeout(20):
            while got.get(1, b"") != b"hello\n":
                msg = await ws.recv()
                assert isinstance(msg, bytes)
                got[msg[0]] = got.get(msg[0], b"") + msg[1:]
            await ws.send(b"\xff\x00")  # v5: close stdin → stdin_once closes cat's stdin, cat exits
            async for msg in ws:
                assert isinstance(msg, bytes)
                got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    assert got[1] == b"hello\n" and got.get(2, b"") == b""
    assert json.loads(got[3])["status"] == "Success"
    await _exited_with(rt, cid, 0)


@pytest.mark.parametrize(("command", "line"), [(("cat",), b"hello\n"), (("/bin/sh",), b"echo hello\n")],
                         ids=["cat", "sh"])  # sh: critest's createShellContainer + "echo hello"
async def test_attach_stdin_echo_over_spdy(stack: Any, test_images: Any,  # noqa: F811
                                           command: tuple[str, ...], line: bytes) -> None:
    rt, im, _node, tmp = stack
    cid = await _cat_container(rt, im, test_images.busybox.ref, tmp, f"attspdy{command[-1][-2:]}", command=command)
    url = (await rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True))).url
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    err = client.open({"streamtype": "error"})
    sin = client.open({"streamtype": "stdin"})
    sout = client.open({"streamtype": "stdout"})
    client.open({"streamtype": "stderr"})
    client.send(sin, line)
    async with asyncio.timeout(20):
        while bytes(client.data[sout]) != b"hello\n":
            await asyncio.sleep(0.05)
    client.send(sin, b"", fin=True)  # EOF on stdin: cat exits, the attach session ends
    assert await client.wait_fin(sout, 20) == b"hello\n"
    assert json.loads(await client.wait_fin(err, 20)) == {"metadata": {}, "status": "Success"}
    await client.close()
    await _exited_with(rt, cid, 0)


async def _ws_session(url: str, *sends: bytes, until: bytes) -> dict[int, bytes]:
    """Send ``sends`` once stdout shows nothing yet; send the rest after stdout contains ``until``."""
    got: dict[int, bytes] = {}
    async with ws_connect("ws://" + url.removeprefix("http://"), subprotocols=[V5]) as ws:
        await ws.send(sends[0])
        async with asyncio.timeout(20):
            while until not in got.get(1, b""):
                msg = await ws.recv()
                assert isinstance(msg, bytes)
                got[msg[0]] = got.get(msg[0], b"") + msg[1:]
            for data in sends[1:]:
                await ws.send(data)
            async for msg in ws:
                assert isinstance(msg, bytes)
                got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    return got


async def test_attach_stdin_with_tty(stack: Any, test_images: Any) -> None:  # noqa: F811
    """A terminal container: input reaches the pty master, output (with the pty's echo) is stdout."""
    rt, im, _node, tmp = stack
    cid = await _cat_container(rt, im, test_images.busybox.ref, tmp, "atttty", tty=True)
    url = (await rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, tty=True))).url
    got = await _ws_session(url, b'\x04{"Width":100,"Height":30}', b"\x00hello\n", b"\xff\x00", until=b"")
    assert b"hello" in got[1] and 2 not in got
    assert json.loads(got[3])["status"] == "Success"
    await _exited_with(rt, cid, 0)  # the EOF (^D) from stdin_once ended cat


async def test_attach_stdin_to_container_without_stdin_is_dropped(stack: Any, test_images: Any) -> None:  # noqa: F811
    """As containerd: input for a container created without stdin goes nowhere, output still flows."""
    rt, im, _node, tmp = stack
    cid = await _cat_container(rt, im, test_images.busybox.ref, tmp, "attnostdin", stdin=False,
                               command=("sh", "-c", "until [ -e /tmp/go ]; do sleep 0.05; done; echo done"))
    url = (await rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True))).url
    async with ws_connect("ws://" + url.removeprefix("http://"), subprotocols=[V5]) as ws:
        await ws.send(b"\x00ignored\n")
        await asyncio.sleep(0.3)
        await rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["touch", "/tmp/go"], timeout=10))
        got: dict[int, bytes] = {}
        async with asyncio.timeout(20):
            async for msg in ws:
                assert isinstance(msg, bytes)
                got[msg[0]] = got.get(msg[0], b"") + msg[1:]
    assert got[1] == b"done\n" and json.loads(got[3])["status"] == "Success"
    await _exited_with(rt, cid, 0)


def _following() -> int:
    """Attach sessions alive in this process (the CRI server runs in the test's loop): each one
    runs a resize drain task for as long as it follows the log."""
    return sum(1 for t in asyncio.all_tasks() if "_drain_resize" in repr(t.get_coro()))


@pytest.mark.parametrize("proto", ["websocket", "spdy"])
async def test_attach_session_ends_when_the_client_leaves(stack: Any, test_images: Any,  # noqa: F811
                                                          proto: str) -> None:
    """A client that disconnects ends its session; the container keeps running."""
    rt, im, _node, tmp = stack
    cid = await _cat_container(rt, im, test_images.busybox.ref, tmp, f"attleave{proto}", stdin=False,
                               command=("sleep", "1000"))
    before = _following()
    url = (await rt.Attach(pb.AttachRequest(container_id=cid, stdout=True, stderr=True))).url
    if proto == "websocket":
        ws = await ws_connect("ws://" + url.removeprefix("http://"), subprotocols=[V5])
        await asyncio.sleep(0.5)
        assert _following() == before + 1
        await ws.close()
    else:
        client = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
        for kind in ("error", "stdout", "stderr"):
            client.open({"streamtype": kind})
        await asyncio.sleep(0.5)
        assert _following() == before + 1
        await client.close()
    async with asyncio.timeout(5):
        while _following() > before:
            await asyncio.sleep(0.05)
    st = (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status
    assert st.state == pb.CONTAINER_RUNNING
