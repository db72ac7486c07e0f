"""The container service: the verbs vappc apps, CRI and bootstrap call. No fork happens here.

State machine (one row in ``rt_container`` + the runtime's files)::

    create ──► created ──start──► running ──(process exits / stop / kill)──► exited ──remove──► (gone)
       │          └──────────────────remove (kills the waiting init)──────────────────────┘
       └─ failure: nothing left (row, bundle, shim, cgroups, state dir all removed)

Disk::

    <state_dir>/containers/<id>/bundle/config.json   generated bundle (root.path → the rootfs)
    <state_dir>/containers/<id>/container.log        CRI log (rotated .1 .2 …) unless log_path given
    <run_dir>/runtime/<backend>/<id>/                 the backend's own state (native: state.json)
    <run_dir>/runtime/shims/<id>/{shim.json,exit}     the shim's record and the exit record

Liveness always comes from the processes: a pidfd on the shim reports the exit, whose
code the shim wrote to ``exit``; ``restore()`` re-reads all of it after a restart.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Table, bindparam, or_
from sqlalchemy import select as sa_select
from sqlmodel import select

from app.config import RuntimeSettings
from app.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound
from app.runtime.backends.base import Runtime, RuntimeFailure
from app.runtime.backends.external import ExternalRuntime
from app.runtime.backends.native import NativeRuntime
from app.runtime.forkserver import ForkServer
from app.runtime.kernel import cgroups as kcgroups
from app.runtime.network import NetworkHook
from app.runtime.oci import spec as specgen
from app.runtime.oci import state as oci_state
from app.runtime.supervise import client
from app.runtime.supervise import stdin as stdin_relay
from app.runtime.supervise.shim import read_record
from app.services.container_bundle import exec_request, info_from_row, make_bundle, signal_number
from app.services.container_types import (
    ContainerEvent,
    ContainerInfo,
    ContainerStatus,
    CreateRequest,
    ExecResult,
    HostNetwork,
)
from app.state.db import Database
from app.state.models.containers import ContainerRow

log = logging.getLogger(__name__)
_NO_HOOK = ("host", "none")
# What changes after the insert (create → created → running → exited): all _save writes.
_MUTABLE = ("status", "pid", "pid_start", "shim_pid", "shim_start", "exit_code", "started_at", "finished_at")
# Built once on the Core table (not the ORM entity: its UPDATE goes through the ORM's bulk
# path), with bind parameters, so each execution reuses the compiled statement.
_TABLE: Table = ContainerRow.__table__  # type: ignore[attr-defined]
_UPDATE = _TABLE.update().where(_TABLE.c.id == bindparam("row_id")).values({n: bindparam(n) for n in _MUTABLE})
_DELETE = _TABLE.delete().where(_TABLE.c.id == bindparam("row_id"))
_TAKEN = sa_select(_TABLE.c.id).where(
    or_(_TABLE.c.id == bindparam("row_id"), _TABLE.c.name == bindparam("name"))).limit(1)


class ContainerService:
    def __init__(self, db: Database, forkserver: ForkServer, *, state_dir: Path, run_dir: Path,
                 settings: RuntimeSettings | None = None, network: NetworkHook | None = None) -> None:
        self.db = db
        self.forkserver = forkserver
        self.settings = settings or RuntimeSettings()
        self.network: NetworkHook = network or HostNetwork()
        self.containers_dir = Path(state_dir) / "containers"
        self.runtime_dir = Path(run_dir) / "runtime"
        self.shims_root = str(self.runtime_dir / "shims")
        self.backends: dict[str, Runtime] = {
            "native": NativeRuntime(str(self.runtime_dir / "native")),
            "crun": ExternalRuntime("crun", str(self.runtime_dir / "crun")),
            "runc": ExternalRuntime("runc", str(self.runtime_dir / "runc")),
        }
        self._exited: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._subscribers: set[asyncio.Queue[ContainerEvent]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._rows: dict[str, ContainerRow] = {}

    # --- rows ---------------------------------------------------------------------------------
    def _row(self, container_id: str) -> ContainerRow:
        """By id or name; rows are cached (this service is the only writer of its table)."""
        row = self._rows.get(container_id)
        if row is not None:
            return row
        with self.db.session() as s:
            row = s.get(ContainerRow, container_id)
            if row is None:
                row = s.exec(select(ContainerRow).where(ContainerRow.name == container_id)).first()
        if row is None:
            raise NotFound(f"container {container_id!r} not found", details={"id": container_id})
        self._rows[row.id] = row
        return row

    def uses_image(self, image_id: str) -> bool:
        """True while any container (in any state but deleted) was created from ``image_id``."""
        with self.db.session() as s:
            return s.exec(select(ContainerRow.id).where(ContainerRow.image == image_id).limit(1)).first() is not None

    def _save(self, row: ContainerRow) -> None:
        """One UPDATE of the columns a transition changes (no ORM session, no SELECT first, no
        model dump: merge() cost twice as much); rows are inserted once, by create()."""
        with self.db.engine.begin() as conn:
            conn.execute(_UPDATE, {"row_id": row.id} | {name: getattr(row, name) for name in _MUTABLE})
        self._rows[row.id] = row

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def _backend(self, name: str) -> Runtime:
        if name not in self.backends:
            raise InvalidArgument(f"unknown runtime {name!r}: want native, crun or runc",
                                  details={"field": "runtime"})
        return self.backends[name]

    # --- events -------------------------------------------------------------------------------
    def _emit(self, kind: str, container_id: str, exit_code: int | None = None) -> None:
        event = ContainerEvent(kind, container_id, time.time(), exit_code)
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def events(self) -> AsyncIterator[ContainerEvent]:
        """created / started / exited / deleted, from subscription on (bounded; slow readers drop)."""
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue(maxsize=1024)
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    # --- create -------------------------------------------------------------------------------
    async def create(self, req: CreateRequest) -> ContainerInfo:
        spec = req.spec
        if not oci_state.valid_id(spec.id):
            raise InvalidArgument(f"invalid container id {spec.id!r}", details={"field": "id"})
        runtime = req.runtime or self.settings.default_runtime
        backend = self._backend(runtime)
        if req.rootfs_overlay is not None and runtime != "native":  # crun/runc ignore the annotation
            raise FailedPrecondition(f"an overlay root filesystem mounted in the container needs the native "
                                     f"runtime, not {runtime}", details={"field": "runtime"})
        name = spec.name or spec.id
        with self.db.engine.connect() as conn:
            if conn.execute(_TAKEN, {"row_id": spec.id, "name": name}).first() is not None:
                raise AlreadyExists(f"container id or name {spec.id!r}/{name!r} already in use",
                                    details={"id": spec.id, "name": name})
        directory = self.containers_dir / spec.id
        log_path = req.log_path or str(directory / "container.log")
        req = await self._with_etc_files(req)
        try:
            bundle, cfg = self._bundle(req, directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        stop_sig = specgen.stop_signal(spec, req.image_config)
        row = ContainerRow(
            id=spec.id, name=name, runtime=runtime, bundle=bundle, rootfs=cfg["root"]["path"], log_path=log_path,
            image=req.image, status="creating", created_at=time.time(), network=spec.network,
            stop_signal=stop_sig, labels=json.dumps(spec.labels), annotations=json.dumps(spec.annotations),
            spec=json.dumps(asdict(spec), default=str))
        with self.db.engine.begin() as conn:
            conn.execute(_TABLE.insert(), row.model_dump())
        self._rows[row.id] = row
        try:
            await self._spawn(row, backend, bool(cfg["process"].get("terminal")), spec)
            await self._attach_network(row, req)
        except BaseException:
            await self._discard(row, backend)
            raise
        self._emit("created", row.id)
        return self._info(row)

    async def _with_etc_files(self, req: CreateRequest) -> CreateRequest:
        """Bind the network's /etc/{hosts,resolv.conf,hostname} unless the caller chose its own (CRI does)."""
        spec = req.spec
        prepare = getattr(self.network, "prepare_files", None)
        if spec.etc_files or req.bundle or prepare is None or spec.network.startswith("/"):
            return req
        files = await asyncio.to_thread(prepare, spec.id, spec.network, spec.hostname)
        return replace(req, spec=replace(spec, etc_files=files))

    def _bundle(self, req: CreateRequest, directory: Path) -> tuple[str, dict[str, Any]]:
        return make_bundle(req, directory, self._row, cgroup_parent=self.settings.cgroup_parent,
                           subordinate_ids=self.settings.subordinate_ids)

    async def _spawn(self, row: ContainerRow, backend: Runtime, tty: bool, spec: specgen.ContainerSpec) -> None:
        request = {"id": row.id, "bundle": row.bundle, "state_root": backend.root, "shims_root": self.shims_root,
                   "log_path": row.log_path, "runtime": row.runtime, "tty": tty, "stdin": spec.stdin,
                   "stdin_once": spec.stdin_once,
                   "log_max_bytes": self.settings.log_max_bytes, "log_max_files": self.settings.log_max_files}
        try:
            record = await client.spawn_shim(self.forkserver, request)
        except client.SuperviseError as exc:
            raise InvalidArgument(str(exc), phase="create", details={"exit_code": exc.code}) from exc
        row.pid, row.pid_start = int(record["pid"]), record.get("pidStartTime")
        row.shim_pid, row.shim_start = int(record["shimPid"]), record.get("shimStart")
        row.status = ContainerStatus.CREATED.value
        self._save(row)
        self._watch(row)

    async def _attach_network(self, row: ContainerRow, req: CreateRequest) -> None:
        mode = req.spec.network
        if mode in _NO_HOOK or mode.startswith("/") or mode.startswith("container:"):
            return
        assert row.pid is not None
        await self.network.setup(row.id, mode, [dict(p) for p in req.ports], row.pid,
                                 hostname=req.spec.hostname or row.id[:12])

    async def _discard(self, row: ContainerRow, backend: Runtime) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(backend.delete, row.id, True)
        if row.shim_pid:
            await client.wait_pid(row.shim_pid, 5)
        with contextlib.suppress(Exception):
            await self.network.teardown(row.id)
        self._forget(row)

    def _forget(self, row: ContainerRow) -> None:
        watcher = self._watchers.pop(row.id, None)
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
        shutil.rmtree(self.containers_dir / row.id, ignore_errors=True)
        shutil.rmtree(os.path.join(self.shims_root, row.id), ignore_errors=True)
        with self.db.engine.begin() as conn:  # one DELETE (the ORM would SELECT the row first)
            conn.execute(_DELETE, {"row_id": row.id})
        self._rows.pop(row.id, None)
        self._exited.pop(row.id, None)
        self._locks.pop(row.id, None)

    # --- exit watching ------------------------------------------------------------------------
    def _watch(self, row: ContainerRow) -> None:
        event = self._exited.setdefault(row.id, asyncio.Event())
        if row.id in self._watchers or event.is_set():
            return
        self._watchers[row.id] = asyncio.get_running_loop().create_task(self._watch_task(row.id))

    async def _watch_task(self, container_id: str) -> None:
        row = self._row(container_id)
        while True:  # the shim normally; the init itself if the shim was killed
            if row.shim_pid and oci_state.process_alive(row.shim_pid, row.shim_start):
                await client.wait_pid(row.shim_pid)
            elif row.pid and oci_state.process_alive(row.pid, row.pid_start):
                await client.wait_pid(row.pid)
            else:
                break
        async with self._lock(container_id):  # after a start in progress has emitted "started"
            self._record_exit(container_id)

    def _record_exit(self, container_id: str) -> None:
        try:
            row = self._row(container_id)
        except NotFound:
            return
        record = read_record(self.shims_root, container_id, "exit")
        if row.status != ContainerStatus.EXITED.value:
            row.status = ContainerStatus.EXITED.value
            row.exit_code = int(record["status"]) if record else 255  # shim gone: code unknown
            row.finished_at = time.time()
            self._save(row)
            self._emit("exited", container_id, row.exit_code)
        self._exited.setdefault(container_id, asyncio.Event()).set()
        self._watchers.pop(container_id, None)

    # --- lifecycle verbs ----------------------------------------------------------------------
    async def start(self, container_id: str) -> ContainerInfo:
        row = self._refresh(self._row(container_id))
        async with self._lock(row.id):
            if row.status != ContainerStatus.CREATED.value:
                raise FailedPrecondition(f"container {row.id!r} is {row.status}, not created",
                                         details={"id": row.id, "status": row.status})
            try:
                await asyncio.to_thread(self._backend(row.runtime).start, row.id)
            except RuntimeFailure as exc:
                raise FailedPrecondition(f"start {row.id}: {exc}", phase="start",
                                         details={"exit_code": exc.code}) from exc
            row.status, row.started_at = ContainerStatus.RUNNING.value, time.time()
            self._save(row)
            self._emit("started", row.id)
        return self._info(row)

    async def kill(self, container_id: str, sig: int | str = signal.SIGKILL, all_processes: bool = False) -> None:
        row = self._refresh(self._row(container_id))
        if row.status not in (ContainerStatus.CREATED.value, ContainerStatus.RUNNING.value):
            raise FailedPrecondition(f"container {row.id!r} is {row.status}: nothing to signal")
        number = signal_number(sig)
        try:
            await asyncio.to_thread(self._backend(row.runtime).kill, row.id, number, all_processes)
        except RuntimeFailure as exc:
            if self._refresh(row).status == ContainerStatus.EXITED.value:
                return  # it exited meanwhile: the signal has nothing left to do
            raise FailedPrecondition(f"kill {row.id}: {exc}") from exc

    async def wait(self, container_id: str, timeout: float | None = None) -> int:
        """Block until the container exits; return its exit code."""
        row = self._row(container_id)
        event = self._exited.setdefault(row.id, asyncio.Event())
        row = self._refresh(row)
        if row.status == ContainerStatus.EXITED.value:
            return int(row.exit_code if row.exit_code is not None else 255)
        self._watch(row)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"container {row.id!r} still running after {timeout}s") from exc
        row = self._row(row.id)
        return int(row.exit_code if row.exit_code is not None else 255)

    async def stop(self, container_id: str, timeout: float | None = None) -> ContainerInfo:
        """Stop signal, ``timeout`` seconds of grace (settings default), then SIGKILL to every process."""
        row = self._refresh(self._row(container_id))
        grace = self.settings.stop_grace_seconds if timeout is None else timeout
        if row.status in (ContainerStatus.CREATED.value, ContainerStatus.RUNNING.value):
            if row.status == ContainerStatus.RUNNING.value and grace > 0:
                with contextlib.suppress(FailedPrecondition):
                    await self.kill(row.id, row.stop_signal)
                with contextlib.suppress(DeadlineExceeded):
                    await self.wait(row.id, grace)
            if self._refresh(self._row(row.id)).status != ContainerStatus.EXITED.value:
                with contextlib.suppress(FailedPrecondition):
                    await self.kill(row.id, signal.SIGKILL, all_processes=True)
                await self.wait(row.id, 30)
        return self.inspect_row(self._row(row.id))

    async def remove(self, container_id: str, force: bool = False) -> None:
        row = self._refresh(self._row(container_id))
        async with self._lock(row.id):
            if row.status == ContainerStatus.RUNNING.value and not force:
                raise FailedPrecondition(f"container {row.id!r} is running: stop it first or force",
                                         details={"id": row.id})
            backend = self._backend(row.runtime)
            try:
                await asyncio.to_thread(backend.delete, row.id, True)
            except RuntimeFailure as exc:
                raise Internal(f"delete {row.id}: {exc}") from exc
            if row.shim_pid and oci_state.process_alive(row.shim_pid, row.shim_start):
                await client.wait_pid(row.shim_pid, 10)
            self._record_exit(row.id)
            with contextlib.suppress(Exception):
                await self.network.teardown(row.id)
            self._forget(row)
        self._emit("deleted", row.id)

    async def update_resources(self, container_id: str, resources: dict[str, Any]) -> None:
        """New limits (OCI ``linux.resources`` shape: ``memory``, ``cpu``) on a running container's own cgroup."""
        row = self._refresh(self._row(container_id))
        if row.status != ContainerStatus.RUNNING.value or not row.pid:
            raise FailedPrecondition(f"container {row.id} is not running (state {row.status})", details={"id": row.id})
        try:
            await asyncio.to_thread(kcgroups.update_own, row.id, row.pid, resources)
        except OSError as exc:
            raise FailedPrecondition(f"cannot apply the limits to {row.id}: {exc.strerror or exc}") from exc

    async def attach_stdin(self, container_id: str) -> socket.socket:
        """A non-blocking socket whose writes reach the container's stdin (created with ``stdin``)."""
        row = self._refresh(self._row(container_id))
        if row.status not in (ContainerStatus.CREATED.value, ContainerStatus.RUNNING.value):
            raise FailedPrecondition(f"container {row.id!r} is {row.status}")
        try:
            sock = stdin_relay.connect(os.path.join(self.shims_root, row.id))
        except OSError as exc:
            raise FailedPrecondition(f"container {row.id!r} has no stdin to attach to (created without stdin, "
                                     "or stdin_once already used)") from exc
        sock.setblocking(False)
        return sock

    async def reopen_log(self, container_id: str) -> None:
        """CRI ReopenContainerLog: the shim closes and reopens its log file (SIGUSR1)."""
        row = self._refresh(self._row(container_id))
        if row.status != ContainerStatus.RUNNING.value or not row.shim_pid:
            raise FailedPrecondition(f"container {row.id!r} is {row.status}, not running")
        if oci_state.process_alive(row.shim_pid, row.shim_start):
            os.kill(row.shim_pid, signal.SIGUSR1)

    # --- exec ---------------------------------------------------------------------------------
    async def exec_stream(self, container_id: str, argv: list[str], *, env: list[str] | None = None,
                          tty: bool = False, stdin: bool = False, user: str | None = None,
                          workdir: str | None = None) -> client.ExecSession:
        """Start ``argv`` in all the container's namespaces; the caller streams and waits."""
        row = self._refresh(self._row(container_id))
        if row.status != ContainerStatus.RUNNING.value or not row.pid:
            raise FailedPrecondition(f"container {row.id!r} is {row.status}, not running")
        if not argv:
            raise InvalidArgument("exec needs a command", details={"field": "argv"})
        native_state = oci_state.load(self.backends["native"].root, row.id) or {}
        request = exec_request(row, argv, env=env, user=user, workdir=workdir,
                               cgroups=native_state.get("cgroups") or [])
        try:
            return await client.start_exec(self.forkserver, request, tty=tty, stdin=stdin)
        except client.SuperviseError as exc:
            raise FailedPrecondition(f"exec in {row.id}: {exc}", phase="exec") from exc

    async def exec(self, container_id: str, argv: list[str], timeout: float | None = None, *,
                   env: list[str] | None = None, user: str | None = None, workdir: str | None = None) -> ExecResult:
        """Run to completion, capture output; past ``timeout`` the process is killed (timed_out)."""
        session = await self.exec_stream(container_id, argv, env=env, user=user, workdir=workdir)
        try:
            reader = asyncio.gather(client.read_all(session.stdout), client.read_all(session.stderr))
            timed_out = False
            try:
                code = await asyncio.wait_for(session.wait(), timeout)
            except TimeoutError:
                timed_out = True
                session.kill()
                code = await session.wait(10)
            out, err = await asyncio.wait_for(reader, 10)
            return ExecResult(code, out, err, timed_out)
        finally:
            session.close()

    # --- views --------------------------------------------------------------------------------
    def _refresh(self, row: ContainerRow) -> ContainerRow:
        """Correct a stale status from the real processes and the exit record."""
        if row.status in (ContainerStatus.CREATED.value, ContainerStatus.RUNNING.value, "creating"):
            shim_alive = bool(row.shim_pid) and oci_state.process_alive(int(row.shim_pid or 0), row.shim_start)
            init_alive = bool(row.pid) and oci_state.process_alive(int(row.pid or 0), row.pid_start)
            if not shim_alive and not init_alive and row.status != "creating":
                self._record_exit(row.id)
                return self._row(row.id)
        return row

    def inspect_row(self, row: ContainerRow) -> ContainerInfo:
        return self._info(self._refresh(row))

    async def inspect(self, container_id: str) -> ContainerInfo:
        return self.inspect_row(self._row(container_id))

    async def list(self, labels: dict[str, str] | None = None) -> list[ContainerInfo]:
        with self.db.session() as s:
            rows = list(s.exec(select(ContainerRow)).all())
        infos = [self.inspect_row(r) for r in rows if r.status != "creating"]
        if labels:
            infos = [i for i in infos if all(i.labels.get(k) == v for k, v in labels.items())]
        return infos

    def _info(self, row: ContainerRow) -> ContainerInfo:
        return info_from_row(row)

    # --- restart ------------------------------------------------------------------------------
    async def restore(self) -> builtins.list[ContainerInfo]:
        """After a daemon restart: re-read every container, pick up exits that happened while down,
        re-arm exit watchers on live ones, and drop half-created leftovers."""
        with self.db.session() as s:
            rows = list(s.exec(select(ContainerRow)).all())
        for row in rows:
            if row.status == "creating":
                await self._discard(row, self._backend(row.runtime))
                continue
            row = self._refresh(row)
            if row.status in (ContainerStatus.CREATED.value, ContainerStatus.RUNNING.value):
                self._watch(row)
        return await self.list()

    async def close(self) -> None:
        for task in list(self._watchers.values()):
            task.cancel()
        self._watchers.clear()
