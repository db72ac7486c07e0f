"""The reconcile loop against a real etcd with TLS from our PKI.

Covered: etcd from Debian's ``etcd-server`` run by the HostProcessDriver (as a
host process: the container path is covered by test_container_driver.py),
health-checked over HTTPS with a client certificate, a key written and read
with Debian's ``etcdctl`` over mTLS; re-apply does nothing; kill → restarted;
config edited → repaired; intent removed → stopped and removed; the bootstrap
process killed with SIGKILL mid-apply → the next run completes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.bootstrap.conftest import etcd_intent, wait_for
from tests.helpers.users import REPO_ROOT

pytestmark = pytest.mark.timeout(120)
KEY = "etcd.etcd"


def etcdctl(svc, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    pki = svc.node.pki_dir
    return subprocess.run(
        ["etcdctl", f"--endpoints=https://127.0.0.1:{port}", f"--cacert={pki}/etcd-ca.crt",
         f"--cert={pki}/etcd-healthcheck-client.crt", f"--key={pki}/etcd-healthcheck-client.key", *args],
        capture_output=True, text=True, timeout=20, env={**os.environ, "ETCDCTL_API": "3"})


def comp(status: dict, key: str = KEY) -> dict:
    return next(c for c in status["components"] if c["component"] == key)


async def test_etcd_tls_apply_health_etcdctl_and_noop_reapply(svc_factory) -> None:
    svc = svc_factory()
    intent = etcd_intent()
    port = intent["values"]["client_port"]
    svc.put_intent(intent)
    plan = await svc.plan()
    assert {p["name"] for p in plan["pki"]} == {"etcd-ca", "etcd-server", "etcd-peer", "etcd-healthcheck-client"}
    assert [a["action"] for a in plan["actions"]] == ["render", "start"]
    assert not svc.node.pki_dir.exists()  # plan changed nothing

    status = await svc.apply(timeout=60)
    c = comp(status)
    assert (c["phase"], c["state"], c["healthy"], c["restarts"]) == ("running", "running", True, 0)

    # HTTPS with a client certificate works; without one the server refuses.
    pki = svc.node.pki_dir
    with_cert = ssl.create_default_context(cafile=str(pki / "etcd-ca.crt"))
    with_cert.load_cert_chain(pki / "etcd-healthcheck-client.crt", pki / "etcd-healthcheck-client.key")
    with httpx.Client(verify=with_cert) as h:
        assert json.loads(h.get(f"https://127.0.0.1:{port}/health").text)["health"] == "true"
    no_cert = ssl.create_default_context(cafile=str(pki / "etcd-ca.crt"))
    with pytest.raises(httpx.HTTPError), httpx.Client(verify=no_cert) as h:
        h.get(f"https://127.0.0.1:{port}/health")
    assert etcdctl(svc, port, "put", "/vapp/k", "v1").returncode == 0
    got = etcdctl(svc, port, "get", "/vapp/k", "--print-value-only")
    assert got.returncode == 0 and got.stdout.strip() == "v1", got.stderr

    # Re-running apply does nothing: same process, files untouched, nothing planned.
    cfg = Path(svc.node.bootstrap_dir / "etcd" / "etcd" / "config" / "etcd.yaml")
    mtime, pid = cfg.stat().st_mtime_ns, c["id"]
    assert (await svc.plan())["changes"] == 0
    before_events = len(svc.events.recent)
    status = await svc.apply(timeout=30)
    assert comp(status)["id"] == pid and cfg.stat().st_mtime_ns == mtime
    assert [e for e in list(svc.events.recent)[before_events:] if e["event"] != "action"] == []
    assert [a for a in await svc.reconcile_once() if a.mutating] == []
    # Rendered config has TLS on both sides, from our PKI.
    rendered = yaml.safe_load(cfg.read_text())
    assert rendered["client-transport-security"]["client-cert-auth"] is True
    assert rendered["peer-transport-security"]["trusted-ca-file"] == f"{pki}/etcd-ca.crt"
    assert cfg.stat().st_mode & 0o777 == 0o600


async def test_loop_repairs_kill_and_drift_then_prunes(svc_factory) -> None:
    svc = svc_factory()
    intent = etcd_intent()
    port = intent["values"]["client_port"]
    svc.put_intent(intent)
    loop_task = asyncio.create_task(svc.run_forever())
    try:
        first = await wait_for(lambda: _healthy_pid(svc), timeout=60)
        assert etcdctl(svc, port, "put", "/vapp/survives", "yes").returncode == 0

        # Kill etcd: the loop restarts it, counts the restart, data survives.
        os.kill(int(first), signal.SIGKILL)
        second = await wait_for(lambda: _healthy_pid(svc, not_pid=first), timeout=30)
        assert second != first
        c = comp(await svc.status())
        assert c["restarts"] == 1 and c["phase"] == "running"
        assert etcdctl(svc, port, "get", "/vapp/survives", "--print-value-only").stdout.strip() == "yes"
        assert any(e["event"] == "started" and e["reason"].startswith("exited") for e in svc.events.recent)

        # Edit the rendered config: the loop puts it back (the running etcd is left alone).
        cfg = svc.node.bootstrap_dir / "etcd" / "etcd" / "config" / "etcd.yaml"
        good = cfg.read_bytes()
        cfg.write_text("name: tampered\n")
        await wait_for(lambda: cfg.read_bytes() == good, timeout=10)
        assert any(e["event"] == "rendered" and e["reason"] == "config drift" for e in svc.events.recent)
        assert comp(await svc.status())["id"] == second

        # Remove the intent: the component is stopped and removed, data volume kept.
        svc.delete_intent("etcd")
        await wait_for(lambda: _gone(svc), timeout=30)
        assert _pid_dead(int(second))
        assert not cfg.exists() and (svc.node.bootstrap_dir / "etcd" / "etcd" / "volumes" / "data").is_dir()
        assert await svc.driver.keys() == [] and svc.store.records() == {}
    finally:
        loop_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop_task


async def _healthy_pid(svc, not_pid: str | None = None) -> str | None:
    st = await svc.status()
    for c in st["components"]:
        if c["component"] == KEY and c["state"] == "running" and c["healthy"] and c["phase"] == "running" \
                and c["id"] != not_pid:
            return str(c["id"])
    return None


async def _gone(svc) -> bool:
    return (await svc.driver.status(KEY)).state == "absent" and not (await svc.status())["components"]


def _pid_dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


async def test_bootstrap_killed_mid_apply_next_run_completes(svc_factory, tmp_path: Path) -> None:
    state = tmp_path / "state"
    intent = etcd_intent()
    intent_file = tmp_path / "etcd-intent.yaml"
    intent_file.write_text(yaml.safe_dump(intent))
    env = {**os.environ, "VAPP_BOOTSTRAP__DRIVER": "host", "VAPP_BOOTSTRAP__NODE_NAME": "node1",
           "VAPP_BOOTSTRAP__NODE_IP": "127.0.0.1", "VAPP_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli_bootstrap", "bootstrap", "apply", "--local",
                             "--state-dir", str(state), "-f", str(intent_file), "--json"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc_json = state / "bootstrap" / "host" / KEY / "proc.json"
    try:
        # Kill -9 as soon as etcd has been spawned: the apply is inside its wait task.
        await wait_for(proc_json.exists, timeout=60, interval=0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    orphan = json.loads(proc_json.read_text())["pid"]

    svc = svc_factory(state)
    status = await svc.apply(timeout=60)
    c = comp(status)
    assert (c["phase"], c["healthy"]) == ("running", True)
    # The etcd the killed run started was adopted (or, had it died, replaced): exactly one runs.
    config = str(state / "bootstrap" / "etcd" / "etcd" / "config" / "etcd.yaml")
    running = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, config)]
    assert running == [c["id"]], (running, c)
    assert int(c["id"]) == orphan or _pid_dead(orphan)
    assert etcdctl(svc, intent["values"]["client_port"], "put", "/k", "v").returncode == 0
    assert (await svc.plan())["changes"] == 0


def _cmdline_has(pid: str, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return text.encode() in fh.read()
    except OSError:
        return False
