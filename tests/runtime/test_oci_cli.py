"""``vapp-oci`` driven exactly like runc; every lifecycle test also runs against runc itself."""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.conftest import env_for_tests, vapp_oci

RUNTIMES = {"vapp-oci": vapp_oci(), "runc": shutil.which("runc") or "/usr/sbin/runc"}


class Cli:
    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root

    def __call__(self, *args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: a detached container inherits them and would hold a pipe open.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            done = subprocess.run([self.binary, "--root", str(self.root), *args], stdout=out, stderr=err,
                                  text=True, timeout=30, env=env_for_tests(), **kw)
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())
        if check and result.returncode != 0:
            raise AssertionError(f"{args}: exit {result.returncode}: {result.stderr}")
        return result

    def state(self, cid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self("state", cid).stdout)
        return data

    def wait_status(self, cid: str, status: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while self.state(cid)["status"] != status:
            assert time.monotonic() < deadline, f"{cid} never became {status}: {self.state(cid)}"
            time.sleep(0.02)


@pytest.fixture(params=sorted(RUNTIMES))
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    root = Path(f"/tmp/vrt-cli-{uuid.uuid4().hex[:8]}")
    yield Cli(RUNTIMES[request.param], root)
    shutil.rmtree(root, ignore_errors=True)


def make_bundle(rootfs: Path, tmp_path: Path, args: list[str], **process: Any) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    subprocess.run([RUNTIMES["runc"], "spec", "--bundle", str(bundle)], check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"]["path"] = str(rootfs)
    cfg["process"].update({"terminal": False, "args": args, **process})
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def edit(bundle: Path, fn: Any) -> None:
    cfg = json.loads((bundle / "config.json").read_text())
    fn(cfg)
    (bundle / "config.json").write_text(json.dumps(cfg))


def test_lifecycle(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["sleep", "30"])
    cid = f"lc-{uuid.uuid4().hex[:8]}"
    pid_file = tmp_path / "pid"
    cli("create", "--bundle", str(bundle), "--pid-file", str(pid_file), cid, stdin=subprocess.DEVNULL)
    st = cli.state(cid)
    assert st["status"] == "created" and st["id"] == cid and st["ociVersion"]
    assert os.path.realpath(st["bundle"]) == os.path.realpath(bundle)
    assert int(pid_file.read_text()) == st["pid"] > 0
    assert Path(f"/proc/{st['pid']}").exists()
    assert cli("create", "--bundle", str(bundle), cid, check=False).returncode != 0  # id in use
    cli("start", cid)
    assert cli.state(cid)["status"] == "running"
    assert cli("start", cid, check=False).returncode != 0  # wrong state
    assert cli("delete", cid, check=False).returncode != 0  # running: needs --force
    cli("kill", cid, "KILL")
    cli.wait_status(cid, "stopped")
    cli("delete", cid)
    assert cli("state", cid, check=False).returncode != 0
    assert not Path(f"/proc/{st['pid']}").exists() or "Z" in Path(f"/proc/{st['pid']}/stat").read_text()


def test_delete_force_and_created_delete(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["sleep", "30"])
    a, b = f"fa-{uuid.uuid4().hex[:6]}", f"fb-{uuid.uuid4().hex[:6]}"
    cli("create", "--bundle", str(bundle), a, stdin=subprocess.DEVNULL)
    cli("delete", a)  # a created (never started) container can be deleted
    cli("run", "--detach", "--bundle", str(bundle), b, stdin=subprocess.DEVNULL)
    assert cli.state(b)["status"] == "running"
    cli("delete", "--force", b)
    assert cli("state", b, check=False).returncode != 0


def test_run_exit_status_and_output(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["sh", "-c", "echo out-$$; hostname; exit 5"])
    result = cli("run", "--bundle", str(bundle), f"r-{uuid.uuid4().hex[:6]}", check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 5
    assert result.stdout.split() == ["out-1", "runc"]


def test_hooks_order_and_state(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    out = tmp_path / "hooks"
    out.mkdir()

    def hook(name: str) -> dict[str, Any]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/{name}; echo {name} >> {out}/order"]}

    bundle = make_bundle(rootfs, tmp_path, ["true"])
    edit(bundle, lambda c: c.update(hooks={k: [hook(k)] for k in ("prestart", "createRuntime", "poststart",
                                                                   "poststop")}))
    cid = f"h-{uuid.uuid4().hex[:6]}"
    cli("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    state = json.loads((out / "createRuntime").read_text())
    assert state["id"] == cid and state["pid"] > 0 and state["status"] == "creating"
    cli("start", cid)
    cli.wait_status(cid, "stopped")
    cli("delete", cid)
    assert (out / "order").read_text().split() == ["prestart", "createRuntime", "poststart", "poststop"]


def _console_server(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(10)
    return server


def test_console_socket(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["sh", "-c", "tty; echo hello-tty; sleep 0.3"], terminal=True)
    sock_path = tmp_path / "console.sock"
    server = _console_server(sock_path)
    cid = f"c-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([cli.binary, "--root", str(cli.root), "create", "--bundle", str(bundle),
                             "--console-socket", str(sock_path), cid], env=env_for_tests(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    conn, _ = server.accept()
    fds = array.array("i")
    _, anc, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
    fds.frombytes(anc[0][2])
    master = fds[0]
    assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
    cli("start", cid)
    data = b""
    deadline = time.monotonic() + 5
    while b"hello-tty" not in data and time.monotonic() < deadline:
        try:
            data += os.read(master, 4096)
        except OSError:
            break
    os.close(master)
    cli.wait_status(cid, "stopped")
    cli("delete", cid)
    assert b"/dev/pts/" in data and b"hello-tty" in data


def test_command_not_found(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["no-such-cmd"])
    result = cli("run", "--bundle", str(bundle), f"n-{uuid.uuid4().hex[:6]}", check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "executable file not found" in result.stderr


def test_invalid_config_is_rejected(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    edit(bundle, lambda c: c["root"].update(path=str(tmp_path / "missing")))
    cid = f"i-{uuid.uuid4().hex[:6]}"
    result = cli("create", "--bundle", str(bundle), cid, check=False, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert cli("state", cid, check=False).returncode != 0  # nothing half-created


def test_spec_command(tmp_path: Path) -> None:
    for rootless in (False, True):
        d = tmp_path / f"spec-{rootless}"
        d.mkdir()
        subprocess.run([vapp_oci(), "spec", "--bundle", str(d), *(["--rootless"] if rootless else [])], check=True)
        cfg = json.loads((d / "config.json").read_text())
        types = {ns["type"] for ns in cfg["linux"]["namespaces"]}
        assert ("user" in types) is rootless and ("network" in types) is not rootless
        assert cfg["process"]["args"] == ["sh"] and cfg["root"]["path"] == "rootfs"


def test_config_fields_honoured(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    script = ("grep NoNewPrivs /proc/self/status; cat /proc/self/oom_score_adj; ulimit -n; id -G; umask;"
              " cat /proc/sys/net/ipv4/ip_forward; hostname; cat /proc/sys/kernel/domainname;"
              " test -c /dev/fuse && echo fuse;"
              " cat /proc/kcore 2>&1 | head -c 0; test -s /proc/kcore || echo masked;"
              " touch /proc/sys/x 2>/dev/null || echo ro-sys; grep CapBnd /proc/self/status")
    bundle = make_bundle(rootfs, tmp_path, ["sh", "-c", script])

    def change(c: dict[str, Any]) -> None:
        c["process"].update(noNewPrivileges=True, oomScoreAdj=100,
                            rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 512}],
                            user={"uid": 0, "gid": 0, "additionalGids": [10, 20], "umask": 0o27})
        c["process"]["capabilities"] = {k: ["CAP_KILL", "CAP_CHOWN"] for k in ("bounding", "effective",
                                                                              "permitted")}
        c["hostname"], c["domainname"] = "h1", "d1"
        c["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
        c["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                  "fileMode": 0o666, "uid": 0, "gid": 0}]
        c["linux"]["rootfsPropagation"] = "private"

    edit(bundle, change)
    result = cli("run", "--bundle", str(bundle), f"f-{uuid.uuid4().hex[:6]}", check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0].split() == ["NoNewPrivs:", "1"]
    assert lines[1:4] == ["100", "512", "0 10 20"]
    assert lines[4] in ("0027", "027")
    domain = "(none)" if cli.binary == RUNTIMES["runc"] else "d1"  # runc 1.1 predates "domainname"
    assert lines[5:9] == ["1", "h1", domain, "fuse"]
    assert "masked" in lines and "ro-sys" in lines
    assert lines[-2] == "CapBnd:\t0000000000000021"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["process"]["capabilities"].update(bounding=["CAP_FLY"]), "unknown capability"),
        (lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]), "rlimits"),
        (lambda c: c["process"].update(cwd="relative"), "cwd"),
        (lambda c: c["linux"]["namespaces"].append({"type": "bogus"}), "namespaces"),
        (lambda c: c["mounts"].append({"destination": "rel", "type": "tmpfs", "source": "tmpfs"}), "destination"),
    ],
)
def test_invalid_fields_named(rootfs: Path, tmp_path: Path, change: Any, message: str) -> None:
    cli = Cli(vapp_oci(), Path(f"/tmp/vrt-cli-{uuid.uuid4().hex[:8]}"))
    bundle = make_bundle(rootfs, tmp_path, ["true"])
    edit(bundle, change)
    try:
        result = cli("create", "--bundle", str(bundle), "bad", check=False, stdin=subprocess.DEVNULL)
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert cli("state", "bad", check=False).returncode != 0
    finally:
        shutil.rmtree(cli.root, ignore_errors=True)


def test_exec(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["sleep", "30"], env=["PATH=/bin", "FROM_CONFIG=yes"], cwd="/tmp")
    cid = f"e-{uuid.uuid4().hex[:6]}"
    cli("run", "--detach", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    result = cli("exec", cid, "sh", "-c", "echo $FROM_CONFIG $(pwd); exit 6", check=False, stdin=subprocess.DEVNULL)
    assert result.returncode == 6 and result.stdout.split() == ["yes", "/tmp"], result.stderr
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({"args": ["sleep", "20"], "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0,
                                                                                                "gid": 0}}))
    pid_file = tmp_path / "exec.pid"
    cli("exec", "--process", str(proc), "--detach", "--pid-file", str(pid_file), cid, stdin=subprocess.DEVNULL)
    pid = int(pid_file.read_text())
    assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
    cli("delete", "--force", cid)


def test_driven_by_containerd(rootfs: Path, tmp_path: Path) -> None:
    """containerd (its own instance) runs, execs into and kills containers through vapp-oci."""
    base = Path(f"/tmp/vrt-ctd-{uuid.uuid4().hex[:6]}")
    base.mkdir()
    sock = base / "c.sock"
    (base / "config.toml").write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                                      f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ctr = ["ctr", "--address", str(sock)]
    cid = f"vc-{uuid.uuid4().hex[:6]}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ctr, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    try:
        deadline = time.monotonic() + 20
        while run("version").returncode != 0:
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)
        once = run("run", "--rm", "--runc-binary", vapp_oci(), "--rootfs", str(rootfs), cid + "a", "/bin/sh", "-c",
                   "echo hello-$$")
        assert once.returncode == 0 and once.stdout.strip() == "hello-1", once.stderr
        assert run("run", "-d", "--runc-binary", vapp_oci(), "--rootfs", str(rootfs), cid, "/bin/sleep",
                   "60").returncode == 0
        ex = run("task", "exec", "--exec-id", "x1", cid, "/bin/sh", "-c", "echo in-$$; exit 3")
        assert ex.returncode == 3 and ex.stdout.startswith("in-"), ex.stderr
        assert run("task", "kill", "-s", "9", cid).returncode == 0
        deadline = time.monotonic() + 10
        while "STOPPED" not in run("task", "ls").stdout:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert run("task", "rm", cid).returncode == 0
        assert run("container", "rm", cid).returncode == 0
    finally:
        for extra in (cid, cid + "a"):
            run("task", "kill", "-s", "9", extra)
            run("task", "rm", "-f", extra)
            run("container", "rm", extra)
        daemon.terminate()
        daemon.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def test_ps_and_kill_all(cli: Cli, rootfs: Path, tmp_path: Path) -> None:
    bundle = make_bundle(rootfs, tmp_path, ["sh", "-c", "sleep 30 & sleep 30 & wait"])
    cid = f"p-{uuid.uuid4().hex[:6]}"
    cli("run", "--detach", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    st = cli.state(cid)
    deadline = time.monotonic() + 5
    while len(pids := json.loads(cli("ps", "--format", "json", cid).stdout)) < 3:
        assert time.monotonic() < deadline, pids
        time.sleep(0.05)
    assert st["pid"] in pids
    cli("kill", "--all", cid, "KILL")
    cli.wait_status(cid, "stopped")
    assert not any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
                   for p in pids)
    cli("delete", cid)
