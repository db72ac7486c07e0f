"""Types of the container service: requests, views, events, and the network seam."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.runtime.oci.spec import ContainerSpec


class ContainerStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CreateRequest:
    """A container to create.

    ``rootfs``: a prepared root filesystem (e.g. an overlay mount of the image), or
    ``bundle``: an existing OCI bundle whose ``config.json`` is used as is (then ``spec``
    only contributes id/name/log/network bookkeeping).
    ``spec.network``: ``host`` | ``none`` | ``new`` | ``/path/to/netns`` | ``container:<id>`` |
    anything else the network hook understands (``pod``, ``bridge``…: a new netns it sets up).
    """

    spec: ContainerSpec
    rootfs: str | None = None
    bundle: str | None = None
    image_config: dict[str, Any] | None = None
    image: str = ""
    runtime: str | None = None  # native | crun | runc; default from settings
    # A snapshotter overlay mount description ({"type", "source", "options"}) the native init
    # mounts on ``rootfs`` inside the container's namespaces (rootless overlay); ``rootfs`` is
    # then the (empty) mount point. Native runtime only.
    rootfs_overlay: dict[str, Any] | None = None
    log_path: str | None = None
    ports: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: ContainerStatus
    runtime: str
    image: str
    bundle: str
    rootfs: str
    log_path: str
    pid: int | None
    exit_code: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    network: str
    stop_signal: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    network_info: dict[str, Any] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.status == ContainerStatus.RUNNING


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False

    @property
    def output(self) -> str:
        return (self.stdout + self.stderr).decode(errors="replace")


@dataclass(frozen=True)
class ContainerEvent:
    type: str  # created | started | exited | deleted
    container_id: str
    at: float
    exit_code: int | None = None


class HostNetwork:
    """Default hook: ``host`` shares the host's stack, ``none``/``new`` keep a lone loopback."""

    async def setup(self, container_id: str, mode: str, ports: Sequence[Any] = (),
                    target: int | str | None = None, *, hostname: str | None = None) -> dict[str, Any]:
        return {"mode": mode}

    def netns_path(self, container_id: str) -> str | None:
        return None

    async def teardown(self, container_id: str) -> None:
        return None
