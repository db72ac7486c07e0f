"""The CRI gRPC listener: a ``grpc.aio`` server on a Unix socket (mode 0660, optional group).

The servicers themselves are added by :func:`app.api.cri.servicers.add_cri_servicers`
(the CRI adapter); this module only owns the socket and the server's lifecycle.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import grpc

from app.api.sockets import apply_socket_permissions, clear_stale_socket, remove_socket
from app.errors import InvalidArgument

log = logging.getLogger(__name__)


class CriListener:
    name = "cri"

    def __init__(self, node: Any) -> None:
        self.node = node
        self.path = node.settings.cri_socket
        self._server: grpc.aio.Server | None = None

    async def start(self) -> list[str]:
        s = self.node.settings
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_socket(self.path)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.max_send_message_length", 16 * 1024 * 1024),
            ]
        )
        try:
            from app.api.cri.servicers import add_cri_servicers
        except ImportError:  # the CRI adapter is not built yet: serve an empty server
            log.warning("CRI servicers unavailable; the CRI socket answers UNIMPLEMENTED")
        else:
            add_cri_servicers(server, self.node)
        # Bind with no access for others, then set the configured mode and group.
        old = os.umask(0o177)
        try:
            port = server.add_insecure_port(f"unix:{self.path}")
        finally:
            os.umask(old)
        if port == 0:
            raise InvalidArgument(f"cannot bind the CRI socket {self.path}")
        await server.start()
        apply_socket_permissions(self.path, s.socket_mode, s.socket_group)
        self._server = server
        return [f"unix://{self.path}"]

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        remove_socket(self.path)
