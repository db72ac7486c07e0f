"""Bootstrap inside the real daemon: REST intents, the background loop, the intents directory,
kill -9 of the daemon mid-bootstrap, the CLI against the daemon, pruning.

Components run with the host driver here (etcd from Debian's etcd-server) so the
test does not depend on the image and container engines; the container path is
test_container_driver.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from app.bootstrap.driver import HostProcessDriver
from tests.bootstrap.conftest import etcd_intent
from tests.helpers.daemon import DaemonProcess
from tests.helpers.users import REPO_ROOT

pytestmark = pytest.mark.timeout(180)


def _env() -> dict[str, str]:
    return {"VAPP_BOOTSTRAP__DRIVER": "host", "VAPP_BOOTSTRAP__NODE_NAME": "node1",
            "VAPP_BOOTSTRAP__RECONCILE_INTERVAL_SECONDS": "0.3", "VAPP_BOOTSTRAP__BACKOFF_BASE_SECONDS": "0.2"}


def _wait(pred, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout}s")


def _components(d: DaemonProcess) -> dict[str, dict]:
    r = d.get("/v1/bootstrap/status")
    assert r.status_code == 200, r.text
    return {c["component"]: c for c in r.json()["components"]}


def _healthy(d: DaemonProcess, key: str) -> dict | None:
    c = _components(d).get(key)
    return c if c and c["phase"] == "running" and c["healthy"] else None


def test_daemon_bootstrap_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "d"
    d = DaemonProcess(work, env=_env())
    try:
        d.start()
        with d.client() as c:
            # Bad input is refused with the field named; nothing is stored.
            r = c.put("/v1/intents/bad", json={"profile": "etcd", "values": {"client_port": 99999}})
            assert r.status_code == 400 and "variable 'client_port'" in r.json()["error"]["message"]
            r = c.put("/v1/intents/Bad_Name", json={"profile": "etcd"})
            assert r.status_code == 400 and "name" in r.json()["error"]["message"]
            r = c.put("/v1/intents/x", json={"profile": "nope"})
            assert r.status_code == 404
            assert c.get("/v1/intents").json() == []

            intent = etcd_intent()
            r = c.put("/v1/intents/etcd", json=intent)
            assert r.status_code == 200 and r.json()["changed"] is True
        # Kill -9 the daemon while it is bootstrapping (etcd spawned, not yet checked healthy).
        proc_json = d.state_dir / "bootstrap" / "host" / "etcd.etcd" / "proc.json"
        _wait(proc_json.exists, 60, "etcd spawned")
        d.kill()
        orphan = json.loads(proc_json.read_text())["pid"]
        d = DaemonProcess(work, env=_env())
        d.start()
        first = _wait(lambda: _healthy(d, "etcd.etcd"), 60, "etcd healthy after restart")
        # The etcd the killed daemon spawned was adopted, not started twice (unless it had died).
        assert first["id"] == str(orphan) or not Path(f"/proc/{orphan}").exists()

        # An intent file in the watched directory is picked up.
        second = etcd_intent("etcd-two")
        (d.state_dir / "intents").mkdir(exist_ok=True)
        (d.state_dir / "intents" / "two.yaml").write_text(yaml.safe_dump(second))
        _wait(lambda: _healthy(d, "etcd-two.etcd"), 60, "file intent healthy")
        with d.client() as c:
            intents = {i["name"]: i for i in c.get("/v1/intents").json()}
            assert intents["etcd-two"]["source"].startswith("file:")
            assert c.put("/v1/intents/etcd-two", json=second).status_code == 409  # the file owns it
            plan = c.get("/v1/bootstrap/plan").json()
            assert plan["changes"] == 0, plan
            certs = {x["name"]: x for x in c.get("/v1/certs").json()}
            assert certs["etcd-ca"]["ca"] and certs["etcd-server"]["days_left"] > 300

        # The CLI talks to the daemon.
        env = {**os.environ, "VAPP_ADMIN_LISTEN": f"127.0.0.1:{d.admin_port}"}
        out = subprocess.run([sys.executable, "-m", "app.cli_bootstrap", "bootstrap", "status", "--json",
                              "--state-dir", str(d.state_dir)], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert {c["component"] for c in json.loads(out.stdout)["components"]} == {"etcd.etcd", "etcd-two.etcd"}
        out = subprocess.run([sys.executable, "-m", "app.cli_bootstrap", "certs", "list",
                              "--state-dir", str(d.state_dir)], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "etcd-healthcheck-client" in out.stdout, out.stderr

        # Removing the file and the REST intent prunes both.
        (d.state_dir / "intents" / "two.yaml").unlink()
        with d.client() as c:
            assert c.delete("/v1/intents/etcd").status_code == 200
        _wait(lambda: not _components(d), 60, "pruned")
    finally:
        d.kill()
        driver = HostProcessDriver(work / "state" / "bootstrap" / "host")

        async def cleanup() -> None:
            for key in await driver.keys():
                await driver.remove(key)

        asyncio.run(cleanup())
