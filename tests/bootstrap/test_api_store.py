"""The admin REST routes over a real BootstrapService (in-process ASGI), and the intent store:
the watched directory, ownership between files and the API, bad files reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml

from app.api.http.app import create_admin_app
from app.api.http.routes_bootstrap import router
from tests.bootstrap.conftest import etcd_intent

TOKEN = "t0ken"


@pytest.fixture
def client(svc_factory):  # type: ignore[no-untyped-def]
    svc = svc_factory()
    app = create_admin_app(SimpleNamespace(bootstrap=svc), admin_token=TOKEN, routers=[router])
    transport = httpx.ASGITransport(app=app)
    return svc, httpx.AsyncClient(transport=transport, base_url="http://admin",
                                  headers={"Authorization": f"Bearer {TOKEN}"})


async def test_rest_intents_plan_apply_status_certs(client) -> None:  # type: ignore[no-untyped-def]
    svc, c = client
    async with c:
        assert (await c.get("/v1/intents", headers={"Authorization": "Bearer nope"})).status_code == 401
        r = await c.put("/v1/intents/etcd", json={"profile": "etcd", "values": {"client_port": "x"}})
        assert r.status_code == 400
        body = r.json()["error"]
        assert body["category"] == "Config" and "variable 'client_port'" in body["message"]
        r = await c.put("/v1/intents/etcd", json={"name": "other", "profile": "etcd"})
        assert r.status_code == 400 and "differs" in r.json()["error"]["message"]
        r = await c.put("/v1/intents/etcd", json={"profile": "etcd", "extra": 1})
        assert r.status_code == 400 and "extra" in r.json()["error"]["message"]
        assert (await c.put("/v1/intents/etcd", json={"profile": "ghost"})).status_code == 404
        assert (await c.delete("/v1/intents/ghost")).status_code == 404
        assert (await c.get("/v1/intents")).json() == []

        intent = etcd_intent()
        r = await c.put("/v1/intents/etcd", json=intent)
        assert r.status_code == 200 and r.json()["changed"] and r.json()["generation"] == 1
        r = await c.put("/v1/intents/etcd", json=intent)
        assert r.json()["changed"] is False and r.json()["generation"] == 1  # same content: no new generation

        plan = (await c.get("/v1/bootstrap/plan")).json()
        assert plan["changes"] == 6 and {a["action"] for a in plan["actions"]} == {"render", "start"}
        status = (await c.post("/v1/bootstrap/apply", params={"timeout": 60})).json()
        assert status["components"][0]["phase"] == "running"
        assert (await c.get("/v1/bootstrap/plan")).json()["changes"] == 0
        certs = {x["name"]: x for x in (await c.get("/v1/certs")).json()}
        assert set(certs) == {"etcd-ca", "etcd-server", "etcd-peer", "etcd-healthcheck-client"}
        old = certs["etcd-peer"]["serial"]
        r = await c.post("/v1/certs/renew", json={"names": ["etcd-peer"]})
        assert r.json() == {"renewed": ["etcd-peer"]}
        assert {x["name"]: x for x in (await c.get("/v1/certs")).json()}["etcd-peer"]["serial"] != old
        assert (await c.post("/v1/certs/renew", json={"names": ["etcd-ca"]})).status_code == 400
        assert (await c.post("/v1/certs/renew", json={"names": "x"})).status_code == 400
        # the renewed peer certificate is read by etcd: the next pass restarts it
        plan = (await c.get("/v1/bootstrap/plan")).json()
        assert [a["reason"] for a in plan["actions"]] == ["spec changed"]
        status = (await c.get("/v1/bootstrap/status")).json()
        assert any(e["event"] == "cert_renewed" for e in status["events"])
        assert (await c.delete("/v1/intents/etcd")).status_code == 200
        await c.post("/v1/bootstrap/apply", params={"timeout": 30})
        assert (await c.get("/v1/bootstrap/status")).json()["components"] == []
    assert await svc.driver.keys() == []


async def test_intent_directory_sync(svc_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = svc_factory()
    d = svc.intents_dir
    d.mkdir(parents=True)
    a = etcd_intent("from-file")
    (d / "a.yaml").write_text(yaml.safe_dump(a))
    (d / "b.toml").write_text('name = "tomled"\nprofile = "etcd"\n[values]\nclient_port = 12379\n')
    (d / "broken.yaml").write_text("name: [unclosed\n")
    (d / ".hidden.yaml").write_text("ignored: true\n")
    (d / "notes.txt").write_text("ignored\n")
    problems = svc.store.sync_directory(d)
    assert len(problems) == 1 and "broken.yaml" in problems[0] and "YAML" in problems[0]
    rows = {r["name"]: r for r in svc.list_intents()}
    assert set(rows) == {"from-file", "tomled"} and rows["tomled"]["values"] == {"client_port": 12379}
    assert rows["from-file"]["source"] == f"file:{d / 'a.yaml'}"
    # the API cannot take a file's intent over, and a file cannot take an API intent
    from app.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="managed by file:"):
        svc.put_intent({**a, "values": {}})
    svc.put_intent(etcd_intent("api-one"))
    (d / "c.yaml").write_text(yaml.safe_dump(etcd_intent("api-one")))
    problems = svc.store.sync_directory(d)
    assert any("managed by api" in p for p in problems)
    # editing a file bumps the generation; a file turning invalid keeps the last good intent
    import os
    import time

    a["values"]["client_port"] += 1
    (d / "a.yaml").write_text(yaml.safe_dump(a))
    os.utime(d / "a.yaml", (time.time() + 5, time.time() + 5))
    svc.store.sync_directory(d)
    assert {r["name"]: r for r in svc.list_intents()}["from-file"]["generation"] == 2
    (d / "a.yaml").write_text("profile: [\n")
    os.utime(d / "a.yaml", (time.time() + 10, time.time() + 10))
    svc.store.sync_directory(d)
    assert "from-file" in {r["name"] for r in svc.list_intents()}
    # deleting the file deletes its intent; the API intent stays
    (d / "a.yaml").unlink()
    (d / "b.toml").unlink()
    svc.store.sync_directory(d)
    assert {r["name"] for r in svc.list_intents()} == {"api-one"}


async def test_progress_events_reach_subscribers_in_order(svc_factory) -> None:  # type: ignore[no-untyped-def]
    svc = svc_factory()
    q = svc.events.subscribe()
    svc.put_intent(etcd_intent())
    await svc.apply(timeout=60)
    await asyncio.sleep(0.05)  # events emitted from the PKI worker thread arrive via call_soon_threadsafe
    events = []
    while not q.empty():
        events.append(q.get_nowait())
    kinds = [e["event"] for e in events]
    assert kinds[0] == "intent" and "pki_created" in kinds and "rendered" in kinds and "started" in kinds
    assert kinds.index("pki_created") < kinds.index("rendered") < kinds.index("started")
    tasks = [e["task"] for e in events if e["event"] == "task"]
    assert tasks == ["render", "container", "wait"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    svc.events.unsubscribe(q)


async def test_secret_values_are_masked(svc_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prof = tmp_path / "profiles" / "sec"
    prof.mkdir(parents=True)
    (prof / "profile.yaml").write_text(yaml.safe_dump({
        "name": "sec", "variables": {"password": {"type": "string", "secret": True}, "user": {"type": "string"}},
        "components": [{"name": "a", "image": "busybox", "command": ["/bin/busybox", "sleep", "1"],
                        "env": {"PASSWORD": "{{ password }}", "USER": "{{ user }}"}}]}))
    svc = svc_factory(profile_dirs=(tmp_path / "profiles",))
    out = svc.put_intent({"name": "s", "profile": "sec", "values": {"password": "hunter2", "user": "bob"}})
    assert out["values"] == {"password": "***", "user": "bob"}
    assert svc.list_intents()[0]["values"] == {"password": "***", "user": "bob"}
    assert "hunter2" not in str(await svc.plan())


async def test_apply_intent_streams_its_progress(svc_factory) -> None:  # type: ignore[no-untyped-def]
    svc = svc_factory()
    seen: list[dict] = []
    out = await svc.apply_intent(etcd_intent(), seen.append, timeout=60)
    assert out["error"] is None and out["intent"]["name"] == "etcd"
    assert [c["phase"] for c in out["components"]] == ["running"]
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "intent" and "pki_created" in kinds and kinds[-1] == "started"
    assert all(e.get("component", "etcd.").startswith("etcd.") for e in seen)


def test_cli_local_plan_apply_certs(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from app.bootstrap.driver import HostProcessDriver
    from tests.helpers.users import REPO_ROOT

    state = tmp_path / "state"
    f = tmp_path / "intent.yaml"
    f.write_text(yaml.safe_dump(etcd_intent()))
    env = {**os.environ, "VAPP_BOOTSTRAP__DRIVER": "host", "VAPP_BOOTSTRAP__NODE_NAME": "node1",
           "VAPP_RUN_DIR": str(tmp_path / "run")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli_bootstrap", *args, "--local", "--state-dir", str(state)],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=90)

    try:
        out = cli("bootstrap", "plan", "-f", str(f))
        assert out.returncode == 0 and "start    etcd.etcd" in out.stdout and "6 change(s)" in out.stdout, out
        out = cli("bootstrap", "apply")
        assert out.returncode == 0 and "etcd.etcd" in out.stdout and "running" in out.stdout, out
        from app.bootstrap.pki import Pki

        pki = Pki(state / "pki")
        before = {c.name: c.serial for c in pki.list()}
        out = cli("certs", "renew", "etcd-server", "--json")
        assert json.loads(out.stdout) == {"renewed": ["etcd-server"]}
        after = {c.name: c.serial for c in pki.list()}
        assert after["etcd-server"] != before["etcd-server"] and after["etcd-ca"] == before["etcd-ca"]
        assert "restart  etcd.etcd" in cli("bootstrap", "plan").stdout  # it reads the renewed cert
        bad = cli("certs", "renew", "etcd-ca")
        assert bad.returncode == 2 and "never re-issued" in bad.stderr
    finally:
        driver = HostProcessDriver(state / "bootstrap" / "host")

        async def cleanup() -> None:
            for key in await driver.keys():
                await driver.remove(key)

        asyncio.run(cleanup())
