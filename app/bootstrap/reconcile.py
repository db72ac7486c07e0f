"""The reconcile loop: observe → plan (pure) → act, one idempotent pass at a time.

A pass::

    observe   hash every desired file on disk, ask the driver about every desired,
              recorded or driver-known component (liveness, the spec it runs)
    plan      app.bootstrap.plan.plan(desired, observed, now)  (no I/O)
    act       execute the mutating actions in dependency order; after each one the
              component's record is saved, so a daemon killed mid-pass (even kill -9)
              resumes from the node's real state on the next pass

Level-triggered: a pass with nothing to do reads files and /proc, writes nothing
and emits nothing (``bench/bootstrap_bench.py`` times it). ``converge`` repeats
passes until a pass has nothing left to do (dependents start in the pass after
their dependencies became healthy).

Starting a component is a background task (``inflight``; the planner sees it as busy)
that runs its tasks in order: ``render`` (write what differs),
``container`` (driver.ensure_running), ``wait`` (health check until a deadline,
failing early if the process exits), ``exec`` (once per spec; skipped when its
``unless`` command succeeds). A failing task stops the component and schedules
the next attempt after an exponential backoff (see plan.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from app.bootstrap import health as healthmod
from app.bootstrap.driver import ComponentDriver
from app.bootstrap.model import Action, DesiredComponent, Observed, Record, RenderedFile
from app.bootstrap.plan import Policy, backoff_delay, phase_after_failure, plan
from app.bootstrap.schema import ExecTask, WaitTask
from app.errors import Category, FailedPrecondition, Internal, VappError

log = logging.getLogger(__name__)
Emit = Callable[[dict[str, Any]], None]
FAILURE_REASONS = ("exited", "gone", "unhealthy")


def file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_file(f: RenderedFile) -> None:
    p = Path(f.path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(f.content)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, f.mode)
    os.replace(tmp, p)


class Reconciler:
    """Runs passes for one driver; records are loaded/saved through callbacks (the store)."""

    def __init__(self, driver: ComponentDriver, *, load: Callable[[], dict[str, Record]],
                 save: Callable[[Sequence[Record]], None], forget: Callable[[str], None],
                 policy: Policy = Policy(), emit: Emit | None = None,
                 clock: Callable[[], float] = time.time, bootstrap_dir: Path | None = None) -> None:
        self.driver = driver
        self._load, self._save, self._forget = load, save, forget
        self.policy = policy
        self.emit: Emit = emit or (lambda _e: None)
        self.clock = clock
        self.bootstrap_dir = bootstrap_dir
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.on_settled: Callable[[], None] | None = None  # called when a background start ends
        self.records: dict[str, Record] | None = None  # loaded once, then kept in memory
        self.last_plan: list[Action] = []

    # --- observe ---------------------------------------------------------------------
    async def observe(self, desired: Sequence[DesiredComponent],
                      skip_intents: Collection[str] = ()) -> dict[str, Observed]:
        """Observations of every component the loop should care about.

        Components of ``skip_intents`` (intents that failed to render) are left out
        entirely, so they are neither pruned nor touched until the intent is fixed.
        """
        if self.records is None:
            self.records = self._load()
        keys = {d.key for d in desired} | set(self.records) | set(await self.driver.keys())
        keys = {k for k in keys if k.split(".", 1)[0] not in skip_intents}
        by_key = {d.key: d for d in desired}
        out = {}
        for key in keys:
            rec = self.records.get(key) or Record(key, intent=key.split(".", 1)[0])
            files = {f.path: file_sha256(f.path) for f in by_key[key].files} if key in by_key else {}
            out[key] = Observed(rec, await self.driver.status(key), files)
        return out

    async def plan(self, desired: Sequence[DesiredComponent],
                   skip_intents: Collection[str] = ()) -> list[Action]:
        self._settle()
        return plan(desired, await self.observe(desired, skip_intents), self.clock(), self.policy,
                    busy=frozenset(self.inflight))

    def _settle(self) -> None:
        for key, task in list(self.inflight.items()):
            if task.done():
                del self.inflight[key]

    # --- one pass --------------------------------------------------------------------
    async def run_pass(self, desired: Sequence[DesiredComponent],
                       skip_intents: Collection[str] = ()) -> list[Action]:
        """Plan and act. Starts run as background tasks (a slow pull or health wait of one
        component must not hold up the others, nor the pass); everything else is done here."""
        actions = await self.plan(desired, skip_intents)
        self.last_plan = actions
        by_key = {d.key: d for d in desired}
        probes = []
        for act in actions:
            d = by_key.get(act.key)
            if act.kind == "probe":
                probes.append(self._do(act, d))  # concurrently, below: one hung target must not
            elif act.kind in ("start", "restart") and d is not None:  # delay the others' probes
                self.emit({"event": "action", **act.to_dict()})
                self.inflight[act.key] = asyncio.create_task(self._start_guarded(act, d), name=f"start {act.key}")
            elif act.mutating:
                if act.key in self.inflight:  # pruned while starting: cancel the start first
                    await _cancel_and_wait([self.inflight.pop(act.key)])
                self.emit({"event": "action", **act.to_dict()})
                await self._do(act, d)
            else:
                self._note(act)
        if probes:
            await asyncio.gather(*probes)
        return actions

    async def _start_guarded(self, act: Action, d: DesiredComponent) -> None:
        try:
            await self._start(act, d)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not kill the loop; the record shows it
            log.exception("bootstrap start %s", d.key)
            self.emit({"event": "error", "component": d.key, "action": act.kind, "message": repr(exc)})
        finally:
            if self.on_settled is not None:
                self.on_settled()

    async def cancel_inflight(self) -> None:
        tasks = list(self.inflight.values())
        self.inflight.clear()
        await _cancel_and_wait(tasks)

    async def converge(self, desired: Sequence[DesiredComponent], *, timeout: float = 300.0,
                       skip_intents: Collection[str] = ()) -> list[Action]:
        """Passes until nothing is left to do or ``timeout``; returns the last plan.

        A component in backoff is waited for (the pass after its window retries it), so
        ``apply`` either converges or reports the crash loop when its time is up.
        """
        deadline = time.monotonic() + timeout
        while True:
            actions = await self.run_pass(desired, skip_intents)
            left = deadline - time.monotonic()
            if left <= 0:
                return actions
            if self.inflight:
                await asyncio.wait(set(self.inflight.values()), timeout=left, return_when=asyncio.FIRST_COMPLETED)
                continue
            if [a for a in actions if a.mutating and a.kind != "probe"]:
                continue
            waits = [a.until for a in actions if a.kind == "wait_backoff"]
            if not waits:
                return actions
            await asyncio.sleep(min(max(min(waits) - self.clock(), 0.01), left))

    # --- actions ---------------------------------------------------------------------
    def _put(self, rec: Record) -> None:
        assert self.records is not None
        if self.records.get(rec.key) != rec:
            self.records[rec.key] = rec
            self._save([rec])

    def _rec(self, key: str, d: DesiredComponent | None) -> Record:
        assert self.records is not None
        return self.records.get(key) or Record(key, intent=d.intent if d else key.split(".", 1)[0])

    def _note(self, act: Action) -> None:
        rec = self._rec(act.key, None)
        phase = {"wait_backoff": phase_after_failure(rec.restarts, self.policy), "blocked": "blocked",
                 "leave_exited": "exited"}.get(act.kind)
        if phase and rec.phase != phase:
            self._put(dataclasses.replace(rec, phase=phase))

    async def _do(self, act: Action, d: DesiredComponent | None) -> None:
        try:
            if act.kind == "remove":
                await self._remove(act.key)
            elif d is None:
                raise Internal(f"{act.kind} for unknown component {act.key}")
            elif act.kind == "render":
                for f in d.files:
                    if f.path in act.paths:
                        write_file(f)
                self.emit({"event": "rendered", "component": d.key, "paths": list(act.paths),
                           "reason": act.reason})
            elif act.kind in ("start", "restart"):
                await self._start(act, d)
            elif act.kind == "probe":
                await self._probe(d)
            elif act.kind == "reset_backoff":
                self._put(dataclasses.replace(self._rec(d.key, d), restarts=0, next_attempt_at=0.0))
        except VappError as exc:
            self.emit({"event": "error", "component": act.key, "action": act.kind, **exc.to_dict()})
            log.warning("bootstrap %s %s: %s", act.kind, act.key, exc.message)
        except OSError as exc:
            self.emit({"event": "error", "component": act.key, "action": act.kind, "message": str(exc)})
            log.warning("bootstrap %s %s: %s", act.kind, act.key, exc)

    async def _remove(self, key: str) -> None:
        await self.driver.remove(key)
        if self.bootstrap_dir is not None and "." in key:
            intent, comp = key.split(".", 1)
            remove_rendered(self.bootstrap_dir / intent / comp)
        self._forget(key)
        assert self.records is not None
        self.records.pop(key, None)
        self.emit({"event": "removed", "component": key})

    async def _start(self, act: Action, d: DesiredComponent) -> None:
        rec = self._rec(d.key, d)
        failure = act.reason.startswith(FAILURE_REASONS)
        restarts = rec.restarts + (1 if failure else 0)
        now = self.clock()
        self._put(dataclasses.replace(rec, phase="starting", restarts=restarts))
        if act.kind == "restart":
            await self.driver.stop(d.key)
        done = set(rec.done_execs)
        try:
            for task in d.tasks:
                await self._task(task, d, done)
        except (VappError, OSError) as exc:
            msg = exc.message if isinstance(exc, VappError) else str(exc)
            await self.driver.stop(d.key, grace=2.0)
            n = restarts + (0 if failure else 1)
            self._put(dataclasses.replace(
                self._rec(d.key, d), phase=phase_after_failure(n, self.policy), restarts=n,
                next_attempt_at=self.clock() + backoff_delay(n, self.policy), last_error=msg,
                healthy=False if d.health else None))
            self.emit({"event": "failed", "component": d.key, "message": msg, "restarts": n})
            return
        st = await self.driver.status(d.key)
        self._put(dataclasses.replace(
            self._rec(d.key, d), phase="running", started_at=st.started_at or now, last_error=None,
            healthy=True if d.health else None, probe_failures=0, last_probe_at=self.clock(),
            next_attempt_at=now + backoff_delay(restarts, self.policy) if restarts else 0.0,
            done_execs=tuple(sorted(done))))
        self.emit({"event": "started", "component": d.key, "reason": act.reason, "restarts": restarts})

    async def _task(self, task: Any, d: DesiredComponent, done: set[str]) -> None:
        kind = task.type
        self.emit({"event": "task", "component": d.key, "task": kind})
        if kind == "render":
            for f in d.files:
                if file_sha256(f.path) != f.sha256:
                    write_file(f)
        elif kind == "container":
            for v in d.volumes:
                Path(v).mkdir(parents=True, exist_ok=True, mode=0o700)
            for m in d.mounts:
                if m.create:
                    Path(m.source).mkdir(parents=True, exist_ok=True, mode=0o755)
            await self.driver.ensure_running(d)
        elif kind == "wait":
            await self._wait(task, d)
        elif kind == "exec":
            await self._exec(task, d, done)

    async def _wait(self, task: WaitTask, d: DesiredComponent) -> None:
        check = task.check or d.health.check
        probe_timeout = d.health.timeout_seconds if d.health else 5.0

        async def running() -> bool:
            return (await self.driver.status(d.key)).state == "running"

        await healthmod.wait_healthy(check, timeout=task.timeout_seconds, interval=task.interval_seconds,
                                     probe_timeout=probe_timeout, in_container=self._in(d), still_running=running)

    def _in(self, d: DesiredComponent) -> healthmod.Exec:
        async def run(argv: Sequence[str], timeout: float) -> tuple[int, str]:
            res = await self.driver.exec(d.key, argv, timeout=timeout)
            return res.exit_code, res.output

        return run

    async def _exec(self, task: ExecTask, d: DesiredComponent, done: set[str]) -> None:
        mark = f"{d.spec_hash}:{task.name}"
        if mark in done:
            return
        if task.unless:
            res = await self.driver.exec(d.key, task.unless, timeout=task.timeout_seconds)
            if res.exit_code == 0:
                done.add(mark)
                return
        res = await self.driver.exec(d.key, task.command, timeout=task.timeout_seconds)
        if res.exit_code != 0:
            raise FailedPrecondition(f"exec {task.name!r} exited {res.exit_code}: {res.output.strip()[-300:]}",
                                     phase="exec", category=Category.BOOTSTRAP)
        done.add(mark)
        self.emit({"event": "exec", "component": d.key, "task": task.name, "exit_code": 0})

    async def _probe(self, d: DesiredComponent) -> None:
        assert d.health is not None
        ok, detail = await healthmod.probe(d.health.check, d.health.timeout_seconds, self._in(d))
        rec = self._rec(d.key, d)
        fails = 0 if ok else rec.probe_failures + 1
        self._put(dataclasses.replace(rec, healthy=ok, probe_failures=fails, last_probe_at=self.clock(),
                                      phase="running" if ok else "unhealthy",
                                      last_error=None if ok else f"probe: {detail}"))
        if not ok:
            self.emit({"event": "probe_failed", "component": d.key, "detail": detail, "failures": fails})


def remove_rendered(root: Path) -> None:
    """Delete a pruned component's rendered files, keeping its data volumes (data is never pruned)."""
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name == "volumes":
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


CANCEL_WAIT_SECONDS = 10.0


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]], timeout: float = CANCEL_WAIT_SECONDS) -> None:
    """Cancel starts and wait for them, bounded: a start stuck in clean-up must not hang the loop or shutdown."""
    for t in tasks:
        t.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in done:
        if not t.cancelled():
            t.exception()  # retrieved: _start_guarded already reported it
    for t in pending:
        log.warning("bootstrap: %s did not finish %.0fs after cancellation; leaving it behind", t.get_name(), timeout)
