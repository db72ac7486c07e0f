"""Intents over vappc against the real daemon: the real BootstrapService, a real etcd,
and the loop's metrics on the daemon's /metrics.

Components run with the host driver (Debian's etcd-server, TLS from our PKI,
health-checked over HTTPS with a client certificate), as tests/bootstrap/test_daemon.py
does, so this test depends on neither the image nor the container engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.bootstrap.driver import HostProcessDriver
from app.errors import Category
from app.vappc.client import Client, RemoteError
from tests.bootstrap.conftest import etcd_intent
from tests.helpers.daemon import DaemonProcess
from tests.helpers.users import REPO_ROOT

pytestmark = pytest.mark.timeout(180)
ENV = {"VAPP_BOOTSTRAP__DRIVER": "host", "VAPP_BOOTSTRAP__NODE_NAME": "node1",
       "VAPP_BOOTSTRAP__RECONCILE_INTERVAL_SECONDS": "0.3", "VAPP_BOOTSTRAP__BACKOFF_BASE_SECONDS": "0.2"}


def _vappc(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.vappc.cli", "--socket", str(d.vappc_socket), *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def _metrics(d: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = d.get("/metrics")
    assert r.status_code == 200, r.text
    return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(r.text) for smp in fam.samples
            if smp.name.startswith("vapp_bootstrap_")}


def _wait(pred: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


def _cleanup(work: Path) -> None:
    import asyncio

    driver = HostProcessDriver(work / "state" / "bootstrap" / "host")

    async def run() -> None:
        for key in await driver.keys():
            await driver.remove(key)

    asyncio.run(run())


def test_apply_list_delete_intent_over_vappc(tmp_path: Path) -> None:
    work = tmp_path / "d"
    d = DaemonProcess(work, env=ENV)
    try:
        d.start()
        intent = etcd_intent("db")
        progress = []
        with Client(d.vappc_socket, timeout=60) as c:
            assert "intents" in c.version()["features"]
            # Refusals name the field and store nothing.
            with pytest.raises(RemoteError) as info:
                c.apply_intent({**intent, "values": {"client_port": 99999}})
            assert info.value.category is Category.CONFIG and "client_port" in info.value.message
            assert not info.value.retryable
            with pytest.raises(RemoteError) as info:
                c.apply_intent({"name": "x", "profile": "nope"})
            assert info.value.category is Category.CONFIG and "nope" in info.value.message
            with pytest.raises(RemoteError) as info:
                c.apply_intent({"name": "Bad_Name", "profile": "etcd"})
            assert info.value.category is Category.CONFIG and "name" in info.value.message
            assert c.list_intents()["intents"] == []

            result = c.apply_intent(intent, progress=progress.append, apply_timeout=90)
            assert result["intent"]["name"] == "db" and result["intent"]["changed"] is True
            (comp,) = result["components"]
            assert comp["component"] == "db.etcd" and comp["phase"] == "running" and comp["healthy"] is True
            mine = [p for p in progress if p.instance_name == "db.etcd"]
            phases = [p.phase for p in mine]
            start = phases.index("start")  # a "render" action (files missing) may come first
            assert phases[start:start + 4] == ["start", "render", "container", "wait"], progress
            assert mine[-1].percentage == 100
            assert [p.percentage for p in mine] == sorted(p.percentage for p in mine)
            assert any(p.phase == "pki" and p.task_name == "etcd-ca" for p in progress)

            # The etcd really serves: etcdctl over TLS with the healthcheck client cert.
            pki = d.state_dir / "pki"
            port = intent["values"]["client_port"]
            etcdctl = ["etcdctl", f"--endpoints=https://127.0.0.1:{port}", f"--cacert={pki}/etcd-ca.crt",
                       f"--cert={pki}/etcd-healthcheck-client.crt", f"--key={pki}/etcd-healthcheck-client.key"]
            put = subprocess.run([*etcdctl, "put", "k", "v"], capture_output=True, text=True, timeout=30)
            assert put.returncode == 0, put.stderr

            # The loop's metrics on the daemon's /metrics.
            m = _metrics(d)
            assert m[("vapp_bootstrap_components", (("phase", "running"),))] == 1
            assert m[("vapp_bootstrap_components", (("phase", "crashloop"),))] == 0
            assert m[("vapp_bootstrap_cert_expiry_seconds", (("name", "etcd-server"),))] > 300 * 86400
            assert m[("vapp_bootstrap_reconcile_duration_seconds_count", ())] >= 1
            passes = sum(v for (n, _), v in m.items() if n == "vapp_bootstrap_reconcile_passes_total")
            assert passes >= 1 and m.get(("vapp_bootstrap_reconcile_passes_total", (("result", "error"),)), 0) == 0
            # Kill etcd (the pid the host driver reports): the loop restarts it and counts it.
            os.kill(int(comp["id"]), signal.SIGKILL)
            key = ("vapp_bootstrap_component_restarts_total", (("component", "db.etcd"),))
            _wait(lambda: _metrics(d).get(key, 0) >= 1, "restart counted")
            _wait(lambda: c.list_intents()["components"][0]["healthy"] is True
                  and c.list_intents()["components"][0]["phase"] == "running", "etcd back")
            comp = c.list_intents()["components"][0]

            # Re-applying the same intent changes nothing.
            again = c.apply_intent(intent)
            assert again["intent"]["changed"] is False and again["components"][0]["id"] == comp["id"]

            listed = c.list_intents()
            assert [i["name"] for i in listed["intents"]] == ["db"]
            assert [x["component"] for x in listed["components"]] == ["db.etcd"]

        # The CLI: list as a table, and as JSON.
        out = _vappc(d, "intent", "list")
        assert out.returncode == 0 and "db.etcd" in out.stdout and "running" in out.stdout, out.stderr
        out = _vappc(d, "--json", "intent", "list")
        assert json.loads(out.stdout)["intents"][0]["profile"] == "etcd"
        # apply from a YAML file (unchanged: same values), rm, rm again (Config error, exit 1).
        f = tmp_path / "db.yaml"
        f.write_text(yaml.safe_dump(intent))
        out = _vappc(d, "intent", "apply", str(f))
        assert out.returncode == 0 and "db.etcd running" in out.stdout, out.stderr
        out = _vappc(d, "intent", "rm", "db")
        assert out.returncode == 0, out.stderr
        out = _vappc(d, "intent", "rm", "db")
        assert out.returncode == 1 and "Config" in out.stderr and "no intent 'db'" in out.stderr

        with Client(d.vappc_socket, timeout=60) as c:
            _wait(lambda: not c.list_intents()["components"], "pruned")
            assert c.list_intents() == {"intents": [], "components": []}
        _wait(lambda: _metrics(d)[("vapp_bootstrap_components", (("phase", "running"),))] == 0, "gauge updated")
    finally:
        d.kill()
        _cleanup(work)
