"""The intent commands on the wire (golden lines), with an in-test bootstrap backend.

The backend here replays the events the real BootstrapService emits, so the exact
lines (Progress mapping, Ok/Error shapes) are pinned; the real service behind a
real daemon is test_intents_daemon.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import VappcSettings
from app.errors import InvalidArgument, NotFound
from app.vappc.server import VappcServer
from tests.vappc.fake import FakeBackend
from tests.vappc.test_server_wire import Conn

INTENT = {"name": "db", "profile": "etcd", "values": {"client_port": 2379}}
RUNNING = {"component": "db.etcd", "intent": "db", "phase": "running", "state": "running", "id": "42",
           "spec_hash": "h", "restarts": 0, "healthy": True, "last_error": None, "next_attempt_at": None,
           "started_at": 1.0}


class FakeBootstrap:
    """Answers like BootstrapService: events first, then the intent and its components."""

    def __init__(self) -> None:
        self.intents: dict[str, dict[str, Any]] = {}
        self.components: list[dict[str, Any]] = []

    async def apply_intent(self, data: Any, on_event: Callable[[dict[str, Any]], None] | None = None, *,
                           timeout: float = 300.0) -> dict[str, Any]:
        assert on_event is not None
        if data.get("profile") == "nope":
            raise NotFound("no profile 'nope'", phase="profile")  # as ProfileStore raises it
        if data.get("values", {}).get("client_port") == 99999:
            raise InvalidArgument("variable 'client_port': must be between 1 and 65535", phase="variables")
        stored = {**data, "source": "api", "generation": 1, "enabled": True, "roles": []}
        self.intents[data["name"]] = stored
        events: list[dict[str, Any]] = [
            {"event": "intent", "name": data["name"], "generation": 1},
            {"event": "pki_created", "name": "etcd-ca"},
            {"event": "action", "action": "start", "component": "db.etcd", "reason": "not created"},
            {"event": "task", "component": "db.etcd", "task": "render"},
            {"event": "task", "component": "db.etcd", "task": "container"},
            {"event": "task", "component": "db.etcd", "task": "wait"},
        ]
        comp = dict(RUNNING)
        if data.get("values", {}).get("broken"):
            events.append({"event": "failed", "component": "db.etcd", "message": "health: refused", "restarts": 1})
            comp.update(phase="backoff", healthy=False, last_error="health: refused")
        else:
            events.append({"event": "started", "component": "db.etcd", "reason": "not created", "restarts": 0})
        for ev in events:
            on_event({"seq": 1, "time": 0.0, **ev})
        self.components = [comp]
        return {"intent": stored, "components": [comp], "error": None}

    def delete_intent(self, name: str) -> None:
        if self.intents.pop(name, None) is None:
            raise NotFound(f"no intent {name!r}", phase="intent")
        self.components = []

    def list_intents(self) -> list[dict[str, Any]]:
        return list(self.intents.values())

    async def status(self) -> dict[str, Any]:
        return {"components": self.components}


@pytest.fixture
async def served_with(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, FakeBootstrap | None]]:
    bootstrap = FakeBootstrap() if getattr(request, "param", True) else None
    tmp = tempfile.mkdtemp(prefix="vci", dir="/tmp")
    path = os.path.join(tmp, "s")
    server = VappcServer(VappcSettings(socket=Path(path)), FakeBackend(), bootstrap=bootstrap)
    await server.start()
    yield path, bootstrap
    await server.stop(1.0)
    shutil.rmtree(tmp, ignore_errors=True)


async def test_apply_intent_golden_lines(served_with: tuple) -> None:
    path, _ = served_with
    c = await Conn.open(path)
    await c.send(json.dumps({"cmd": "ApplyIntent", "data": {"intent": INTENT}}))
    lines = await c.until_terminal()
    assert lines[:-1] == [
        {"msg": "Progress", "percentage": 0, "message": "intent db stored (generation 1)", "phase": "intent"},
        {"msg": "Progress", "percentage": 0, "message": "etcd-ca created", "phase": "pki", "task_name": "etcd-ca"},
        {"msg": "Progress", "percentage": 5, "message": "start: not created", "phase": "start",
         "instance_name": "db.etcd"},
        {"msg": "Progress", "percentage": 20, "message": "task render", "phase": "render", "instance_name": "db.etcd"},
        {"msg": "Progress", "percentage": 40, "message": "task container", "phase": "container",
         "instance_name": "db.etcd"},
        {"msg": "Progress", "percentage": 70, "message": "task wait", "phase": "wait", "instance_name": "db.etcd"},
        {"msg": "Progress", "percentage": 100, "message": "running", "phase": "container",
         "instance_name": "db.etcd"},
    ]
    stored = {**INTENT, "source": "api", "generation": 1, "enabled": True, "roles": []}
    assert lines[-1] == {"msg": "Ok", "type": "Intent", "data": {"intent": stored, "components": [RUNNING]}}

    await c.send('{"cmd":"ListIntents"}')
    assert await c.line() == {"msg": "Ok", "type": "IntentList",
                              "data": {"intents": [stored], "components": [RUNNING]}}
    await c.send('{"cmd":"DeleteIntent","data":{"name":"db"}}')
    assert await c.line() == {"msg": "Ok", "type": "Unit"}
    # Unknown name: as the REST route (404), an error, not retryable, category Config.
    await c.send('{"cmd":"DeleteIntent","data":{"name":"db"}}')
    assert await c.line() == {"msg": "Error", "category": "Config", "message": "no intent 'db'",
                              "phase": "intent", "is_retryable": False}
    await c.close()


async def test_apply_intent_errors(served_with: tuple) -> None:
    path, _ = served_with
    c = await Conn.open(path)
    # A component that does not converge: Bootstrap, phase = the component, after its progress.
    await c.send('{"cmd":"ApplyIntent","id":7,"data":{"intent":{"name":"db","profile":"etcd",'
                 '"values":{"broken":true}}}}')
    lines = await c.until_terminal()
    assert lines[-2] == {"msg": "Progress", "percentage": 70, "message": "failed: health: refused",
                         "phase": "start", "instance_name": "db.etcd", "id": 7}  # clamped: never backwards
    assert lines[-1] == {"msg": "Error", "category": "Bootstrap", "message": "db.etcd: backoff: health: refused",
                         "phase": "db.etcd", "is_retryable": False, "id": 7}
    # Bad values and unknown profiles are Config errors naming the variable/profile (not retryable).
    await c.send('{"cmd":"ApplyIntent","data":{"intent":{"name":"x","profile":"etcd","values":{"client_port":99999}}}}')
    assert await c.line() == {"msg": "Error", "category": "Config", "phase": "variables", "is_retryable": False,
                              "message": "variable 'client_port': must be between 1 and 65535"}
    await c.send('{"cmd":"ApplyIntent","data":{"intent":{"name":"x","profile":"nope"}}}')
    assert await c.line() == {"msg": "Error", "category": "Config", "message": "no profile 'nope'",
                              "phase": "profile", "is_retryable": False}
    # Payload shape is checked by the protocol, naming the field.
    await c.send('{"cmd":"ApplyIntent","data":{"intent":{},"colour":1}}')
    err = await c.line()
    assert err["category"] == "Config" and "data.colour: unknown field" in err["message"]
    await c.send('{"cmd":"ApplyIntent","data":{"intent":{},"timeout_secs":0}}')
    err = await c.line()
    assert err["category"] == "Config" and "data.timeout_secs" in err["message"]
    await c.send('{"cmd":"DeleteIntent","data":{}}')
    err = await c.line()
    assert err["category"] == "Config" and "data.name" in err["message"]
    await c.send('{"cmd":"Version"}')
    assert "intents" in (await c.line())["data"]["features"]
    await c.close()


@pytest.mark.parametrize("served_with", [False], indirect=True)
async def test_intents_without_bootstrap(served_with: tuple) -> None:
    path, _ = served_with
    c = await Conn.open(path)
    for line in ('{"cmd":"ListIntents"}', '{"cmd":"DeleteIntent","data":{"name":"a"}}',
                 '{"cmd":"ApplyIntent","data":{"intent":{"name":"a","profile":"etcd"}}}'):
        await c.send(line)
        assert await c.line() == {"msg": "Error", "category": "Config", "message": "bootstrap is disabled on this node",
                                  "phase": "intent", "is_retryable": False}
    await c.send('{"cmd":"Ping"}')  # the connection stays usable
    assert await c.line() == {"msg": "Ok", "type": "Unit"}
    await c.close()
