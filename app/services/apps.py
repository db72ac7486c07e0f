"""The app lifecycle: StartApp/StopApp/AppState/ListApps/StartContainerGroup for every front door.

StartApp, step by step (progress percentages are fixed bands, so the bar only
moves forward and every start reports the same phases)::

    render templates in memory ── a bad template fails here, before any pull  (phase render_templates)
    pull image        0..60 %   per-layer progress from the image service     (phase pull)
    create container 60..65 %                                                  (phase create)
    write templates  65..70 %   into the container's rootfs                    (phase render_templates)
    start            70..80 %                                                  (phase start)
    setup_tasks      80..99 %   exec in order, each with its timeout           (phase setup, task_name)
    Running          100 %

A failure at any step removes the container it created, records
``Failed{reason}`` and raises with the step's phase and category. The per-app
record (``vappc_app``) is written at each transition, so a daemon restart
finds every app; liveness is always read from the container (the real
process): a Running app whose process exited is reported ``Stopped`` (exit 0
or after StopApp) or ``Failed`` with its exit code.

Concurrency: one lock per app id serialises Start/Stop of the same app; other
apps and every read (AppState, ListApps) never wait for a start. StopApp of an
app that is still starting cancels that start first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.errors import Category, DeadlineExceeded, FailedPrecondition, NotFound, VappError
from app.runtime import templates
from app.services.app_records import AppRecords
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
from app.services.diagnostics import Diagnostics
from app.services.dns import DnsRecords

log = logging.getLogger(__name__)
ProgressFn = Callable[[Progress], None]


# --- what the app service needs from the engines (adapters in app/services/app_engines.py) ---
@dataclass(frozen=True)
class PullStatus:
    """Image pull progress: bytes across all layers (``total`` None while unknown)."""

    done: int
    total: int | None
    message: str


@dataclass(frozen=True)
class ContainerRequest:
    container_id: str
    image: str
    command: list[str] | None
    args: list[str]
    env: list[str]
    mounts: list[dict[str, Any]]
    memory_mb: int | None
    cpu_cores: float | None
    privileged: bool
    working_dir: str | None
    network: str  # "host" | "none" | "pod" | "container:<container id>"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerStatus:
    running: bool
    exit_code: int | None = None


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


class ImagePuller(Protocol):
    async def pull(self, ref: str, progress: Callable[[PullStatus], None]) -> None: ...


class ContainerRunner(Protocol):
    async def create(self, req: ContainerRequest) -> None: ...
    async def write_files(self, container_id: str, files: Sequence[templates.Rendered]) -> None: ...
    async def start(self, container_id: str) -> None: ...
    async def stop(self, container_id: str, grace: float) -> None: ...
    async def remove(self, container_id: str) -> None: ...
    async def status(self, container_id: str) -> ContainerStatus: ...
    async def exec(self, container_id: str, argv: list[str], timeout: float) -> ExecResult: ...


def exit_reason(code: int) -> str:
    """``exited with code 3``; shells' 128+N convention read as a signal death."""
    if 128 < code < 160:
        return f"killed by signal {code - 128} (exit code {code})"
    return f"exited with code {code}"


def container_id_of(app_id: str) -> str:
    return f"vapp-app-{app_id}"


def network_of(spec: AppSpec) -> str:
    mode = spec.network or "host"
    if mode == "private":
        return "pod"
    if mode.startswith("app:"):
        return f"container:{container_id_of(mode[4:])}"
    return mode


class _Bar:
    """Maps step-local fractions into the fixed percentage bands of the docstring."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress

    def at(self, pct: float, message: str, phase: str, task: str | None = None) -> None:
        self.progress(Progress(int(pct), message, phase, None, task))


class AppService:
    """Implements the vappc backend (``app.vappc.server.VappcBackend``) and ``/v1/apps``."""

    def __init__(
        self,
        records: AppRecords,
        images: ImagePuller,
        containers: ContainerRunner,
        *,
        dns: DnsRecords,
        diagnostics: Diagnostics,
        interface_ip: Callable[[str], str | None],
        stop_grace: float = 10.0,
    ) -> None:
        self.records = records
        self.images = images
        self.containers = containers
        self.dns = dns
        self.diagnostics = diagnostics
        self._interface_ip = interface_ip
        self.stop_grace = stop_grace
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: dict[str, asyncio.Task[AppHandle]] = {}
        diagnostics.containers = self._containers_summary

    def _lock(self, app_id: str) -> asyncio.Lock:
        return self._locks.setdefault(app_id, asyncio.Lock())

    # --- StartApp ---------------------------------------------------------------------
    async def start_app(self, spec: AppSpec, progress: ProgressFn, group: str | None = None) -> AppHandle:
        async with self._lock(spec.app_id):
            task = asyncio.get_running_loop().create_task(self._start_locked(spec, progress, group))
            self._starting[spec.app_id] = task
            try:
                return await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and not (current and current.cancelling()):
                    raise FailedPrecondition(f"start of {spec.app_id!r} cancelled by StopApp",
                                             category=Category.RUNTIME, phase="start") from None
                raise
            finally:
                self._starting.pop(spec.app_id, None)

    async def _start_locked(self, spec: AppSpec, progress: ProgressFn, group: str | None) -> AppHandle:
        handle = AppHandle(spec.app_id, spec.name)
        fingerprint = spec.fingerprint()
        # Render first: a bad template must leave a running app (and its record) untouched.
        rendered = templates.render_all(
            [(t.template, t.destination) for t in spec.config_templates], spec.template_vars
        )
        existing = await self.records.get(spec.app_id)
        if existing is not None and existing.container_id is not None:
            status = await self._observe(existing.container_id)
            if existing.fingerprint == fingerprint and existing.state == "Running" and status.running:
                progress(Progress(100, "already running", "start"))
                return handle
            await self._discard(existing.container_id)
        bar = _Bar(progress)
        cid = container_id_of(spec.app_id)
        await self.records.begin(spec, fingerprint, group, cid)
        created = False
        try:
            await self._pull(spec.image, bar)
            bar.at(60, "creating container", "create")
            await self._step("create", self.containers.create(self._request(spec, cid)))
            created = True
            if rendered:
                bar.at(65, f"writing {len(rendered)} config files", templates.PHASE)
                await self._step(templates.PHASE, self.containers.write_files(cid, rendered))
            bar.at(70, "starting", "start")
            await self._step("start", self.containers.start(cid))
            await self._setup_tasks(spec, cid, bar)
        except BaseException as exc:
            reason = exc.message if isinstance(exc, VappError) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, asyncio.CancelledError):
                reason = "start cancelled"
            if created:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._discard(cid))
            await asyncio.shield(self.records.finish(spec.app_id, AppStatus.failed(reason), container_id=None))
            raise
        await self.records.finish(spec.app_id, AppStatus("Running"))
        bar.at(100, "running", "running")
        return handle

    async def _pull(self, image: str, bar: _Bar) -> None:
        def on_pull(st: PullStatus) -> None:
            frac = (st.done / st.total) if st.total else 0.0
            bar.at(60 * min(frac, 1.0), st.message, "pull")

        bar.at(0, f"pulling {image}", "pull")
        await self._step("pull", self.images.pull(image, on_pull), Category.IMAGE)

    async def _setup_tasks(self, spec: AppSpec, cid: str, bar: _Bar) -> None:
        tasks = spec.setup_tasks
        for index, task in enumerate(tasks):
            phase = f"setup:{task.name}"
            bar.at(80 + 19 * index / len(tasks), f"running setup task {task.name}", "setup", task.name)
            try:
                # The exec enforces the timeout itself; the margin only guards a stuck runtime.
                result = await asyncio.wait_for(
                    self.containers.exec(cid, list(task.command), float(task.timeout_secs)),
                    task.timeout_secs + 5.0,
                )
            except (TimeoutError, DeadlineExceeded) as exc:
                raise DeadlineExceeded(
                    f"setup task {task.name!r} did not finish within {task.timeout_secs}s", phase=phase
                ) from exc
            except VappError as exc:
                raise exc.with_phase(phase) from None
            if result.exit_code != 0:
                tail = result.output.strip()[-500:]
                raise FailedPrecondition(
                    f"setup task {task.name!r} exited with code {result.exit_code}" + (f": {tail}" if tail else ""),
                    category=Category.RUNTIME, phase=phase,
                )
        if tasks:
            bar.at(99, "setup tasks done", "setup")

    @staticmethod
    async def _step(phase: str, job: Any, category: Category | None = None) -> Any:
        try:
            return await job
        except VappError as exc:
            raise exc.with_phase(phase) from None
        except OSError as exc:
            raise VappError(f"{phase}: {exc}", category=category or Category.IO, phase=phase) from exc

    @staticmethod
    def _request(spec: AppSpec, cid: str) -> ContainerRequest:
        res = spec.resources
        return ContainerRequest(
            container_id=cid, image=spec.image, command=spec.command, args=list(spec.args), env=list(spec.env),
            mounts=[m.model_dump() for m in spec.mounts], memory_mb=res.memory_mb if res else None,
            cpu_cores=res.cpu_cores if res else None, privileged=spec.privileged, working_dir=spec.working_dir,
            network=network_of(spec), labels={"vapp.app_id": spec.app_id, "vapp.app_name": spec.name},
        )

    async def _discard(self, cid: str) -> None:
        with contextlib.suppress(NotFound):
            await self.containers.stop(cid, self.stop_grace)
        with contextlib.suppress(NotFound):
            await self.containers.remove(cid)

    # --- StopApp / AppState / ListApps --------------------------------------------------
    async def stop_app(self, app_id: str, timeout: float | None = None) -> None:
        record = await self.records.get(app_id)
        if record is None:
            raise NotFound(f"no app {app_id!r}", phase="stop")
        starting = self._starting.get(app_id)
        if starting is not None:
            starting.cancel()
        async with self._lock(app_id):
            record = await self.records.get(app_id)
            assert record is not None
            await self.records.request_stop(app_id)
            if record.container_id is not None:
                grace = self.stop_grace if timeout is None else timeout
                try:
                    with contextlib.suppress(NotFound):
                        await self.containers.stop(record.container_id, grace)
                    with contextlib.suppress(NotFound):
                        await self.containers.remove(record.container_id)
                except VappError as exc:
                    raise exc.with_phase("stop") from None
            await self.records.finish(app_id, AppStatus("Stopped"), container_id=None)

    async def _observe(self, cid: str) -> ContainerStatus:
        try:
            return await self.containers.status(cid)
        except NotFound:
            return ContainerStatus(False, None)

    async def app_state(self, app_id: str) -> AppStatus:
        record = await self.records.get(app_id)
        if record is None:
            raise NotFound(f"no app {app_id!r}", phase="state")
        return await self._live_status(record)

    async def _live_status(self, record: Any) -> AppStatus:
        stored = AppStatus(record.state, record.reason, record.exit_code)
        if record.state != "Running" or record.container_id is None:
            return stored
        status = await self._observe(record.container_id)
        if status.running:
            return stored
        if record.stop_requested or status.exit_code == 0:
            observed = AppStatus("Stopped", None, status.exit_code)
        elif status.exit_code is None:
            observed = AppStatus.failed("the app's process is gone (exit code unknown)")
        else:
            observed = AppStatus.failed(exit_reason(status.exit_code), status.exit_code)
        await self.records.finish(record.app_id, observed)
        return observed

    async def list_apps(self) -> list[AppSummary]:
        records = await self.records.all()
        states = await asyncio.gather(*(self._live_status(r) for r in records))
        return [AppSummary(r.app_id, r.name, s) for r, s in zip(records, states, strict=True)]

    async def _containers_summary(self) -> str:
        apps = await self.list_apps()
        lines = [f"app {a.app_id} ({a.name}): {a.status.phase}" + (f" {a.status.reason}" if a.status.reason else "")
                 for a in apps]
        listing = getattr(self.containers, "listing", None)
        if listing is not None:
            lines += await listing()
        return "\n".join(lines) or "(no apps, no containers)"

    # --- StartContainerGroup ------------------------------------------------------------
    async def start_group(self, group: ContainerGroup, progress: ProgressFn) -> GroupResult:
        result = GroupResult(group.group_name)
        first: AppSpec | None = None
        for index, spec in enumerate(group.specs):
            if group.shared_network and first is not None and spec.network is None:
                spec = spec.model_copy(update={"network": f"app:{first.app_id}"})
            first = first or spec

            def tagged(ev: Progress, name: str = spec.name) -> None:
                progress(Progress(ev.percentage, ev.message, ev.phase, name, ev.task_name))

            try:
                result.handles.append(await self.start_app(spec, tagged, group=group.group_name))
            except VappError as exc:
                exc.phase = f"spec[{index}]:{exc.phase}" if exc.phase else f"spec[{index}]"
                exc.message = f"spec[{index}] ({spec.app_id}): {exc.message}"
                result.error = exc
                break
        return result

    # --- node operations behind the same socket ------------------------------------------
    async def interface_ip(self, interface: str) -> str | None:
        return await asyncio.to_thread(self._interface_ip, interface)

    async def run_diagnostic(self) -> dict[str, str]:
        return await self.diagnostics.run()

    async def update_dns_records(self, records: list[DnsRecord]) -> int:
        return await self.dns.update(records)

    # --- restart ---------------------------------------------------------------------
    async def recover(self) -> None:
        """After a daemon restart: starts that were cut off are failed and cleaned up."""
        for record in await self.records.all():
            if record.state != "Starting":
                continue
            if record.container_id is not None:
                with contextlib.suppress(Exception):
                    await self._discard(record.container_id)
            await self.records.finish(record.app_id, AppStatus.failed("start interrupted by a daemon restart"),
                                      container_id=None)
            log.warning("app %s: start was interrupted by a daemon restart", record.app_id)
