"""``/v1/networks``: container network attachments and the node's network facts (admin REST).

=====================================  ==================================================
``GET /v1/networks``                   ``{"driver", "bridge", "subnet", "publish_address",
                                       "attachments": [...]}`` (each as NetworkHook.setup
                                       returns it: mode, driver, netns, addresses, ports,
                                       helper pids)
``GET /v1/networks/diagnostics``       ``{"interfaces", "routes", "attachments"}`` text
``GET /v1/networks/{container_id}``    one attachment; 404 when the container has none
=====================================  ==================================================

The composition root mounts ``router`` under ``/v1`` behind the admin token; the
network manager is ``node.network``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from app.errors import Category, Unavailable

router = APIRouter(prefix="/networks", tags=["networks"])


def _manager(request: Request) -> Any:
    network = getattr(request.app.state.node, "network", None)
    if network is None:
        raise Unavailable("the network manager is not running on this node", category=Category.NETWORK)
    return network


@router.get("")
async def list_networks(request: Request) -> dict[str, Any]:
    m = _manager(request)
    s = m.settings
    return {"driver": m.pod_driver, "bridge": s.bridge, "subnet": s.subnet, "publish_address": s.publish_address,
            "attachments": await m.attachments()}


@router.get("/diagnostics")
async def diagnostics(request: Request) -> dict[str, str]:
    from app.runtime.network.diag import network_diagnostics

    m = _manager(request)
    attachments = await m.attachments()
    return await asyncio.to_thread(network_diagnostics, m.netlink, attachments)


@router.get("/{container_id}")
async def get_attachment(container_id: str, request: Request) -> dict[str, Any]:
    result: dict[str, Any] = await _manager(request).get(container_id)
    return result
