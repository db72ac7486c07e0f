"""Drive ``tests/runtime/service_proc.py`` (as root or as the unprivileged user)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers.users import UnprivUser, popen_as

REPO = Path(__file__).resolve().parents[2]


class ServiceProc:
    def __init__(self, state_dir: Path, run_dir: Path, user: UnprivUser | None = None,
                 settings: dict[str, Any] | None = None) -> None:
        argv = [sys.executable, "-m", "tests.runtime.service_proc", str(state_dir), str(run_dir),
                json.dumps(settings or {})]
        kw: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "bufsize": 1}
        if user is None:
            env = dict(os.environ, PYTHONPATH=str(REPO))
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, **kw)
        else:
            self.proc = popen_as(user, argv, **kw)
        first = self._line()
        assert first.get("ready"), first

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"service process died (exit {self.proc.poll()})")
        data: dict[str, Any] = json.loads(line)
        return data

    def call(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        reply = self._line()
        if "error" in reply:
            raise AssertionError(f"{op}: {reply}")
        return reply["ok"]

    def call_error(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._line()

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
