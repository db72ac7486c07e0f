"""The planner: a pure diff of desired components against what the node has.

``plan(desired, observed, now, policy)`` returns the actions that bring the
node one step closer to the desired state, in dependency order. It reads no
clock, no disk, no process table: everything arrives as arguments, so every
branch below is tested exhaustively without a node (``tests/bootstrap/test_plan.py``).

Decision table for one desired component (first match wins)::

    files on disk differ from the rendering   → render   (config drift / missing file)
    running, same spec:
        probe failures ≥ threshold            → restart  (unhealthy)
        probe due                             → probe
        restarts > 0, up ≥ backoff_reset      → reset_backoff
        otherwise                             → nothing (steady state: the no-op pass)
    running, other spec                       → restart  (spec changed), once dependencies are ready
    exited/absent:
        restart policy says leave it          → leave_exited
        inside the backoff window             → wait_backoff
        a dependency not ready                → blocked
        otherwise                             → start    (not created / exited / gone)
    observed but not desired                  → remove   (pruned; a start in progress is cancelled)
    a start still in progress (``busy``)      → busy     (no action; counts as not ready)

A dependency is *ready* when it runs the desired spec, needs no render, is
healthy (or has no health check) and is not itself being (re)started this pass.
Backoff: the n-th consecutive restart waits ``min(base·2^(n-1), max)`` before
the next one; ``crashloop`` is the phase once n ≥ ``crashloop_after``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from app.bootstrap.graph import topo_order
from app.bootstrap.model import Action, DesiredComponent, Observed


@dataclass(frozen=True)
class Policy:
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    backoff_reset: float = 600.0  # running this long forgives earlier crashes
    crashloop_after: int = 3


def backoff_delay(restarts: int, policy: Policy) -> float:
    """Delay before the attempt that follows the ``restarts``-th restart."""
    if restarts <= 0:
        return 0.0
    return float(min(policy.backoff_base * 2 ** min(restarts - 1, 30), policy.backoff_max))


def phase_after_failure(restarts: int, policy: Policy) -> str:
    return "crashloop" if restarts >= policy.crashloop_after else "backoff"


def _render_action(d: DesiredComponent, obs: Observed | None) -> Action | None:
    stale = []
    reason = "missing"
    for f in d.files:
        have = obs.files.get(f.path) if obs else None
        if have != f.sha256:
            stale.append(f.path)
            if have is not None:
                reason = "config drift"
    if not stale:
        return None
    return Action("render", d.key, reason, paths=tuple(stale))


def _running_same_spec(d: DesiredComponent, obs: Observed, now: float, policy: Policy) -> Action | None:
    rec = obs.record
    health = d.health
    if health is not None and rec.probe_failures >= health.failure_threshold:
        return Action("restart", d.key, f"unhealthy ({rec.probe_failures} failed probes)")
    if health is not None and now >= rec.last_probe_at + health.interval_seconds:
        return Action("probe", d.key, "probe due")
    started = obs.runtime.started_at or rec.started_at
    if rec.restarts > 0 and started is not None and now - started >= policy.backoff_reset:
        return Action("reset_backoff", d.key, f"up {now - started:.0f}s")
    return None


def _stopped(d: DesiredComponent, obs: Observed | None, now: float, waiting: tuple[str, ...]) -> Action:
    rt = obs.runtime if obs else None
    rec = obs.record if obs else None
    if rt is not None and rt.state == "exited" and rt.spec_hash == d.spec_hash:
        code = rt.exit_code
        if d.restart == "never" or (d.restart == "on-failure" and code == 0):
            return Action("leave_exited", d.key, f"exited (code {code}); restart policy {d.restart}")
    if rec is not None and now < rec.next_attempt_at:
        return Action("wait_backoff", d.key, f"backoff after {rec.restarts} restarts", until=rec.next_attempt_at)
    if waiting:
        return Action("blocked", d.key, "waiting for dependencies", waiting_for=waiting)
    if rt is None or rec is None or rec.started_at is None:
        return Action("start", d.key, "not created")
    if rt.state == "exited":
        shown = "unknown" if rt.exit_code is None else str(rt.exit_code)
        return Action("start", d.key, f"exited (code {shown})")
    return Action("start", d.key, "gone")


def plan(desired: Sequence[DesiredComponent], observed: Mapping[str, Observed], now: float,
         policy: Policy = Policy(), busy: Collection[str] = ()) -> list[Action]:
    """``busy``: components whose start is still running (in the background); they get no
    action and count as not ready, so their dependents wait."""
    by_key = {d.key: d for d in desired}
    order = topo_order({d.key: d.depends_on for d in desired})
    actions: list[Action] = []
    not_ready: set[str] = set()
    for key in order:
        d = by_key[key]
        obs = observed.get(key)
        if key in busy:
            actions.append(Action("busy", key, "start in progress"))
            not_ready.add(key)
            continue
        render = _render_action(d, obs)
        if render:
            actions.append(render)
        waiting = tuple(dep for dep in d.depends_on if dep in not_ready or dep not in by_key)
        rt = obs.runtime if obs else None
        act: Action | None
        if obs is not None and rt is not None and rt.state == "running":
            if rt.spec_hash == d.spec_hash:
                act = _running_same_spec(d, obs, now, policy)
            elif waiting:
                act = Action("blocked", key, "spec changed; waiting for dependencies", waiting_for=waiting)
            else:
                act = Action("restart", key, "spec changed")
        else:
            act = _stopped(d, obs, now, waiting)
        if act is not None:
            actions.append(act)
        ready = (
            render is None and obs is not None and rt is not None and rt.state == "running"
            and rt.spec_hash == d.spec_hash and (d.health is None or obs.record.healthy is True)
            and (act is None or act.kind in ("probe", "reset_backoff"))
        )
        if not ready:
            not_ready.add(key)
    for key in sorted(set(observed) - set(by_key)):
        actions.append(Action("remove", key, "no intent wants it"))
    return actions


def is_noop(actions: Sequence[Action]) -> bool:
    return not any(a.mutating for a in actions)
