"""Fixtures for the network tests: unique bridges, subnets, nft tables and netns names per test.

Several test runs share this machine, so every name carries a random suffix and the
subnet is chosen among 10.{128..254}.x.0/24 ranges no route of the node overlaps.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.config import NetworkSettings
from app.runtime.network import netns
from app.runtime.network.manager import NetworkManager
from app.runtime.network.netlink import PyrouteNetlink
from app.runtime.network.nft import Nft
from app.runtime.network.store import NetworkStore
from app.state.db import open_database


def free_subnet() -> str:
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    taken = []
    for line in routes.splitlines():
        dst = line.split()[0] if line.split() else ""
        if dst.startswith("local") or dst.startswith("broadcast"):
            dst = line.split()[1]
        try:
            taken.append(ipaddress.ip_network(dst, strict=False))
        except ValueError:
            continue
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(128, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net)
    raise RuntimeError("no free /24 left in 10.128.0.0/9")


@dataclass
class BridgeEnv:
    tmp: Path
    settings: NetworkSettings
    db_url: str
    namespaces: list[str] = field(default_factory=list)

    def manager(self) -> NetworkManager:
        """A new manager on the same database: what a daemon restart gets."""
        return NetworkManager(self.settings, NetworkStore(open_database(self.db_url)), self.tmp / "run",
                              PyrouteNetlink(), Nft(self.settings.nft_table), rootless=False)

    def netns(self) -> str:
        name = f"vtn{secrets.token_hex(5)}"
        self.namespaces.append(name)
        return netns.create_named(name)

    def drop_netns(self, path: str) -> None:
        netns.remove_named(os.path.basename(path))


@pytest.fixture
def bridge_env(tmp_path: Path) -> Iterator[BridgeEnv]:
    if os.geteuid() != 0:
        raise RuntimeError("the bridge tests need root (the suite runs as root)")
    suffix = secrets.token_hex(4)
    settings = NetworkSettings(bridge=f"vtb{suffix}", subnet=free_subnet(), nft_table=f"vtest_{suffix}",
                               extra_hosts={"docker-proxy.internal": "192.0.2.250"})
    env = BridgeEnv(tmp_path, settings, f"sqlite:///{tmp_path}/vapp.db")
    try:
        yield env
    finally:
        for name in env.namespaces:
            netns.remove_named(name)
        subprocess.run(["nft", "delete", "table", "inet", settings.nft_table], capture_output=True)
        subprocess.run(["ip", "link", "del", settings.bridge], capture_output=True)
