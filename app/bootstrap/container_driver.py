"""ComponentDriver on the container and image services: components as containers.

It drives the same two small engine protocols the app service uses
(``app.services.apps.ImagePuller`` / ``ContainerRunner``, implemented over the
image service, the snapshotter and the container service by
``app.services.app_engines``), so a bootstrap component is created exactly like
a vappc app: pull through the node's cache, overlay rootfs, bind mounts,
host/none/pod network, exec inside it.

Container id: ``vapp-boot-<key>``. What the runtime does not keep for us, the
spec hash a container was created from, lives in a small record that the
loop rediscovers after a restart::

    <root>/<key>.json   {"container_id", "spec_hash", "image", "started_at"}

``ensure_running``: absent → pull, create, start; running another spec → stop,
remove, recreate; exited → remove and recreate (a fresh rootfs each start,
as a kubelet does for static pods; data lives in the component's volumes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.bootstrap.driver import ExecResult
from app.bootstrap.model import DesiredComponent, RuntimeStatus
from app.errors import DeadlineExceeded, NotFound, VappError

PREFIX = "vapp-boot-"


class ContainerServiceDriver:
    def __init__(self, puller: Any, runner: Any, root: Path, *, stop_grace: float = 10.0) -> None:
        self.puller = puller  # app.services.apps.ImagePuller
        self.runner = runner  # app.services.apps.ContainerRunner
        self.root = root
        self.stop_grace = stop_grace
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def container_id(key: str) -> str:
        return PREFIX + key

    def _record(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.root / f"{key}.json").read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def _write(self, key: str, record: dict[str, Any]) -> None:
        tmp = self.root / f".{key}.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.root / f"{key}.json")

    async def status(self, key: str) -> RuntimeStatus:
        rec = self._record(key)
        if rec is None:
            return RuntimeStatus("absent")
        try:
            st = await self.runner.status(rec["container_id"])
        except NotFound:
            return RuntimeStatus("absent", rec.get("spec_hash"))
        if st.running:
            return RuntimeStatus("running", rec.get("spec_hash"), rec["container_id"], None, rec.get("started_at"))
        return RuntimeStatus("exited", rec.get("spec_hash"), rec["container_id"], st.exit_code, rec.get("started_at"))

    async def ensure_running(self, component: DesiredComponent) -> RuntimeStatus:
        st = await self.status(component.key)
        if st.state == "running" and st.spec_hash == component.spec_hash:
            return st
        cid = self.container_id(component.key)
        await self._discard(component.key)

        def on_pull(_status: Any) -> None:
            return None

        await self.puller.pull(component.image, on_pull)
        from app.services.apps import ContainerRequest

        req = ContainerRequest(
            container_id=cid, image=component.image, command=list(component.command), args=[],
            env=[f"{k}={v}" for k, v in component.env],
            mounts=[{"host_path": m.source, "container_path": m.target, "read_only": m.readonly}
                    for m in component.mounts],
            memory_mb=None, cpu_cores=None, privileged=component.privileged, working_dir=component.directory or None,
            network=component.network, labels={"vapp.bootstrap/component": component.key,
                                               "vapp.bootstrap/spec": component.spec_hash},
        )
        # The record goes first: a daemon killed between create and start finds the container.
        now = time.time()
        self._write(component.key, {"container_id": cid, "spec_hash": component.spec_hash,
                                    "image": component.image, "started_at": now})
        await self.runner.create(req)
        try:
            await self.runner.start(cid)
        except BaseException:
            with contextlib.suppress(VappError, OSError):
                await self.runner.remove(cid)
            raise
        return RuntimeStatus("running", component.spec_hash, cid, None, now)

    async def _discard(self, key: str) -> None:
        cid = self.container_id(key)
        with contextlib.suppress(NotFound):
            await self.runner.stop(cid, self.stop_grace)
        with contextlib.suppress(NotFound):
            await self.runner.remove(cid)

    async def stop(self, key: str, *, grace: float = 10.0) -> None:
        rec = self._record(key)
        if rec is None:
            return
        with contextlib.suppress(NotFound):
            await self.runner.stop(rec["container_id"], grace)

    async def remove(self, key: str) -> None:
        await self._discard(key)
        (self.root / f"{key}.json").unlink(missing_ok=True)

    async def exec(self, key: str, argv: Sequence[str], *, timeout: float) -> ExecResult:
        rec = self._record(key)
        if rec is None:
            raise NotFound(f"{key} has no container", phase="exec")
        try:
            res = await asyncio.wait_for(self.runner.exec(rec["container_id"], list(argv), timeout), timeout + 5)
        except TimeoutError:
            raise DeadlineExceeded(f"{key}: exec {argv[0]} timed out after {timeout}s", phase="exec") from None
        return ExecResult(res.exit_code, res.output)

    async def keys(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json"))
