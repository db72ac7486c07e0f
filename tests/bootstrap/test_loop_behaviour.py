"""Loop behaviour with real host processes (busybox httpd): tasks, exec once per spec,
dependencies, crash loops with growing backoff, unhealthy restarts, certificate renewal
restarting the component that reads the certificate, intents that fail to render."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import signal
from pathlib import Path

import pytest

from tests.bootstrap.conftest import wait_for
from tests.helpers.ports import free_port

pytestmark = pytest.mark.timeout(120)
PROFILES = Path(__file__).parent / "profiles"


def comps(status: dict) -> dict[str, dict]:
    return {c["component"]: c for c in status["components"]}


@pytest.fixture
def svc(svc_factory):  # type: ignore[no-untyped-def]
    return svc_factory(profile_dirs=(PROFILES,))


async def test_tasks_dependencies_and_exec_once_per_spec(svc) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": port}})
    status = await svc.apply(timeout=30)
    c = comps(status)
    assert c["toy.web"]["phase"] == "running" and c["toy.client"]["phase"] == "running", status
    order = [e["component"] for e in svc.events.recent if e["event"] == "started"]
    assert order == ["toy.web", "toy.client"]  # the dependent started after its dependency was healthy
    seed = svc.node.bootstrap_dir / "toy" / "web" / "seed.log"
    assert seed.read_text() == "seeded\n"

    # Kill web: restarted, the exec task is not run again for the same spec.
    os.kill(int(c["toy.web"]["id"]), signal.SIGKILL)
    await asyncio.sleep(0.05)
    status = await svc.apply(timeout=30)
    assert comps(status)["toy.web"]["restarts"] == 1
    assert seed.read_text() == "seeded\n"

    # A new spec (another greeting) re-renders, restarts and runs the exec again...
    svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": port, "greeting": "bonjour"}})
    await svc.apply(timeout=30)
    assert seed.read_text() == "seeded\nseeded\n"
    assert "bonjour" in (svc.node.bootstrap_dir / "toy" / "web" / "www" / "index.html").read_text()
    # ...unless its `unless` check says it is done already.
    (svc.node.bootstrap_dir / "toy" / "web" / "seed.skip").touch()
    svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": port, "greeting": "hallo"}})
    await svc.apply(timeout=30)
    assert seed.read_text() == "seeded\nseeded\n"


async def test_crash_loop_backs_off_exponentially(svc) -> None:  # type: ignore[no-untyped-def]
    svc.put_intent({"name": "bad", "profile": "toy", "values": {"port": free_port(), "mode": "crash"}})
    task = asyncio.create_task(svc.run_forever())
    try:
        async def looping() -> bool:
            c = comps(await svc.status()).get("bad.web")
            return bool(c and c["restarts"] >= 4 and c["phase"] == "crashloop")

        await wait_for(looping, timeout=30)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    c = comps(await svc.status())
    assert "exited before becoming healthy" in c["bad.web"]["last_error"]
    assert c["bad.web"]["next_attempt_at"] is not None
    assert c["bad.client"]["phase"] == "blocked"  # never started: its dependency is not healthy
    fails = [e["time"] for e in svc.events.recent if e["event"] == "failed" and e["component"] == "bad.web"]
    gaps = [b - a for a, b in itertools.pairwise(fails)]
    # backoff 0.2, 0.4, 0.8 ... s (policy in conftest): each gap at least the delay it had to wait
    assert len(gaps) >= 3 and gaps[1] >= 0.35 and gaps[2] >= 0.7, gaps


async def test_unhealthy_component_is_restarted(svc) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": port}})
    status = await svc.apply(timeout=30)
    pid = comps(status)["toy.web"]["id"]
    index = svc.node.bootstrap_dir / "toy" / "web" / "www" / "index.html"
    task = asyncio.create_task(svc.run_forever())
    try:
        # A server that stops answering (SIGSTOP) fails its probes and is replaced.
        os.kill(int(pid), signal.SIGSTOP)

        async def replaced() -> bool:
            c = comps(await svc.status())["toy.web"]
            return c["id"] != pid and c["phase"] == "running" and c["healthy"] is True

        await wait_for(replaced, timeout=30)
        assert any(e["event"] == "probe_failed" for e in svc.events.recent)
        assert any(e["event"] == "action" and e["reason"].startswith("unhealthy") for e in svc.events.recent)
        assert index.exists()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


async def test_certificate_renewal_restarts_its_users(svc) -> None:  # type: ignore[no-untyped-def]
    svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": free_port()}})
    status = await svc.apply(timeout=30)
    web, client = comps(status)["toy.web"]["id"], comps(status)["toy.client"]["id"]
    assert svc.certs_renew(["toy-server"]) == ["toy-server"]
    status = await svc.apply(timeout=30)
    # web reads the certificate: restarted; client does not: untouched.
    assert comps(status)["toy.web"]["id"] != web and comps(status)["toy.client"]["id"] == client
    assert comps(status)["toy.web"]["restarts"] == 0  # a renewal is not a crash

    # Automatic renewal: a certificate that expires inside the window is re-issued on the
    # next pass and its users restart.
    pki = svc.pki
    req = pki.request_from_cert("toy-server")
    pki.issue_leaf(req, validity=dt.timedelta(days=30))
    web = comps(await svc.apply(timeout=30))["toy.web"]["id"]  # the short cert itself is a change
    status = await svc.apply(timeout=30)
    info = {c["name"]: c for c in svc.certs_list()}["toy-server"]
    assert info["days_left"] > 300
    assert any(e["event"] == "cert_renewed" and e["name"] == "toy-server" for e in svc.events.recent)
    assert comps(status)["toy.web"]["phase"] == "running" and web


async def test_broken_intent_leaves_running_components_alone(svc) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": port}})
    status = await svc.apply(timeout=30)
    pid = comps(status)["toy.web"]["id"]
    # Break the profile on disk (as an operator editing it would): the intent fails to render...
    svc.catalog.dirs.insert(0, svc.node.state_dir / "profiles")
    broken = svc.node.state_dir / "profiles" / "toy"
    (broken / "templates").mkdir(parents=True)
    src = (PROFILES / "toy" / "profile.yaml").read_text().replace("{{ greeting }}", "{{ greting }}")
    (broken / "profile.yaml").write_text(src)
    (broken / "templates" / "index.html.j2").write_text("x\n")
    status = await svc.apply(timeout=10)
    assert "greting" in status["intent_errors"]["toy"]
    # ...and its components are neither pruned nor restarted.
    assert comps(status)["toy.web"]["id"] == pid and comps(status)["toy.web"]["state"] == "running"
    plan = await svc.plan()
    assert plan["actions"] == [] and "toy" in plan["intent_errors"]


async def test_apply_waits_out_backoff_until_its_timeout(svc) -> None:  # type: ignore[no-untyped-def]
    svc.put_intent({"name": "bad", "profile": "toy", "values": {"port": free_port(), "mode": "crash"}})
    loop = asyncio.get_running_loop()
    t = loop.time()
    status = await svc.apply(timeout=2.0)
    took = loop.time() - t
    c = comps(status)["bad.web"]
    # at the deadline a retry may be in flight (phase "starting"); it kept retrying until then
    assert 2.0 <= took < 6.0 and c["restarts"] >= 2, (took, c)
    assert c["phase"] in ("backoff", "crashloop", "starting") and c["last_error"], (took, c)


async def test_routing_driver_places_host_components_on_the_host(svc_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from app.bootstrap.driver import HostProcessDriver, RoutingDriver

    prof = tmp_path / "profiles" / "mixed"
    prof.mkdir(parents=True)
    sleep = ["/bin/busybox", "sleep", "600"]
    (prof / "profile.yaml").write_text(yaml.safe_dump({"name": "mixed", "components": [
        {"name": "boxed", "image": "busybox", "command": sleep},
        {"name": "native", "runs_on": "host", "command": sleep, "depends_on": ["boxed"]}]}))
    svc = svc_factory(profile_dirs=(tmp_path / "profiles",))
    boxes, host = HostProcessDriver(tmp_path / "as-containers"), HostProcessDriver(tmp_path / "as-host")
    svc.driver = svc.reconciler.driver = RoutingDriver(boxes, host)
    try:
        svc.put_intent({"name": "m", "profile": "mixed"})
        status = await svc.apply(timeout=30)
        assert {c["component"]: c["phase"] for c in status["components"]} == {"m.boxed": "running",
                                                                               "m.native": "running"}
        assert await boxes.keys() == ["m.boxed"] and await host.keys() == ["m.native"]
        assert (await svc.plan())["changes"] == 0
        svc.delete_intent("m")
        await svc.apply(timeout=30)
        assert await boxes.keys() == [] and await host.keys() == []
    finally:
        for d in (boxes, host):
            for key in await d.keys():
                await d.remove(key)


async def test_a_slow_start_blocks_neither_others_nor_pruning(svc_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    prof = tmp_path / "profiles" / "slow"
    prof.mkdir(parents=True)
    (prof / "profile.yaml").write_text(yaml.safe_dump({"name": "slow", "variables": {"port": {"type": "port"}},
        "components": [{"name": "s", "image": "busybox", "command": ["/bin/busybox", "sleep", "600"],
                        "health": {"check": {"type": "tcp", "port": "{{ port }}"}},
                        "tasks": [{"type": "container"}, {"type": "wait", "timeout_seconds": 60}]}]}))
    svc = svc_factory(profile_dirs=(tmp_path / "profiles", PROFILES))
    svc.put_intent({"name": "slow", "profile": "slow", "values": {"port": free_port()}})
    task = asyncio.create_task(svc.run_forever())
    try:
        await wait_for(lambda: "slow.s" in svc.reconciler.inflight, timeout=10)
        svc.put_intent({"name": "toy", "profile": "toy", "values": {"port": free_port()}})

        async def toy_up() -> bool:
            c = comps(await svc.status())
            return c.get("toy.client", {}).get("phase") == "running"

        await wait_for(toy_up, timeout=15)  # while slow.s is still waiting for its port
        assert comps(await svc.status())["slow.s"]["phase"] == "starting"
        svc.delete_intent("slow")

        async def pruned() -> bool:
            gone = (await svc.driver.status("slow.s")).state == "absent"
            return gone and "slow.s" not in comps(await svc.status())

        await wait_for(pruned, timeout=15)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert svc.reconciler.inflight == {}
