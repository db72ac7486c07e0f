"""Build a BootstrapService from Settings (used by app/wiring.py and the local CLI)."""

from __future__ import annotations

import socket
from typing import Any

from app.bootstrap.driver import ComponentDriver, HostProcessDriver
from app.bootstrap.instantiate import NodeContext
from app.bootstrap.plan import Policy
from app.bootstrap.service import BootstrapService
from app.config import Settings
from app.state.db import Database


def node_context(settings: Settings) -> NodeContext:
    b = settings.bootstrap
    name = (b.node_name or socket.gethostname().split(".")[0]).lower()
    return NodeContext(name, b.node_ip, settings.state_dir, str(settings.cri_socket), str(settings.dns_hosts_file))


def make_driver(settings: Settings, containers: Any = None, images: Any = None) -> ComponentDriver:
    """``host`` runs components as host processes; ``container`` (or ``auto`` with the container
    service wired) runs them as containers through the container and image services."""
    choice = settings.bootstrap.driver
    if choice == "container" or (choice == "auto" and containers is not None and images is not None):
        from app.bootstrap.container_driver import ContainerServiceDriver

        return ContainerServiceDriver(containers, images)
    return HostProcessDriver(settings.state_dir / "bootstrap" / "host")


def build_bootstrap(settings: Settings, db: Database, *, driver: ComponentDriver | None = None,
                    containers: Any = None, images: Any = None) -> BootstrapService:
    b = settings.bootstrap
    return BootstrapService(
        db=db, driver=driver or make_driver(settings, containers, images), node=node_context(settings),
        intents_dir=settings.intents_dir, profile_dirs=b.profile_dirs, interval=b.reconcile_interval_seconds,
        renew_days=b.cert_renew_days,
        policy=Policy(backoff_base=b.backoff_base_seconds, backoff_max=b.backoff_max_seconds),
    )
