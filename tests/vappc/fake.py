"""An in-test backend for protocol-level tests only (framing, ordering, concurrency).

Behaviour tests use the real ``AppService`` with real containers; this fake exists
so the wire layer can be driven deterministically: a start that emits N buffered
progress events at once, a start that blocks on an event, a start that fails.
"""

from __future__ import annotations

import asyncio

from app.errors import Category, NotFound, VappError
from app.services.app_types import (
    AppHandle,
    AppSpec,
    AppStatus,
    AppSummary,
    ContainerGroup,
    DnsRecord,
    GroupResult,
    Progress,
)
from app.vappc.server import ProgressFn


class FakeBackend:
    def __init__(self) -> None:
        self.apps: dict[str, tuple[str, AppStatus]] = {}
        self.release = asyncio.Event()  # blocks starts whose image is "slow"
        self.started_slow = asyncio.Event()
        self.progress_count = 200

    async def start_app(self, spec: AppSpec, progress: ProgressFn) -> AppHandle:
        self.apps[spec.app_id] = (spec.name, AppStatus("Starting"))
        if spec.image == "fail":
            err = VappError("pull failed: boom", category=Category.IMAGE, phase="pull")
            self.apps[spec.app_id] = (spec.name, AppStatus.failed(err.message))
            raise err
        if spec.image == "slow":
            progress(Progress(1, "waiting", phase="pull"))
            self.started_slow.set()
            await self.release.wait()
        else:
            # Many events emitted synchronously: nothing may be dropped or reordered.
            for i in range(self.progress_count):
                progress(Progress(i * 100 // self.progress_count, f"step {i}", phase="pull"))
            progress(Progress(50, "going backwards", phase="pull"))  # must be clamped
        self.apps[spec.app_id] = (spec.name, AppStatus("Running"))
        return AppHandle(spec.app_id, spec.name)

    async def stop_app(self, app_id: str, timeout: float | None = None) -> None:
        if app_id not in self.apps:
            raise NotFound(f"no app {app_id!r}")
        self.apps[app_id] = (self.apps[app_id][0], AppStatus("Stopped"))

    async def app_state(self, app_id: str) -> AppStatus:
        if app_id not in self.apps:
            raise NotFound(f"no app {app_id!r}")
        return self.apps[app_id][1]

    async def list_apps(self) -> list[AppSummary]:
        return [AppSummary(k, n, s) for k, (n, s) in sorted(self.apps.items())]

    async def start_group(self, group: ContainerGroup, progress: ProgressFn) -> GroupResult:
        result = GroupResult(group.group_name)
        for index, spec in enumerate(group.specs):
            def tagged(ev: Progress, name: str = spec.name) -> None:
                progress(Progress(ev.percentage, ev.message, ev.phase, name, ev.task_name))
            try:
                result.handles.append(await self.start_app(spec, tagged))
            except VappError as exc:
                exc.phase = f"spec[{index}]:{exc.phase}"
                result.error = exc
                break
        return result

    async def interface_ip(self, interface: str) -> str | None:
        return "127.0.0.1" if interface.rstrip("*") in ("lo", "l") else None

    async def run_diagnostic(self) -> dict[str, str]:
        return {"fake": "yes"}

    async def update_dns_records(self, records: list[DnsRecord]) -> int:
        return len(records)
