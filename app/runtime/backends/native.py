"""The native backend: :mod:`app.runtime.oci` in-process (no interpreter start per container)."""

from __future__ import annotations

import socket
from typing import Any

from app.runtime.backends.base import RuntimeFailure
from app.runtime.kernel import Kernel
from app.runtime.oci import create as oci_create
from app.runtime.oci import ops, state


class NativeRuntime:
    name = "native"

    def __init__(self, root: str) -> None:
        self.root = root

    def shim_create(
        self, kernel: Kernel, container_id: str, bundle: str, console: socket.socket | None
    ) -> tuple[int, int | None]:
        try:
            # disposable: called in the shim's short-lived creator child (see supervise/shim.py)
            st = oci_create.create(kernel, self.root, container_id, bundle, console=console, disposable=True)
        except oci_create.CreateError as exc:
            raise RuntimeFailure(str(exc), exc.code) from exc
        return int(st["pid"]), st.get("pidStartTime")

    def start(self, container_id: str) -> None:
        try:
            ops.start(self.root, container_id)
        except ops.OpError as exc:
            raise RuntimeFailure(str(exc), exc.code) from exc

    def kill(self, container_id: str, sig: int, all_processes: bool = False) -> None:
        try:
            ops.kill(self.root, container_id, sig, all_processes)
        except ops.OpError as exc:
            raise RuntimeFailure(str(exc), exc.code) from exc

    def delete(self, container_id: str, force: bool = False) -> None:
        if state.load(self.root, container_id) is None:
            return
        try:
            ops.delete(self.root, container_id, force)
        except ops.OpError as exc:
            raise RuntimeFailure(str(exc), exc.code) from exc

    def state(self, container_id: str) -> dict[str, Any] | None:
        st = state.load(self.root, container_id)
        return None if st is None else state.public_state(self.root, st)


def runtime_for(req: dict[str, Any]) -> Any:
    """Build the backend a shim request names (the shim cannot receive objects)."""
    name = req.get("runtime", "native")
    if name == "native":
        return NativeRuntime(req["state_root"])
    from app.runtime.backends.external import ExternalRuntime

    return ExternalRuntime(name, req["state_root"], binary=req.get("binary"))


def shim_create(kernel: Kernel, req: dict[str, Any], console: socket.socket | None) -> tuple[int, int | None]:
    runtime = runtime_for(req)
    pid, start = runtime.shim_create(kernel, req["id"], req["bundle"], console)
    return pid, start
