"""Plain values the planner reads and writes: desired components, observations, actions.

Nothing here does I/O. ``DesiredComponent`` is a fully rendered component
(every template expanded, every path absolute); ``Observed`` is what the loop
saw on the node plus the loop's own bookkeeping (restarts, backoff, probes);
``Action`` is one step of a plan.

Component lifecycle (``phase``, shown by ``bootstrap status``)::

    pending ──start──▶ starting ──tasks ok──▶ running ──probe fails xN─▶ unhealthy ─┐
       ▲                  │                     │                                   │
       │              task fails             exits/killed                           │
       │                  ▼                     ▼                                   │
       └──backoff over── backoff ◀──── restart (restarts+1, delay doubles) ◀───────┘
                          (crashloop once restarts ≥ 3)
    blocked: a dependency is not ready yet        exited: restart policy says leave it
    pruned: no intent wants it any more → stopped, removed, record deleted
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

RunState = Literal["running", "exited", "absent"]


@dataclass(frozen=True)
class RenderedFile:
    path: str  # absolute host path
    content: bytes
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class MountSpec:
    source: str
    target: str
    readonly: bool = True
    create: bool = False


@dataclass(frozen=True)
class DesiredComponent:
    key: str  # "<intent>.<component>", unique on the node
    intent: str
    name: str
    image: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    network: str = "host"
    runs_on: str = "container"  # or "host"
    privileged: bool = False
    directory: str = ""
    files: tuple[RenderedFile, ...] = ()
    volumes: tuple[str, ...] = ()  # host dirs the loop creates before starting
    depends_on: tuple[str, ...] = ()  # keys
    health: Any = None  # schema.Health, rendered
    tasks: tuple[Any, ...] = ()  # schema task models, rendered
    restart: str = "always"
    extra_hash: str = ""  # e.g. fingerprints of the certificates the component reads
    spec_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.spec_hash:
            object.__setattr__(self, "spec_hash", self.compute_hash())

    def compute_hash(self) -> str:
        doc = {
            "image": self.image, "command": self.command, "env": self.env,
            "mounts": [(m.source, m.target, m.readonly) for m in self.mounts], "network": self.network,
            "privileged": self.privileged, "runs_on": self.runs_on,
            "files": [(f.path, f.sha256, f.mode) for f in self.files], "extra": self.extra_hash,
            "tasks": [t.model_dump() if hasattr(t, "model_dump") else t for t in self.tasks],
            "health": self.health.model_dump() if hasattr(self.health, "model_dump") else self.health,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RuntimeStatus:
    """What the driver reports for one component."""

    state: RunState
    spec_hash: str | None = None  # the hash it was started with
    runtime_id: str | None = None  # pid or container id
    exit_code: int | None = None
    started_at: float | None = None


@dataclass(frozen=True)
class Record:
    """The loop's bookkeeping for one component (persisted in ``bootstrap_component``)."""

    key: str
    intent: str = ""
    phase: str = "pending"
    restarts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    last_probe_at: float = 0.0
    probe_failures: int = 0
    healthy: bool | None = None
    done_execs: tuple[str, ...] = ()  # "<spec_hash>:<task name>" of exec tasks that succeeded
    started_at: float | None = None


@dataclass(frozen=True)
class Observed:
    record: Record
    runtime: RuntimeStatus
    files: Mapping[str, str | None]  # desired path -> sha256 on disk (None: missing)


ActionKind = Literal["render", "start", "restart", "probe", "remove", "reset_backoff", "wait_backoff",
                     "blocked", "leave_exited", "busy"]

# Actions that change the node; the rest only explain why nothing happens.
MUTATING: frozenset[str] = frozenset({"render", "start", "restart", "probe", "remove", "reset_backoff"})


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    key: str
    reason: str
    paths: tuple[str, ...] = ()  # render: the files to (re)write
    waiting_for: tuple[str, ...] = ()  # blocked: dependency keys
    until: float = 0.0  # wait_backoff: when the next attempt may happen

    @property
    def mutating(self) -> bool:
        return self.kind in MUTATING

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.kind, "component": self.key, "reason": self.reason}
        if self.paths:
            out["paths"] = list(self.paths)
        if self.waiting_for:
            out["waiting_for"] = list(self.waiting_for)
        if self.until:
            out["until"] = self.until
        return out
