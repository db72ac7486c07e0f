"""Plain values of the network part: modes and published ports (pure, no I/O)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from app.errors import Category, InvalidArgument


class NetworkMode(enum.StrEnum):
    HOST = "host"
    NONE = "none"
    POD = "pod"
    CONTAINER = "container"


def parse_mode(text: str | None) -> tuple[NetworkMode, str | None]:
    """``"host"`` → (HOST, None); ``"bridge"`` aliases ``pod``; ``"container:ID"`` → (CONTAINER, ID)."""
    value = (text or "host").strip()
    if value.startswith(("container:", "app:")):  # vappc apps say app:<app_id>
        target = value.split(":", 1)[1].strip()
        if not target:
            raise InvalidArgument(f"network mode {value!r} needs an id", category=Category.NETWORK)
        return NetworkMode.CONTAINER, target
    aliases = {"host": NetworkMode.HOST, "none": NetworkMode.NONE, "new": NetworkMode.NONE, "pod": NetworkMode.POD,
               "bridge": NetworkMode.POD, "private": NetworkMode.POD}
    if value not in aliases:
        raise InvalidArgument(
            f"unknown network mode {value!r} (host, none, pod, bridge, container:<id>)",
            category=Category.NETWORK, details={"mode": value},
        )
    return aliases[value], None


@dataclass(frozen=True)
class PortMapping:
    """One published port: ``host_ip:host_port`` on the node → ``container_port`` in the netns.

    ``host_ip`` empty means the configured publish address (loopback by default).
    """

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def __post_init__(self) -> None:
        for name in ("host_port", "container_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise InvalidArgument(f"{name} {port!r} is not a port (1-65535)", category=Category.NETWORK)
        if self.protocol not in ("tcp", "udp"):
            raise InvalidArgument(f"protocol {self.protocol!r} is not tcp or udp", category=Category.NETWORK)
        if self.host_ip:
            try:
                ipaddress.ip_address(self.host_ip)
            except ValueError as exc:
                raise InvalidArgument(f"host address {self.host_ip!r} is not an IP address",
                                      category=Category.NETWORK) from exc

    def with_host_ip(self, default: str) -> PortMapping:
        if self.host_ip:
            return self
        return PortMapping(self.host_port, self.container_port, self.protocol, default)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_port(spec: PortMapping | str | dict[str, Any]) -> PortMapping:
    """``"8080:80"``, ``"127.0.0.1:8080:80/udp"``, ``"80"`` (same port both sides), or a dict."""
    if isinstance(spec, PortMapping):
        return spec
    if isinstance(spec, dict):  # snake_case, or CNI/CRI camelCase (hostPort, containerPort, hostIP)
        def pick(*keys: str) -> Any:
            return next((spec[k] for k in keys if spec.get(k) not in (None, "")), None)

        try:
            host_port = int(pick("host_port", "hostPort"))
            container_port = int(pick("container_port", "containerPort") or host_port)
            return PortMapping(host_port, container_port, str(pick("protocol") or "tcp").lower(),
                               str(pick("host_ip", "hostIP", "hostIp") or ""))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"bad port mapping {spec!r}", category=Category.NETWORK) from exc
    text, _, proto = spec.strip().partition("/")
    host_ip = ""
    if text.startswith("["):  # [v6]:host:container
        end = text.find("]")
        host_ip, text = text[1:end], text[end + 2:]
    parts = text.split(":")
    if len(parts) == 3:
        host_ip, parts = parts[0], parts[1:]
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InvalidArgument(f"bad port mapping {spec!r}: want [HOST_IP:]HOST:CONTAINER[/tcp|udp]",
                              category=Category.NETWORK)
    return PortMapping(int(parts[0]), int(parts[1]), proto or "tcp", host_ip)
