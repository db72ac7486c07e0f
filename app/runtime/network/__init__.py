"""Container networking: host, none, pod (pasta / slirp4netns rootless, bridge as root), container:<id>.

The container service (``app/services/containers.py``) talks to this package
through one small Protocol, :class:`NetworkHook`; ``app/wiring.py`` hands it a
:class:`~app.runtime.network.manager.NetworkManager`.

Lifecycle, per container id::

    (runtime creates the process in its own netns, or asks netns_path() of
     the container it joins)
          │
          ▼  setup(id, mode, ports, pid_or_netns_path)      idempotent per id
    ATTACHED ── addresses leased, veth/pasta up, DNAT rules in table inet vapp
          │
          ▼  teardown(id)                                   idempotent, never raises NotFound
    DETACHED ── lease released, helper stopped, links and rules gone

Modes (``parse_mode``):

==================  ===========================================================
``host``            the node's namespace; nothing to do (default for vappc apps)
``none``            own netns with only ``lo`` (brought up here)
``pod``/``bridge``  own netns + outbound + address + published ports:
                    root → Linux bridge + veth + IPAM + nftables NAT/DNAT;
                    rootless → pasta (fallback slirp4netns)
``container:<id>``  the netns of another container (``netns_path(id)``)
==================  ===========================================================

CRI pods use CNI in their own code but reuse :mod:`.dns` (resolv.conf, hosts)
and :mod:`.netns` (create/remove named namespaces) from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from app.runtime.network.types import NetworkMode, PortMapping, parse_mode, parse_port

__all__ = ["NetworkHook", "NetworkMode", "PortMapping", "parse_mode", "parse_port"]


@runtime_checkable
class NetworkHook(Protocol):
    """What the container service calls around a container's life.

    ``setup`` returns a JSON-able dict (also what the admin API and
    RunDiagnostic show)::

        {"container_id": str, "mode": "host"|"none"|"pod"|"container",
         "driver": "host"|"none"|"bridge"|"pasta"|"slirp4netns"|"shared",
         "netns": str|None,                 # path of the namespace (None for host)
         "addresses": ["10.88.0.5/16", ...], "gateway": str|None,
         "ports": [{"host_ip", "host_port", "container_port", "protocol"}],
         "helper_pids": [int, ...],         # pasta / slirp4netns processes
         "shared_with": str|None}           # container:<id> target

    ``ports`` items are :class:`PortMapping`, strings ``[HOST_IP:]HOST:CONTAINER[/tcp|udp]`` or dicts
    (``host_port``/``hostPort``, ``container_port``, ``protocol``, ``host_ip``).
    ``target`` is the container's init pid (int) or a netns path (str); ``None`` only for
    ``host`` and ``container:<id>``. Errors: ``InvalidArgument`` (bad mode/port),
    ``AlreadyExists`` (host port taken), ``FailedPrecondition`` (pasta missing,
    /dev/net/tun unusable, subnet overlaps a host route), ``NotFound`` (container:<id>
    unknown). A failed setup leaves nothing behind.
    """

    async def setup(
        self,
        container_id: str,
        mode: str,
        ports: Sequence[PortMapping | str | dict[str, Any]] = (),
        target: int | str | None = None,
        *,
        hostname: str | None = None,
    ) -> dict[str, Any]: ...

    async def teardown(self, container_id: str) -> None: ...

    def netns_path(self, container_id: str) -> str | None:
        """The netns path of an attached container (for ``container:<id>``), or None."""
        ...
