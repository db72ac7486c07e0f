"""Fixtures of the CRI tests: a database, a bridge CNI network of our own, a pod service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.runtime.network.cni import CniClient
from app.services.pods import PodService
from app.state.db import Database, open_database
from tests.cri.netutil import delete_link, random_subnet, unique_suffix, write_bridge_conflist

CNI_BIN = [Path("/usr/lib/cni")]


@dataclass
class CniNet:
    conf_dir: Path
    cache_dir: Path
    bridge: str
    subnet: str

    def client(self) -> CniClient:
        return CniClient(self.conf_dir, CNI_BIN, self.cache_dir)


@pytest.fixture
def cni_net(tmp_path: Path) -> Iterator[CniNet]:
    bridge = f"vtb{unique_suffix()}"[:15]
    subnet = random_subnet()
    write_bridge_conflist(tmp_path / "cni-conf", tmp_path / "ipam", bridge=bridge, subnet=subnet)
    yield CniNet(tmp_path / "cni-conf", tmp_path / "cni-cache", bridge, subnet)
    delete_link(bridge)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(f"sqlite:///{tmp_path}/vapp.db")
    yield database
    database.close()


@pytest.fixture
async def pods(tmp_path: Path, db: Database, cni_net: CniNet) -> AsyncIterator[PodService]:
    svc = PodService(db, tmp_path / "state", Path(f"/tmp/vt-run-{unique_suffix()}"), cni_net.client())
    yield svc
    for pod in list(svc.list()):
        await svc.remove(pod.id)
