"""The ``Runtime`` protocol every backend implements, and the error type they raise.

Lifecycle on one bundle (the OCI runtime spec's)::

    shim_create (in the shim, single-threaded) ─► start ─► kill* ─► delete
                                                        state() at any point

``shim_create`` runs inside the supervising shim (a fork of the fork server, never the
daemon); the other verbs run in the daemon (no fork: a socket connect, os.kill or an
exec'd runtime binary).
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from app.runtime.kernel import Kernel


class RuntimeFailure(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Runtime(Protocol):
    name: str
    root: str

    def shim_create(
        self, kernel: Kernel, container_id: str, bundle: str, console: socket.socket | None
    ) -> tuple[int, int | None]:
        """Create the container (init waiting for start); return (init pid, its start time)."""
        ...

    def start(self, container_id: str) -> None: ...
    def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None: ...
    def delete(self, container_id: str, force: bool = False) -> None: ...
    def state(self, container_id: str) -> dict[str, Any] | None: ...
