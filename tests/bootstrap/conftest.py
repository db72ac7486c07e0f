"""Fixtures for bootstrap tests: a BootstrapService on a temp state dir with the host driver.

Every component a test starts is removed at teardown (by the driver, by pid:
nothing is killed by name), so no etcd outlives its test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.bootstrap.driver import HostProcessDriver
from app.bootstrap.instantiate import NodeContext
from app.bootstrap.plan import Policy
from app.bootstrap.service import BootstrapService
from app.state.db import open_database
from tests.helpers.ports import free_port


def make_service(state: Path, *, profile_dirs: tuple[Path, ...] = (), interval: float = 0.2) -> BootstrapService:
    db = open_database(f"sqlite:///{state}/vapp.db")
    node = NodeContext("node1", "127.0.0.1", state, str(state / "run" / "cri.sock"), str(state / "dns" / "hosts"))
    return BootstrapService(db=db, driver=HostProcessDriver(state / "bootstrap" / "host"), node=node,
                            intents_dir=state / "intents", profile_dirs=profile_dirs, interval=interval,
                            policy=Policy(backoff_base=0.2, backoff_max=2.0, backoff_reset=600.0))


def etcd_intent(name: str = "etcd") -> dict[str, Any]:
    return {"name": name, "profile": "etcd", "values": {"client_port": free_port(), "peer_port": free_port()}}


@pytest.fixture
async def svc_factory(tmp_path: Path) -> AsyncIterator[Callable[..., BootstrapService]]:
    made: list[BootstrapService] = []

    def factory(state: Path | None = None, **kw: Any) -> BootstrapService:
        s = make_service(state or tmp_path / "state", **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        for key in await s.driver.keys():
            await s.driver.remove(key)
        s.store.db.close()


async def wait_for(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
