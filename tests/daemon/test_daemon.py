"""The real daemon as a subprocess: readiness, listeners, auth, metrics, config errors, shutdown."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.daemon import PYTHON, DaemonProcess
from tests.helpers.users import REPO_ROOT

pytestmark = pytest.mark.xdist_group("daemon")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "app.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def daemon(tmp_path: Path):
    with DaemonProcess(tmp_path / "d") as d:
        yield d


def test_ready_with_every_listener_bound(daemon: DaemonProcess) -> None:
    assert httpx.get(daemon.admin_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(daemon.admin_url + "/readyz").status_code == 200
    info = daemon.get("/v1/info").json()
    listeners = info["listeners"]
    assert listeners["admin"] == [daemon.admin_url]
    assert listeners["cri"] == [f"unix://{daemon.cri_socket}"]
    assert listeners["vappc"] == [f"unix://{daemon.vappc_socket}"]
    assert listeners["registry"] == [daemon.registry_url]
    assert httpx.get(daemon.registry_url + "/v2/").headers["docker-distribution-api-version"] == "registry/2.0"
    assert info["version"]
    # Secrets never appear in the config summary.
    assert "admin_token" not in info["config"]
    for sock in (daemon.cri_socket, daemon.vappc_socket):
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    assert (daemon.run_dir / "vapp.pid").read_text().strip() == str(daemon.proc.pid)


def test_admin_v1_requires_bearer_token(daemon: DaemonProcess) -> None:
    r = httpx.get(daemon.admin_url + "/v1/info")
    assert r.status_code == 401
    assert r.json()["error"]["kind"] == "unauthenticated"
    bad = httpx.get(daemon.admin_url + "/v1/info", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert daemon.get("/v1/info").status_code == 200
    token_file = daemon.state_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert daemon.token not in daemon.log_path.read_text()


def test_openapi_docs_served(daemon: DaemonProcess) -> None:
    assert httpx.get(daemon.admin_url + "/docs").status_code == 200
    spec = httpx.get(daemon.admin_url + "/openapi.json").json()
    assert "/v1/info" in spec["paths"]


def test_metrics_exposition(daemon: DaemonProcess) -> None:
    import grpc
    from cri_api.v1 import api_pb2, api_pb2_grpc

    from app.vappc.client import Client

    daemon.get("/v1/info")
    httpx.get(daemon.admin_url + "/v1/info")
    with grpc.insecure_channel(f"unix://{daemon.cri_socket}") as channel:
        api_pb2_grpc.RuntimeServiceStub(channel).Version(api_pb2.VersionRequest(), timeout=10)
    with Client(str(daemon.vappc_socket), timeout=10) as c:
        c.ping()
        with pytest.raises(Exception, match="no-such-app"):
            c.stop_app("no-such-app")
    text = httpx.get(daemon.admin_url + "/metrics").text
    import re

    assert re.search(r'vapp_grpc_calls_total\{code="OK",method="Version"\} 1\.0', text), text
    assert "vapp_grpc_call_duration_seconds_bucket" in text
    assert re.search(r'vapp_vappc_commands_total\{command="Ping",outcome="ok"\} 1\.0', text), text
    assert "vapp_vappc_command_duration_seconds_bucket" in text
    # a failed command is counted under its error category, not as ok
    assert re.search(r'vapp_vappc_commands_total\{command="StopApp",outcome="(Config|Runtime)"\} 1\.0', text), text
    assert 'vapp_http_requests_total{method="GET",route="/v1/info",status="200"}' in text
    assert 'vapp_http_requests_total{method="GET",route="/v1/info",status="401"}' in text
    assert "vapp_http_request_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text
    assert "vapp_ready 1.0" in text


def test_sigterm_shuts_down_within_deadline_and_removes_sockets(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "d").start()
    t0 = time.monotonic()
    assert d.stop(timeout=15) == 0
    assert time.monotonic() - t0 < 10
    assert not d.cri_socket.exists() and not d.vappc_socket.exists()
    assert not (d.run_dir / "vapp.pid").exists()
    assert "vapp-core stopped" in d.log_path.read_text()


def test_restart_on_existing_sqlite_keeps_token_and_schema(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "d") as first:
        token = first.token
    db = tmp_path / "d" / "state" / "vapp.db"
    assert db.exists()
    with DaemonProcess(tmp_path / "d") as second:
        assert second.token == token
        assert second.get("/v1/info").status_code == 200


def test_refuses_to_steal_a_live_socket(tmp_path: Path) -> None:
    with DaemonProcess(tmp_path / "a") as a:
        b = DaemonProcess(tmp_path / "b", args=["--cri-socket", str(a.cri_socket)])
        b.cri_socket = a.cri_socket
        b.start(wait=False)
        assert b.proc is not None
        assert b.proc.wait(timeout=30) != 0
        assert "in use by another process" in b.log_path.read_text()
        # The first daemon's socket still answers.
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(a.cri_socket))
        s.close()


def test_stale_socket_from_a_crash_is_replaced(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "d").start()
    d.kill()
    assert d.cri_socket.exists()  # left behind by kill -9
    with DaemonProcess(tmp_path / "d") as again:
        assert again.get("/v1/info").status_code == 200


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"VAPP_LOG_LEVEL": "loud"}, "log_level"),
        ({"VAPP_ADMIN_LISTEN": "nowhere"}, "admin_listen"),
        ({"VAPP_BLOB__QUOTA_BYTES": "lots"}, "blob.quota_bytes"),
    ],
)
def test_bad_config_value_exits_2_naming_the_key(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    r = run_cli("daemon", "--state-dir", str(tmp_path / "s"), "--run-dir", str(tmp_path / "r"), env=env)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr
    assert not (tmp_path / "s").exists()


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "vapp.toml"
    cfg.write_text("[runtime]\ndefault_runtime = 'docker'\n")
    r = run_cli("daemon", "--config", str(cfg), "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2
    assert "runtime.default_runtime" in r.stderr
    cfg.write_text("not toml = = 1")
    r = run_cli("config", "--config", str(cfg))
    assert r.returncode == 2 and "vapp.toml" in r.stderr
    r = run_cli("config", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "missing.toml" in r.stderr


def test_environment_overrides_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "vapp.toml"
    cfg.write_text('log_level = "error"\n[blob]\nlisten = "127.0.0.1:6000"\nquota_bytes = 5\n')
    r = run_cli("config", "--config", str(cfg), env={"VAPP_LOG_LEVEL": "debug", "VAPP_BLOB__LISTEN": "127.0.0.1:7"})
    assert r.returncode == 0, r.stderr
    import json

    conf = json.loads(r.stdout)
    assert conf["log_level"] == "debug"
    assert conf["blob"]["listen"] == "127.0.0.1:7"
    assert conf["blob"]["quota_bytes"] == 5


def test_sd_notify_ready(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    d = DaemonProcess(tmp_path / "d", env={"NOTIFY_SOCKET": str(path)})
    with d:
        assert b"READY=1" in sock.recv(4096)
    assert b"STOPPING=1" in sock.recv(4096)
    sock.close()


def test_json_logs(tmp_path: Path) -> None:
    import json

    with DaemonProcess(tmp_path / "d", args=["--log-format", "json"]) as d:
        pass
    lines = [json.loads(line) for line in d.log_path.read_text().splitlines() if line.startswith("{")]
    assert any("ready" in rec["msg"] for rec in lines)
    assert all({"ts", "level", "logger", "msg"} <= rec.keys() for rec in lines)


def test_rootless_daemon_uses_user_dirs(user_tmp: Path, unpriv_user) -> None:
    with DaemonProcess(user_tmp / "d", user=unpriv_user) as d:
        info = d.get("/v1/info").json()
        assert info["rootless"] is True
        assert d.cri_socket.stat().st_uid == unpriv_user.uid
    # Defaults without flags resolve to the user's XDG dirs.
    from tests.helpers.users import run_as

    r = run_as(unpriv_user, [PYTHON, "-m", "app.cli", "config"])
    assert r.returncode == 0, r.stderr
    import json

    conf = json.loads(r.stdout)
    assert conf["state_dir"] == str(unpriv_user.home / ".local/share/vapp-core")
    assert conf["run_dir"] == str(unpriv_user.runtime_dir / "vapp")
    assert conf["vappc"]["socket"] == "/tmp/vappc"
