"""vappc through the real daemon (``vapp-core daemon`` subprocess on temp paths): golden lines.

Every command the agent sends, as raw NDJSON on the daemon's socket, and the
exact shape of what comes back; peer credentials checked against a real
second user (``vapptest``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.daemon import DaemonProcess
from tests.helpers.users import UnprivUser, run_as


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    work = Path(tempfile.mkdtemp(prefix="vcd", dir="/tmp"))
    sockdir = work / "sock"
    sockdir.mkdir()
    os.chmod(work, 0o755)
    os.chmod(sockdir, 0o755)
    # 0666 so a second user can reach the socket at all: then SO_PEERCRED is what refuses it.
    d = DaemonProcess(work / "d", env={"VAPP_SOCKET_MODE": str(0o666)})
    d.vappc_socket = sockdir / "vappc.sock"
    with d:
        yield d
    shutil.rmtree(work, ignore_errors=True)


def exchange(path: Path, *lines: str | bytes, expect: int | None = None) -> list[dict]:
    """Send request lines on one connection; read until one terminal line per request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(path))
        for line in lines:
            s.sendall((line.encode() if isinstance(line, str) else line) + b"\n")
        out: list[dict] = []
        buf = b""
        terminals = 0
        want = expect if expect is not None else len(lines)
        while terminals < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                msg = json.loads(raw)
                out.append(msg)
                terminals += msg["msg"] != "Progress"
        return out


def test_socket_is_bound_with_the_configured_mode(daemon: DaemonProcess) -> None:
    st = os.stat(daemon.vappc_socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666


def test_golden_lines(daemon: DaemonProcess) -> None:
    path = daemon.vappc_socket
    out = exchange(
        path,
        '{"cmd":"Ping"}',
        '{"cmd":"ListApps"}',
        '{"cmd":"GetInterfaceIp","data":{"interface":"lo"}}',
        '{"cmd":"GetInterfaceIp","data":{"interface":"nosuchif*"}}',
        '{"cmd":"AppState","data":{"app_id":"never-started"}}',
        '{"cmd":"StopApp","data":{"app_id":"never-started"}}',
        '{"cmd":"UpdateDnsRecords","data":{"records":[{"ip":"10.1.2.3","hostname":"db.internal"}]}}',
        '{"cmd":"UpdateDnsRecords","data":{"records":[{"ip":"10.1.2.999","hostname":"db"}]}}',
        '{"cmd":"Frobnicate"}',
        '{"cmd":"Ping","id":"p1"}',
    )
    # The id-tagged request runs concurrently: its answer may come anywhere; the rest in order.
    assert [m for m in out if "id" in m] == [{"msg": "Ok", "type": "Unit", "id": "p1"}]
    out = [m for m in out if "id" not in m]
    assert out[0] == {"msg": "Ok", "type": "Unit"}
    assert out[1]["msg"] == "Ok" and out[1]["type"] == "AppList" and isinstance(out[1]["data"], list)
    assert out[2] == {"msg": "Ok", "type": "InterfaceIp", "data": {"interface": "lo", "ip": "127.0.0.1"}}
    assert out[3] == {"msg": "Ok", "type": "InterfaceIp", "data": {"interface": "nosuchif*", "ip": None}}
    assert out[4] == {"msg": "Error", "category": "Runtime", "message": "no app 'never-started'",
                      "phase": "state", "is_retryable": True}
    assert out[5]["msg"] == "Error" and out[5]["phase"] == "stop"
    assert out[6] == {"msg": "Ok", "type": "DnsRecordsUpdated", "data": {"count": 1}}
    assert out[7]["msg"] == "Error" and out[7]["category"] == "Config" and "records[0]" in out[7]["message"]
    assert out[8] == {"msg": "Error", "category": "Config", "message": "unknown command 'Frobnicate'",
                      "phase": "request", "is_retryable": False}
    hosts = daemon.state_dir / "dns" / "hosts"
    assert "10.1.2.3 db.internal" in hosts.read_text().splitlines()  # the bad update left it intact


def test_version_and_diagnostic(daemon: DaemonProcess) -> None:
    version, diag = exchange(daemon.vappc_socket, '{"cmd":"Version"}', '{"cmd":"RunDiagnostic"}')
    assert version["type"] == "Version" and version["data"]["protocol"] == 2
    assert diag["type"] == "Diagnostic"
    facts = diag["data"]
    for key in ("kernel", "interfaces", "routes", "namespaces", "tun", "cgroups", "disk", "containers"):
        assert isinstance(facts[key], str) and facts[key], key
    assert "lo" in facts["interfaces"]


def test_line_cap_and_malformed_input_on_the_daemon(daemon: DaemonProcess) -> None:
    out = exchange(daemon.vappc_socket, b"\xff\xfe", b'{"cmd":"Ping"', b'{"cmd":"Ping"}')
    assert [m["msg"] for m in out] == ["Error", "Error", "Ok"]
    out = exchange(daemon.vappc_socket, b"x" * (1024 * 1024 + 10), expect=1)
    assert out[0]["msg"] == "Error" and "longer than 1048576 bytes" in out[0]["message"]


def test_peer_credentials_of_another_user_are_refused(daemon: DaemonProcess, unpriv_user: UnprivUser) -> None:
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(daemon.vappc_socket)!r})\n"
        "s.sendall(b'{\"cmd\":\"Ping\"}\\n')\n"
        "data=b''\n"
        "while True:\n"
        "    c=s.recv(4096)\n"
        "    if not c: break\n"
        "    data+=c\n"
        "sys.stdout.write(data.decode())\n"
    )
    res = run_as(unpriv_user, ["/usr/bin/python3", "-c", probe], timeout=30)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 1, lines  # refused before the Ping is read; then closed
    assert lines[0]["msg"] == "Error" and lines[0]["category"] == "Config"
    assert f"peer uid {unpriv_user.uid}" in lines[0]["message"]


def test_admin_api_apps_routes(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        assert c.get("/v1/apps").status_code == 200
        missing = c.get("/v1/apps/never-started")
        assert missing.status_code == 404 and missing.json()["error"]["category"] == "Runtime"
        bad = c.post("/v1/apps", json={"app_id": "x", "name": "x", "image": "i", "colour": "red"})
        assert bad.status_code == 400
        assert httpx_unauth(daemon) == 401


def httpx_unauth(daemon: DaemonProcess) -> int:
    import httpx

    return httpx.get(daemon.admin_url + "/v1/apps", timeout=10).status_code
