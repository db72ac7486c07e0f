"""vappc's intent commands (``ApplyIntent``, ``DeleteIntent``, ``ListIntents``) over the bootstrap service.

The listener hands these requests here; this module translates and nothing else::

    ApplyIntent {intent, timeout_secs?}
        └─ bootstrap.apply_intent(intent, on_event) ── events ──► Progress lines
              │                                        (instance_name = component key,
              │                                         phase = the task or action,
              │                                         task_name = an exec task's name)
              ├─ every component of the intent running ──► Ok  Intent {intent, components}
              ├─ a component failed / did not converge  ──► Error Bootstrap (phase = component)
              └─ bad intent or profile (the field named) ──► Error Config (phase = intent/profile/...)
    DeleteIntent {name}  ──► Ok Unit; unknown name ──► Error Config (as REST answers 404)
    ListIntents          ──► Ok IntentList {intents, components}

Percentages are per component (the listener's clamp keeps them monotonic per
``instance_name``): a start action 5, ``render`` 20, ``container`` 40, ``wait``
70, ``exec`` 85, started 100. Events about the whole intent (stored, PKI) carry
no ``instance_name`` and percentage 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from app.errors import Category, FailedPrecondition, Internal, Kind, VappError
from app.services.app_types import Progress
from app.vappc import protocol as p

EventFn = Callable[[dict[str, Any]], None]
ProgressFn = Callable[[Progress], None]
COMMANDS = frozenset({"ApplyIntent", "DeleteIntent", "ListIntents"})
DEFAULT_APPLY_TIMEOUT = 300.0
_TASK_PCT = {"render": 20, "container": 40, "wait": 70, "exec": 85}
_OK_PHASES = frozenset({"running", "exited"})
# Errors about what the agent sent (the intent, its profile, a value): not the node's fault.
_CLIENT_KINDS = frozenset({Kind.INVALID_ARGUMENT, Kind.NOT_FOUND, Kind.FAILED_PRECONDITION, Kind.ALREADY_EXISTS})


class IntentBackend(Protocol):
    """What the listener needs from ``app.bootstrap.service.BootstrapService``."""

    async def apply_intent(self, data: Any, on_event: EventFn | None = None, *,
                           timeout: float = DEFAULT_APPLY_TIMEOUT) -> dict[str, Any]: ...
    def delete_intent(self, name: str) -> None: ...
    def list_intents(self) -> list[dict[str, Any]]: ...
    async def status(self) -> dict[str, Any]: ...


def event_to_progress(event: dict[str, Any]) -> Progress | None:
    """One bootstrap event as a Progress line; ``None`` for events the agent need not see."""
    kind = event.get("event")
    comp = event.get("component")
    match kind:
        case "intent":
            return Progress(0, f"intent {event.get('name')} stored (generation {event.get('generation')})",
                            phase="intent")
        case "pki_created" | "cert_renewed" | "kubeconfig_written":
            verb = {"pki_created": "created", "cert_renewed": "renewed", "kubeconfig_written": "written"}[kind]
            return Progress(0, f"{event.get('name')} {verb}", phase="pki", task_name=event.get("name"))
        case "intent_error":
            return Progress(0, f"intent error: {event.get('message')}", phase="intent")
        case "action":
            return Progress(5, f"{event.get('action')}: {event.get('reason')}", phase=event.get("action"),
                            instance_name=comp)
        case "task":
            task = str(event.get("task"))
            return Progress(_TASK_PCT.get(task, 10), f"task {task}", phase=task, instance_name=comp)
        case "rendered":
            return Progress(20, f"rendered {len(event.get('paths') or [])} file(s)", phase="render",
                            instance_name=comp)
        case "exec":
            return Progress(85, f"exec {event.get('task')} done", phase="exec", instance_name=comp,
                            task_name=event.get("task"))
        case "started":
            return Progress(100, "running", phase="container", instance_name=comp)
        case "failed" | "error":
            return Progress(0, f"failed: {event.get('message')}", phase=event.get("action") or "start",
                            instance_name=comp)
        case "removed":
            return Progress(100, "removed", phase="remove", instance_name=comp)
        case "probe_failed":
            return Progress(0, f"health probe failed: {event.get('detail')}", phase="health", instance_name=comp)
    return None


def _as_config(exc: VappError) -> VappError:
    """A refusal of the agent's input is Config (not retryable), whatever layer raised it."""
    if exc.kind in _CLIENT_KINDS and exc.category is not Category.CONFIG:
        exc.category = Category.CONFIG
    return exc


def _unconverged(components: list[dict[str, Any]]) -> dict[str, Any] | None:
    for c in components:
        if c["phase"] not in _OK_PHASES or c.get("healthy") is False or (
                c["phase"] == "exited" and c.get("last_error")):
            return c
    return None


async def apply_intent(bootstrap: IntentBackend, intent: dict[str, Any], timeout: float | None,
                       progress: ProgressFn) -> dict[str, Any]:
    """Store and converge one intent, streaming its events; the ``Intent`` result or a raise."""
    def on_event(event: dict[str, Any]) -> None:
        p = event_to_progress(event)
        if p is not None:
            progress(p)

    try:
        result = await bootstrap.apply_intent(intent, on_event, timeout=timeout or DEFAULT_APPLY_TIMEOUT)
    except VappError as exc:
        raise _as_config(exc) from None
    name = result["intent"].get("name")
    if result.get("error"):
        raise VappError(f"intent {name}: {result['error']}", category=Category.BOOTSTRAP, phase="intent")
    bad = _unconverged(result["components"])
    if bad is not None:
        why = bad.get("last_error") or ("unhealthy" if bad.get("healthy") is False else "did not converge")
        raise VappError(f"{bad['component']}: {bad['phase']}: {why}", category=Category.BOOTSTRAP,
                        phase=bad["component"], details={"components": result["components"]})
    return {"intent": result["intent"], "components": result["components"]}


async def delete_intent(bootstrap: IntentBackend, name: str) -> None:
    try:
        bootstrap.delete_intent(name)  # a short DB write; it wakes the loop (an asyncio.Event): stay on it
    except VappError as exc:
        raise _as_config(exc) from None


async def list_intents(bootstrap: IntentBackend) -> dict[str, Any]:
    intents = await asyncio.to_thread(bootstrap.list_intents)
    status = await bootstrap.status()
    return {"intents": intents, "components": status["components"]}


async def execute(bootstrap: IntentBackend | None, req: p.Request, progress: ProgressFn) -> bytes:
    """The terminal line of one intent command (errors raise; the listener encodes them)."""
    if bootstrap is None:
        raise FailedPrecondition("bootstrap is disabled on this node", category=Category.CONFIG, phase="intent")
    rid, d = req.id, req.data
    match req.cmd:
        case "ApplyIntent":
            return p.ok_line("Intent", await apply_intent(bootstrap, d.intent, d.timeout_secs, progress), rid)
        case "DeleteIntent":
            await delete_intent(bootstrap, d.name)
            return p.ok_line("Unit", req_id=rid)
        case "ListIntents":
            return p.ok_line("IntentList", await list_intents(bootstrap), rid)
    raise Internal(f"command {req.cmd} has no handler")
