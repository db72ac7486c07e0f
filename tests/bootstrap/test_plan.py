"""The planner's decision table, branch by branch (pure: no node needed)."""

from __future__ import annotations

import pytest

from app.bootstrap.model import DesiredComponent, Observed, Record, RenderedFile, RuntimeStatus
from app.bootstrap.plan import Policy, backoff_delay, is_noop, phase_after_failure, plan
from app.bootstrap.schema import Health

NOW = 1000.0
POLICY = Policy(backoff_base=1.0, backoff_max=8.0, backoff_reset=60.0, crashloop_after=3)
HEALTH = Health.model_validate({"check": {"type": "tcp", "port": 1}, "interval_seconds": 10,
                                "failure_threshold": 2})


def comp(key: str = "i.a", *, deps: tuple[str, ...] = (), health: Health | None = None, restart: str = "always",
         files: tuple[RenderedFile, ...] = (), image: str = "img") -> DesiredComponent:
    return DesiredComponent(key=key, intent=key.split(".")[0], name=key.split(".")[1], image=image,
                            command=("run",), files=files, depends_on=deps, health=health, restart=restart)


def running(d: DesiredComponent, *, spec: str | None = None, healthy: bool | None = True, **rec: object) -> Observed:
    fields = {"started_at": NOW - 10, "last_probe_at": NOW - 1, "healthy": healthy, **rec}
    return Observed(Record(d.key, d.intent, "running", **fields),  # type: ignore[arg-type]
                    RuntimeStatus("running", spec or d.spec_hash, "1", None, NOW - 10),
                    {f.path: f.sha256 for f in d.files})


def stopped(d: DesiredComponent, state: str = "exited", *, code: int | None = 1, spec: str | None = None,
            **rec: object) -> Observed:
    fields = {"started_at": NOW - 10, **rec}
    return Observed(Record(d.key, d.intent, "running", **fields),  # type: ignore[arg-type]
                    RuntimeStatus(state, spec or d.spec_hash, "1", code), {f.path: f.sha256 for f in d.files})  # type: ignore[arg-type]


def kinds(actions: list) -> list[tuple[str, str]]:
    return [(a.kind, a.key) for a in actions]


def test_fresh_component_is_rendered_then_started() -> None:
    f = RenderedFile("/x/config", b"a")
    d = comp(files=(f,))
    acts = plan([d], {}, NOW, POLICY)
    assert kinds(acts) == [("render", "i.a"), ("start", "i.a")]
    assert acts[0].paths == ("/x/config",) and acts[0].reason == "missing"
    assert acts[1].reason == "not created"


def test_steady_state_is_a_noop() -> None:
    d = comp(health=HEALTH)
    acts = plan([d], {d.key: running(d)}, NOW, POLICY)
    assert acts == [] and is_noop(acts)


def test_edited_config_is_rerendered_without_restart() -> None:
    f = RenderedFile("/x/config", b"want")
    d = comp(files=(f,))
    obs = running(d)
    obs = Observed(obs.record, obs.runtime, {"/x/config": "0" * 64})
    acts = plan([d], {d.key: obs}, NOW, POLICY)
    assert kinds(acts) == [("render", "i.a")] and acts[0].reason == "config drift"


def test_deleted_config_is_rerendered() -> None:
    f = RenderedFile("/x/config", b"want")
    d = comp(files=(f,))
    obs = running(d)
    acts = plan([d], {d.key: Observed(obs.record, obs.runtime, {"/x/config": None})}, NOW, POLICY)
    assert kinds(acts) == [("render", "i.a")] and acts[0].reason == "missing"


def test_changed_spec_restarts() -> None:
    d = comp()
    acts = plan([d], {d.key: running(d, spec="old")}, NOW, POLICY)
    assert kinds(acts) == [("restart", "i.a")] and acts[0].reason == "spec changed"


def test_spec_hash_covers_image_command_files_and_certificates() -> None:
    base = comp(files=(RenderedFile("/f", b"1"),))
    assert comp(files=(RenderedFile("/f", b"1"),)).spec_hash == base.spec_hash
    assert comp(files=(RenderedFile("/f", b"2"),)).spec_hash != base.spec_hash
    assert comp(files=(RenderedFile("/f", b"1"),), image="other").spec_hash != base.spec_hash
    renewed = DesiredComponent(**{**base.__dict__, "extra_hash": "/pki/x.crt=ab", "spec_hash": ""})
    assert renewed.spec_hash != base.spec_hash


@pytest.mark.parametrize("state,reason", [("exited", "exited (code 1)"), ("absent", "gone")])
def test_dead_component_restarts_immediately_first_time(state: str, reason: str) -> None:
    d = comp()
    acts = plan([d], {d.key: stopped(d, state)}, NOW, POLICY)
    assert kinds(acts) == [("start", "i.a")] and acts[0].reason == reason


def test_unknown_exit_code_is_said_so() -> None:
    d = comp()
    acts = plan([d], {d.key: stopped(d, code=None)}, NOW, POLICY)
    assert acts[0].reason == "exited (code unknown)"


def test_backoff_window_is_respected() -> None:
    d = comp()
    acts = plan([d], {d.key: stopped(d, restarts=2, next_attempt_at=NOW + 5)}, NOW, POLICY)
    assert kinds(acts) == [("wait_backoff", "i.a")] and acts[0].until == NOW + 5 and is_noop(acts)
    acts = plan([d], {d.key: stopped(d, restarts=2, next_attempt_at=NOW - 0.1)}, NOW, POLICY)
    assert kinds(acts) == [("start", "i.a")]


def test_backoff_doubles_and_caps_and_crashloop_label() -> None:
    assert [backoff_delay(n, POLICY) for n in range(0, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(10_000, POLICY) == 8.0
    assert [phase_after_failure(n, POLICY) for n in (1, 2, 3, 4)] == ["backoff", "backoff", "crashloop",
                                                                      "crashloop"]


@pytest.mark.parametrize("policy,code,expect", [
    ("never", 0, "leave_exited"), ("never", 1, "leave_exited"),
    ("on-failure", 0, "leave_exited"), ("on-failure", 1, "start"), ("always", 0, "start"),
])
def test_restart_policies(policy: str, code: int, expect: str) -> None:
    d = comp(restart=policy)
    acts = plan([d], {d.key: stopped(d, code=code)}, NOW, POLICY)
    assert kinds(acts) == [(expect, "i.a")]


def test_restart_policy_does_not_keep_an_old_spec_exited() -> None:
    d = comp(restart="never")
    acts = plan([d], {d.key: stopped(d, code=0, spec="old")}, NOW, POLICY)
    assert kinds(acts) == [("start", "i.a")]


def test_dependents_wait_for_dependencies() -> None:
    db, app = comp("i.db", health=HEALTH), comp("i.app", deps=("i.db",))
    acts = plan([app, db], {}, NOW, POLICY)
    assert kinds(acts) == [("start", "i.db"), ("blocked", "i.app")]
    assert acts[1].waiting_for == ("i.db",)
    # db running but not yet healthy: still blocked
    acts = plan([app, db], {db.key: running(db, healthy=None)}, NOW, POLICY)
    assert ("blocked", "i.app") in kinds(acts)
    # healthy: app starts
    acts = plan([app, db], {db.key: running(db)}, NOW, POLICY)
    assert kinds(acts) == [("start", "i.app")]


def test_dependency_in_backoff_blocks_dependents() -> None:
    db, app = comp("i.db"), comp("i.app", deps=("i.db",))
    acts = plan([app, db], {db.key: stopped(db, restarts=1, next_attempt_at=NOW + 9)}, NOW, POLICY)
    assert kinds(acts) == [("wait_backoff", "i.db"), ("blocked", "i.app")]


def test_spec_change_of_running_dependent_waits_for_restarting_dependency() -> None:
    db, app = comp("i.db"), comp("i.app", deps=("i.db",))
    acts = plan([app, db], {db.key: running(db, spec="old"), app.key: running(app, spec="old")}, NOW, POLICY)
    assert kinds(acts) == [("restart", "i.db"), ("blocked", "i.app")]


def test_probe_due_and_unhealthy_restart() -> None:
    d = comp(health=HEALTH)
    acts = plan([d], {d.key: running(d, last_probe_at=NOW - 11)}, NOW, POLICY)
    assert kinds(acts) == [("probe", "i.a")]
    acts = plan([d], {d.key: running(d, probe_failures=2, healthy=False)}, NOW, POLICY)
    assert kinds(acts) == [("restart", "i.a")] and acts[0].reason.startswith("unhealthy")
    acts = plan([d], {d.key: running(d, probe_failures=1, healthy=False)}, NOW, POLICY)
    assert acts == []


def test_probe_does_not_block_dependents() -> None:
    db, app = comp("i.db", health=HEALTH), comp("i.app", deps=("i.db",))
    acts = plan([app, db], {db.key: running(db, last_probe_at=0)}, NOW, POLICY)
    assert kinds(acts) == [("probe", "i.db"), ("start", "i.app")]


def test_backoff_is_forgiven_after_a_long_run() -> None:
    d = comp()
    obs = running(d, restarts=4)
    obs = Observed(obs.record, RuntimeStatus("running", d.spec_hash, "1", None, NOW - 61), obs.files)
    acts = plan([d], {d.key: obs}, NOW, POLICY)
    assert kinds(acts) == [("reset_backoff", "i.a")]
    obs = Observed(obs.record, RuntimeStatus("running", d.spec_hash, "1", None, NOW - 30), obs.files)
    assert plan([d], {d.key: obs}, NOW, POLICY) == []


def test_undesired_components_are_pruned() -> None:
    d = comp()
    other = comp("j.b")
    acts = plan([d], {d.key: running(d), other.key: running(other)}, NOW, POLICY)
    assert kinds(acts) == [("remove", "j.b")]
    assert kinds(plan([], {other.key: stopped(other)}, NOW, POLICY)) == [("remove", "j.b")]


def test_order_follows_dependencies_not_input() -> None:
    a, b, c = comp("i.a", deps=("i.b",)), comp("i.b", deps=("i.c",)), comp("i.c")
    ready = {k.key: running(k) for k in (b, c)}
    acts = plan([a, b, c], {**ready, "i.b": running(b, spec="x")}, NOW, POLICY)
    assert kinds(acts) == [("restart", "i.b"), ("blocked", "i.a")]


def test_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        plan([comp("i.a", deps=("i.b",)), comp("i.b", deps=("i.a",))], {}, NOW, POLICY)


def test_plan_is_deterministic() -> None:
    ds = [comp(f"i.c{n}") for n in range(20)]
    assert plan(ds, {}, NOW, POLICY) == plan(list(ds), {}, NOW, POLICY)


def test_busy_components_get_no_action_and_block_dependents() -> None:
    db, app = comp("i.db"), comp("i.app", deps=("i.db",))
    acts = plan([app, db], {}, NOW, POLICY, busy={"i.db"})
    assert kinds(acts) == [("busy", "i.db"), ("blocked", "i.app")] and is_noop(acts)
    # a busy component no longer wanted is still pruned (the executor cancels the start)
    acts = plan([], {db.key: stopped(db, "absent")}, NOW, POLICY, busy={"i.db"})
    assert kinds(acts) == [("remove", "i.db")]
