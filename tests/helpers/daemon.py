"""Run the real ``vapp-core daemon`` as a subprocess on temporary paths and ports.

    with DaemonProcess(tmp_path) as d:          # as root
        d.get("/v1/info")                        # authenticated admin call
    with DaemonProcess(tmp_path, user=unpriv_user) as d: ...   # rootless

Every listener gets its own address: admin and registry on free loopback ports,
the vappc and CRI sockets under the daemon's run dir. ``stop()`` sends SIGTERM
and returns the exit code; ``kill()`` sends SIGKILL (crash tests). The same
state dir can be handed to a second ``DaemonProcess`` to test restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.ports import free_port
from tests.helpers.users import REPO_ROOT, UnprivUser, popen_as

PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python") if (REPO_ROOT / ".venv").exists() else sys.executable


class DaemonStartError(RuntimeError):
    pass


class DaemonProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        user: UnprivUser | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        database_url: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.user = user
        self.state_dir = self.workdir / "state"
        self.run_dir = self.workdir / "run"
        self.vappc_socket = self.run_dir / "vappc.sock"
        self.cri_socket = self.run_dir / "cri.sock"
        self.admin_port = free_port()
        self.registry_port = free_port()
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.registry_url = f"http://127.0.0.1:{self.registry_port}"
        self.extra_env = dict(env or {})
        self.extra_args = list(args)
        self.database_url = database_url
        self.ready_timeout = ready_timeout
        self.log_path = self.workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None

    # --- lifecycle -----------------------------------------------------------------
    def argv(self) -> list[str]:
        return [
            PYTHON, "-m", "app.cli", "daemon",
            "--state-dir", str(self.state_dir),
            "--run-dir", str(self.run_dir),
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--registry-listen", f"127.0.0.1:{self.registry_port}",
            "--vappc-socket", str(self.vappc_socket),
            "--cri-socket", str(self.cri_socket),
            *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = {"PYTHONPATH": str(REPO_ROOT)}
        if self.user is None:
            env = {**os.environ, **env}
            env.pop("NOTIFY_SOCKET", None)
        if self.database_url:
            env["VAPP_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self, *, wait: bool = True) -> DaemonProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(self.workdir, self.user.uid, self.user.gid)
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        kwargs: dict[str, Any] = {"stdout": self._log_fh, "stderr": subprocess.STDOUT,
                                  "start_new_session": True}
        if self.user is None:
            self.proc = subprocess.Popen(self.argv(), env=self.environment(), cwd=REPO_ROOT, **kwargs)
        else:
            self.proc = popen_as(self.user, self.argv(), env=self.environment(), **kwargs)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonStartError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.admin_url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise DaemonStartError(f"daemon not ready after {self.ready_timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DaemonStartError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log_tail()}") from None
        self._close_log()
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(DaemonStartError):
                self.stop()

    # --- talking to it ---------------------------------------------------------------
    @property
    def token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=kwargs.pop("timeout", 30), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as c:
            return c.get(path, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
