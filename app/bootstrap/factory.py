"""Build a BootstrapService from Settings (used by app/wiring.py and the local CLI)."""

from __future__ import annotations

import socket
from typing import Any

from app.bootstrap.driver import ComponentDriver, HostProcessDriver, RoutingDriver
from app.bootstrap.instantiate import NodeContext
from app.bootstrap.plan import Policy
from app.bootstrap.service import BootstrapService
from app.config import Settings
from app.services.app_engines import NoEngine
from app.state.db import Database


def node_context(settings: Settings) -> NodeContext:
    b = settings.bootstrap
    name = (b.node_name or socket.gethostname().split(".")[0]).lower()
    return NodeContext(name, b.node_ip, settings.state_dir, str(settings.cri_socket), str(settings.dns_hosts_file))


def make_driver(settings: Settings, puller: Any = None, runner: Any = None) -> ComponentDriver:
    """``host`` runs components as host processes; ``container`` (or ``auto`` when the engines are
    wired) runs them as containers through the app service's engine adapters
    (``ImagePullAdapter``/``ContainerAdapter`` from ``app.services.app_engines``)."""
    choice = settings.bootstrap.driver
    engines = puller is not None and runner is not None and not isinstance(runner, NoEngine)
    if choice == "container" or (choice == "auto" and engines):
        from app.bootstrap.container_driver import ContainerServiceDriver

        containers = ContainerServiceDriver(puller, runner, settings.state_dir / "bootstrap" / "containers",
                                            stop_grace=settings.runtime.stop_grace_seconds)
        return RoutingDriver(containers, HostProcessDriver(settings.state_dir / "bootstrap" / "host"))
    return HostProcessDriver(settings.state_dir / "bootstrap" / "host")


def build_bootstrap(settings: Settings, db: Database, *, driver: ComponentDriver | None = None,
                    puller: Any = None, runner: Any = None) -> BootstrapService:
    b = settings.bootstrap
    return BootstrapService(
        db=db, driver=driver or make_driver(settings, puller, runner), node=node_context(settings),
        intents_dir=settings.intents_dir, profile_dirs=b.profile_dirs, interval=b.reconcile_interval_seconds,
        renew_days=b.cert_renew_days,
        policy=Policy(backoff_base=b.backoff_base_seconds, backoff_max=b.backoff_max_seconds),
    )
