"""The listener over a real Unix socket with an in-test backend: framing, ordering, concurrency.

Behaviour (real containers) is in test_apps_*.py; here the backend is a fake so
that timing (a start that blocks, a start that emits 200 events at once) is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import VappcSettings
from app.vappc.server import VappcServer, bind_vsock
from tests.vappc.fake import FakeBackend

SPEC = {"app_id": "a1", "name": "one", "image": "busybox"}


@pytest.fixture
async def served() -> AsyncIterator[tuple[VappcServer, FakeBackend, str]]:
    tmp = tempfile.mkdtemp(prefix="vc", dir="/tmp")
    path = os.path.join(tmp, "vappc.sock")
    backend = FakeBackend()
    server = VappcServer(VappcSettings(socket=Path(path), max_line_bytes=4096), backend)
    addrs = await server.start()
    assert addrs == [f"unix://{path}"]
    yield server, backend, path
    backend.release.set()
    await server.stop(1.0)
    shutil.rmtree(tmp, ignore_errors=True)


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> Conn:
        r, w = await asyncio.open_unix_connection(path, limit=1 << 24)
        return cls(r, w)

    async def send(self, line: bytes | str) -> None:
        data = line.encode() if isinstance(line, str) else line
        self.writer.write(data if data.endswith(b"\n") else data + b"\n")
        await self.writer.drain()

    async def line(self, timeout: float = 5.0) -> dict:
        raw = await asyncio.wait_for(self.reader.readline(), timeout)
        assert raw.endswith(b"\n"), f"connection closed: {raw!r}"
        return json.loads(raw)

    async def until_terminal(self) -> list[dict]:
        out = [await self.line()]
        while out[-1]["msg"] == "Progress":
            out.append(await self.line())
        return out

    async def close(self) -> None:
        self.writer.close()


async def test_socket_mode_and_ping(served: tuple) -> None:
    _, _, path = served
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    c = await Conn.open(path)
    await c.send('{"cmd":"Ping"}')
    assert await c.line() == {"msg": "Ok", "type": "Unit"}
    await c.send('{"cmd":"Version"}')
    version = await c.line()
    assert version["type"] == "Version" and version["data"]["protocol"] == 2
    assert "request_id" in version["data"]["features"]
    await c.close()


async def test_all_progress_arrives_in_order_before_terminal(served: tuple) -> None:
    _, backend, path = served
    backend.progress_count = 500
    c = await Conn.open(path)
    await c.send(json.dumps({"cmd": "StartApp", "data": {"spec": SPEC}}))
    lines = await c.until_terminal()
    progress = [ln for ln in lines if ln["msg"] == "Progress"]
    assert len(progress) == 501  # every event, including the clamped backwards one
    assert [ln["message"] for ln in progress[:500]] == [f"step {i}" for i in range(500)]
    pcts = [ln["percentage"] for ln in progress]
    assert pcts == sorted(pcts)
    assert lines[-1] == {"msg": "Ok", "type": "AppHandle", "data": {"app_id": "a1", "name": "one"}}
    # The connection is reusable afterwards.
    await c.send('{"cmd":"AppState","data":{"app_id":"a1"}}')
    assert await c.line() == {"msg": "Ok", "type": "AppState", "data": "Running"}


async def test_errors_keep_category_and_phase(served: tuple) -> None:
    _, _, path = served
    c = await Conn.open(path)
    await c.send(json.dumps({"cmd": "StartApp", "data": {"spec": {**SPEC, "image": "fail"}}}))
    assert await c.line() == {"msg": "Error", "category": "Image", "message": "pull failed: boom",
                              "phase": "pull", "is_retryable": True}
    await c.send('{"cmd":"AppState","data":{"app_id":"a1"}}')
    assert await c.line() == {"msg": "Ok", "type": "AppState", "data": {"Failed": {"reason": "pull failed: boom"}}}
    await c.send('{"cmd":"StopApp","data":{"app_id":"nope"}}')
    err = await c.line()
    assert err["msg"] == "Error" and err["category"] == "Runtime" and "nope" in err["message"]


async def test_quick_commands_answer_while_a_start_blocks(served: tuple) -> None:
    _, backend, path = served
    starter = await Conn.open(path)
    await starter.send(json.dumps({"cmd": "StartApp", "data": {"spec": {**SPEC, "image": "slow"}}}))
    assert (await starter.line())["msg"] == "Progress"
    await asyncio.wait_for(backend.started_slow.wait(), 5)
    # Other connections.
    other = await Conn.open(path)
    for cmd in ('{"cmd":"Ping"}', '{"cmd":"ListApps"}', '{"cmd":"AppState","data":{"app_id":"a1"}}'):
        await other.send(cmd)
        assert (await other.line(timeout=1.0))["msg"] == "Ok"
    # The same connection, with request ids (protocol 2): answered at once, tagged.
    await starter.send('{"cmd":"AppState","data":{"app_id":"a1"},"id":"q1"}')
    assert await starter.line(timeout=1.0) == {"msg": "Ok", "type": "AppState", "data": "Starting", "id": "q1"}
    await starter.send('{"cmd":"StopApp","data":{"app_id":"a1"},"id":7}')
    assert await starter.line(timeout=1.0) == {"msg": "Ok", "type": "Unit", "id": 7}
    backend.release.set()
    assert (await starter.line())["type"] == "AppHandle"


async def test_requests_without_id_are_answered_in_order(served: tuple) -> None:
    _, backend, path = served
    c = await Conn.open(path)
    await c.send(json.dumps({"cmd": "StartApp", "data": {"spec": {**SPEC, "image": "slow"}}})
                 + '\n{"cmd":"Ping"}\n{"cmd":"Bogus"}')
    assert (await c.line())["msg"] == "Progress"
    with pytest.raises(TimeoutError):
        await c.line(timeout=0.3)  # old agents: no answer may overtake the start's terminal line
    backend.release.set()
    assert (await c.line())["type"] == "AppHandle"
    assert await c.line() == {"msg": "Ok", "type": "Unit"}
    assert (await c.line())["message"] == "unknown command 'Bogus'"


async def test_client_that_leaves_does_not_cancel_the_start(served: tuple) -> None:
    _, backend, path = served
    c = await Conn.open(path)
    await c.send(json.dumps({"cmd": "StartApp", "data": {"spec": {**SPEC, "image": "slow"}}}))
    await c.line()
    await c.close()
    await asyncio.sleep(0.05)
    backend.release.set()
    for _ in range(100):
        if backend.apps["a1"][1].phase == "Running":
            break
        await asyncio.sleep(0.02)
    assert backend.apps["a1"][1].phase == "Running"


async def test_group_progress_is_tagged_and_fail_fast(served: tuple) -> None:
    _, backend, path = served
    backend.progress_count = 3
    c = await Conn.open(path)
    specs = [SPEC, {**SPEC, "app_id": "b", "name": "two", "image": "fail"}, {**SPEC, "app_id": "c", "name": "3"}]
    await c.send(json.dumps({"cmd": "StartContainerGroup", "data": {"group": {"group_name": "g", "specs": specs}}}))
    lines = await c.until_terminal()
    assert {ln["instance_name"] for ln in lines[:-1]} == {"one"}
    data = lines[-1]["data"]
    assert data["handles"] == [{"app_id": "a1", "name": "one"}] and data["error"] == "pull failed: boom"
    assert data["error_detail"]["phase"] == "spec[1]:pull"
    assert "c" not in backend.apps


async def test_line_too_long_gets_error_then_close(served: tuple) -> None:
    _, _, path = served
    c = await Conn.open(path)
    await c.send(b'{"cmd":"Ping"}\n' + b"x" * 5000)
    assert await c.line() == {"msg": "Ok", "type": "Unit"}
    err = await c.line()
    assert err["msg"] == "Error" and err["category"] == "Config" and "4096" in err["message"]
    assert await asyncio.wait_for(c.reader.read(), 5) == b""


@pytest.mark.parametrize("bad", [b"\xff\xfe\xfd", b'{"cmd":"Ping"', b'{"cmd":"Ping","data":5}',
                                 b'{"cmd":"AppState","data":{"app_id":[]}}', b"null", b'"Ping"'])
async def test_malformed_lines_keep_the_connection(served: tuple, bad: bytes) -> None:
    _, _, path = served
    c = await Conn.open(path)
    await c.send(bad)
    err = await c.line()
    assert err["msg"] == "Error" and err["category"] == "Config" and err["is_retryable"] is False
    await c.send('{"cmd":"Ping"}')
    assert await c.line() == {"msg": "Ok", "type": "Unit"}


async def test_half_closed_client_still_gets_answers(served: tuple) -> None:
    _, _, path = served
    c = await Conn.open(path)
    c.writer.write(b'{"cmd":"Ping"}\n{"cmd":"ListApps"}')  # no trailing newline: EOF ends the line
    c.writer.write_eof()
    assert await c.line() == {"msg": "Ok", "type": "Unit"}
    assert (await c.line())["type"] == "AppList"


async def test_peer_credentials_are_checked(served: tuple) -> None:
    server, _, path = served
    server.allowed_uids = {12345}
    server.allowed_gids = set()
    c = await Conn.open(path)
    err = await c.line()
    assert err["msg"] == "Error" and err["category"] == "Config" and "not allowed" in err["message"]
    assert await asyncio.wait_for(c.reader.read(), 5) == b""


async def test_progress_order_under_load(served: tuple) -> None:
    """Ten clients start at once, each getting 500 buffered events: every stream complete and ordered."""
    _, backend, path = served
    backend.progress_count = 500

    async def one(i: int) -> None:
        c = await Conn.open(path)
        await c.send(json.dumps({"cmd": "StartApp", "data": {"spec": {**SPEC, "app_id": f"x{i}"}}}))
        lines = await c.until_terminal()
        assert [ln["message"] for ln in lines[:500]] == [f"step {k}" for k in range(500)]
        assert lines[-1]["data"]["app_id"] == f"x{i}"
        await c.close()

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 30)


async def test_vsock_and_unix_from_settings(tmp_path: Path) -> None:
    tmp = tempfile.mkdtemp(prefix="vc", dir="/tmp")
    server = VappcServer(VappcSettings(socket=Path(tmp) / "s", vsock_port=-1), FakeBackend())
    try:
        addrs = await server.start()
        assert addrs[0] == f"unix://{tmp}/s" and addrs[1].startswith(f"vsock:{socket.VMADDR_CID_ANY}:")
        c = await Conn.open(f"{tmp}/s")
        await c.send('{"cmd":"Ping"}')
        assert await c.line() == {"msg": "Ok", "type": "Unit"}
        await c.close()
    finally:
        await server.stop(1.0)
        shutil.rmtree(tmp, ignore_errors=True)


def test_vsock_listener_binds() -> None:
    sock = bind_vsock(-1)
    try:
        cid, port = sock.getsockname()
        assert cid == socket.VMADDR_CID_ANY and port > 0
    finally:
        sock.close()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_commands = st.sampled_from(["Ping", "StartApp", "StopApp", "AppState", "ListApps", "GetInterfaceIp",
                             "StartContainerGroup", "RunDiagnostic", "UpdateDnsRecords", "Nope", ""])
_lines = st.one_of(
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ")),
    st.builds(lambda c, d: json.dumps({"cmd": c, "data": d}).encode(), _commands, _json_values),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_lines, min_size=1, max_size=5))
async def test_fuzzed_lines_always_get_one_terminal_answer(served: tuple, lines: list[bytes]) -> None:
    _, _, path = served
    c = await Conn.open(path)
    try:
        for raw in lines:
            if not raw.strip():
                continue
            await c.send(raw)
            answers = await c.until_terminal()
            assert answers[-1]["msg"] in ("Ok", "Error")
        await c.send('{"cmd":"Ping"}')
        assert await c.line() == {"msg": "Ok", "type": "Unit"}
    finally:
        await c.close()
