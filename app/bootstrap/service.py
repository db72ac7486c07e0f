"""BootstrapService: intents in, a converged node out. The one object the front doors call.

One pass (``reconcile_once``)::

    intents dir ──sync──▶ DB intents ──instantiate (profiles, variables)──▶ desired
    desired PKI/kubeconfig requests ──ensure (create, renew inside the window)──▶ <state_dir>/pki
    desired components ──Reconciler.run_pass (observe → plan → act)──▶ driver

An intent that fails to instantiate (bad value, broken template) is reported
and its running components are left alone: they are neither pruned nor
restarted until the intent is fixed, because a typo must not take a node down.
Blocking work (key generation, file hashing, database) runs in a worker
thread, so the front doors sharing the event loop are never held up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from app.bootstrap import kubeconfig as kubeconfigmod
from app.bootstrap import metrics as bmetrics
from app.bootstrap.catalog import ProfileStore
from app.bootstrap.driver import ComponentDriver
from app.bootstrap.instantiate import Instance, Intent, NodeContext, instantiate
from app.bootstrap.model import Action, DesiredComponent
from app.bootstrap.pki import LeafRequest, Pki, load_cert
from app.bootstrap.plan import Policy
from app.bootstrap.reconcile import Reconciler
from app.bootstrap.store import BootstrapStore, intent_dict, parse_intent
from app.bootstrap.variables import redact
from app.errors import VappError
from app.state.db import Database

log = logging.getLogger(__name__)


class EventLog:
    """Recent progress events (for status) and live subscribers (vappc stream, REST)."""

    def __init__(self, size: int = 500) -> None:
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = itertools.count(1)
        self._subs: dict[asyncio.Queue[dict[str, Any]], asyncio.AbstractEventLoop] = {}

    def emit(self, event: dict[str, Any]) -> None:
        """Record and fan out; callable from the loop or from a worker thread (PKI, rendering)."""
        event = {"seq": next(self._seq), "time": time.time(), **event}
        self.recent.append(event)
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for q, loop in list(self._subs.items()):
            if loop is here:
                _offer(q, event)
            else:
                loop.call_soon_threadsafe(_offer, q, event)

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self._subs[q] = asyncio.get_running_loop()
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subs.pop(q, None)


def _offer(q: asyncio.Queue[dict[str, Any]], event: dict[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        q.put_nowait(event)  # a slow subscriber loses events, never blocks the loop


@dataclass
class Desired:
    instances: list[Instance] = field(default_factory=list)
    components: list[DesiredComponent] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # intent -> error message


class BootstrapService:
    def __init__(self, *, db: Database, driver: ComponentDriver, node: NodeContext, intents_dir: Path,
                 profile_dirs: Sequence[Path] = (), interval: float = 10.0, renew_days: int = 90,
                 policy: Policy = Policy()) -> None:
        self.store = BootstrapStore(db)
        self.catalog = ProfileStore(profile_dirs)
        self.node = node
        self.intents_dir = intents_dir
        self.interval = interval
        self.pki = Pki(node.pki_dir, renew_before=dt.timedelta(days=renew_days))
        self.events = EventLog()
        self.driver = driver
        self.reconciler = Reconciler(driver, load=self.store.records, save=self.store.save_records,
                                     forget=self.store.delete_record, policy=policy, emit=self._loop_event,
                                     bootstrap_dir=node.bootstrap_dir)
        self.gauges = bmetrics.StateGauges(node.pki_dir)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.reconciler.on_settled = self._wake.set  # a finished start lets dependents go at once
        self._fp_cache: dict[str, tuple[int, str]] = {}
        self.last_problems: list[str] = []
        self.last_failed: dict[str, str] = {}

    # --- intents ---------------------------------------------------------------------
    def put_intent(self, data: Any) -> dict[str, Any]:
        doc = parse_intent(data)
        # Refuse what cannot render now (unknown profile, bad value, broken template), not on the
        # next pass: the stored intent and the running components stay as they were.
        profile, tdir = self.catalog.get(doc.profile)
        instantiate(Intent(doc.name, doc.profile, doc.values, tuple(doc.roles)), profile, tdir, self.node)
        row, changed = self.store.put_intent(doc)
        if changed:
            self.events.emit({"event": "intent", "name": doc.name, "generation": row.generation})
            self._wake.set()
        return {**intent_dict(row), "values": redact(profile.variables, doc.values), "changed": changed}

    def delete_intent(self, name: str) -> None:
        self.store.delete_intent(name)
        self.events.emit({"event": "intent_deleted", "name": name})
        self._wake.set()

    def list_intents(self) -> list[dict[str, Any]]:
        """Every intent; values of variables the profile declares ``secret`` are masked."""
        out = []
        for row in self.store.intent_rows():
            d = intent_dict(row)
            with contextlib.suppress(VappError):
                d["values"] = redact(self.catalog.get(row.profile)[0].variables, d["values"])
            out.append(d)
        return out

    # --- desired state ---------------------------------------------------------------
    def _fingerprints(self) -> dict[str, str]:
        out: dict[str, str] = {}
        root = self.node.pki_dir
        if not root.is_dir():
            return out
        for p in root.glob("*.crt"):
            key = str(p)
            mtime = p.stat().st_mtime_ns
            hit = self._fp_cache.get(key)
            if hit is None or hit[0] != mtime:
                hit = (mtime, load_cert(p).fingerprint(hashes.SHA256()).hex())
                self._fp_cache[key] = hit
            out[key] = hit[1]
        return out

    def _instantiate_all(self) -> Desired:
        out = Desired()
        fps = self._fingerprints()
        for intent in self.store.intents():
            try:
                profile, tdir = self.catalog.get(intent.profile)
                inst = instantiate(intent, profile, tdir, self.node, fps)
            except VappError as exc:
                out.failed[intent.name] = exc.message
                continue
            out.instances.append(inst)
            out.components.extend(inst.components)
        keys = [c.key for c in out.components]
        if len(keys) != len(set(keys)):
            raise VappError("two intents produce the same component key")
        return out

    def _ensure_pki(self, desired: Desired) -> bool:
        cas: list[str] = []
        leaves: dict[str, LeafRequest] = {}
        kcs: list[kubeconfigmod.KubeconfigRequest] = []
        sa = False
        for inst in desired.instances:
            cas += [c for c in inst.cas if c not in cas]
            leaves.update({leaf.name: leaf for leaf in inst.leaves})
            kcs += inst.kubeconfigs
            sa = sa or inst.sa_key
        if not (cas or leaves or kcs or sa):
            return False
        report = self.pki.ensure(cas, list(leaves.values()), sa_key=sa)
        written = kubeconfigmod.ensure(self.node.kubeconfig_dir, kcs, self.pki) if kcs else []
        for name in report.created:
            self.events.emit({"event": "pki_created", "name": name})
        for name in report.renewed:
            self.events.emit({"event": "cert_renewed", "name": name})
        for name in written:
            self.events.emit({"event": "kubeconfig_written", "name": name})
        return report.changed or bool(written)

    def _prepare(self) -> Desired:
        """Sync the directory, render, ensure PKI (worker thread)."""
        self.last_problems = self.store.sync_directory(self.intents_dir)
        desired = self._instantiate_all()
        if self._ensure_pki(desired):
            desired = self._instantiate_all()  # certificates changed: hashes of their users too
        for name, msg in desired.failed.items():
            if self.last_failed.get(name) != msg:  # once per new error, not on every pass
                self.events.emit({"event": "intent_error", "name": name, "message": msg})
        self.last_failed = desired.failed
        return desired

    # --- passes ----------------------------------------------------------------------
    def _loop_event(self, event: dict[str, Any]) -> None:
        bmetrics.on_event(event)  # restarts are counted from the same events the stream shows
        self.events.emit(event)

    async def reconcile_once(self) -> list[Action]:
        async with self._lock:
            started = time.perf_counter()
            try:
                desired = await asyncio.to_thread(self._prepare)
                actions = await self.reconciler.run_pass(desired.components, skip_intents=set(desired.failed))
            except Exception:
                bmetrics.observe_pass(time.perf_counter() - started, None)
                raise
            bmetrics.observe_pass(time.perf_counter() - started, actions)
            self.gauges.observe((self.reconciler.records or {}).values())
            return actions

    async def apply(self, timeout: float = 300.0) -> dict[str, Any]:
        """Converge now: passes until nothing is left to do; returns the status."""
        async with self._lock:
            desired = await asyncio.to_thread(self._prepare)
            await self.reconciler.converge(desired.components, timeout=timeout,
                                           skip_intents=set(desired.failed))
            self.gauges.observe((self.reconciler.records or {}).values())
        return await self.status()

    async def plan(self) -> dict[str, Any]:
        """What a pass would do, without doing it (nothing on disk or in the DB changes)."""
        async with self._lock:
            desired = await asyncio.to_thread(self._instantiate_all)
            pki = await asyncio.to_thread(self._pki_plan, desired)
            actions = await self.reconciler.plan(desired.components, skip_intents=set(desired.failed))
        return {"pki": pki, "actions": [a.to_dict() for a in actions],
                "changes": sum(1 for a in actions if a.mutating) + len(pki), "intent_errors": desired.failed}

    def _pki_plan(self, desired: Desired) -> list[dict[str, str]]:
        now = dt.datetime.now(dt.UTC)
        out = []
        for inst in desired.instances:
            for ca in inst.cas:
                if not self.pki.crt(ca).exists():
                    out.append({"name": ca, "action": "create", "reason": "missing CA"})
            reqs = list(inst.leaves) + [kubeconfigmod.leaf_for(k) for k in inst.kubeconfigs]
            for req in reqs:
                status = "missing" if not self.pki.crt(req.ca).exists() else self.pki.leaf_status(req, now)
                if status != "ok":
                    out.append({"name": req.name, "action": "create" if status == "missing" else "renew",
                                "reason": status})
        unique = {d["name"]: d for d in out}
        return list(unique.values())

    async def run_forever(self) -> None:
        """The daemon's background task: a pass, then sleep until woken or something is due.

        Cancelling it cancels starts in progress; what they left is found by the next run."""
        try:
            while True:
                self._wake.clear()
                try:
                    await self.reconcile_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the loop must outlive any one bad pass
                    log.exception("bootstrap pass failed")
                    self.events.emit({"event": "pass_failed", "message": str(exc)})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._next_wait())
        finally:
            await self.reconciler.cancel_inflight()

    def _next_wait(self) -> float:
        now = time.time()
        due = [r.next_attempt_at - now for r in (self.reconciler.records or {}).values() if r.next_attempt_at > now]
        return max(0.05, min([self.interval, *due]))

    def wake(self) -> None:
        self._wake.set()

    async def apply_intent(self, data: Any, on_event: Callable[[dict[str, Any]], None] | None = None,
                           *, timeout: float = 300.0) -> dict[str, Any]:
        """Store one intent and converge it, forwarding its progress events (a vappc
        ``ApplyIntent`` backend): returns the intent and the status of its components."""
        name = data.get("name") if isinstance(data, dict) else None
        q = self.events.subscribe()
        try:
            stored = self.put_intent(data)
            task = asyncio.create_task(self.apply(timeout=timeout))
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    event = getter.result()
                    mine = event.get("name") == name or str(event.get("component", "")).startswith(f"{name}.")
                    if on_event is not None and (mine or event["event"].startswith(("pki_", "cert_"))):
                        on_event(event)
                else:
                    getter.cancel()
                if task.done() and q.empty():
                    break
            status = task.result()
        finally:
            self.events.unsubscribe(q)
        comps = [c for c in status["components"] if c["intent"] == name]
        return {"intent": stored, "components": comps, "error": status["intent_errors"].get(name)}

    # --- status and certificates -----------------------------------------------------
    async def status(self) -> dict[str, Any]:
        records = self.reconciler.records
        if records is None:
            records = await asyncio.to_thread(self.store.records)
        comps = []
        for key in sorted(records):
            rec = records[key]
            rt = await self.driver.status(key)
            comps.append({"component": key, "intent": rec.intent, "phase": rec.phase, "state": rt.state,
                          "id": rt.runtime_id, "spec_hash": rt.spec_hash, "restarts": rec.restarts,
                          "healthy": rec.healthy, "last_error": rec.last_error,
                          "next_attempt_at": rec.next_attempt_at or None, "started_at": rec.started_at})
        return {"components": comps, "intent_errors": self.last_failed, "intent_file_problems": self.last_problems,
                "last_plan": [a.to_dict() for a in self.reconciler.last_plan],
                "events": list(self.events.recent)[-50:]}

    def certs_list(self) -> list[dict[str, object]]:
        now = dt.datetime.now(dt.UTC)
        return [c.to_dict(now) for c in self.pki.list()]

    def certs_renew(self, names: Sequence[str] = (), *, force: bool = False) -> list[str]:
        renewed = self.pki.renew(list(names) or None, force=force)
        for n in renewed:
            self.events.emit({"event": "cert_renewed", "name": n})
        if renewed:
            self._wake.set()
        return renewed

