"""One shared environment per test run, even under pytest-xdist.

The process that owns the run (the xdist controller, or the only pytest
process) creates a run directory and exports ``VAPP_TEST_ENV=<run>/env.json``
before workers start, so every worker (and every subprocess) inherits it.
Shared services start lazily, ONCE per run: the first process that asks takes
``<run>/<name>.lock``, starts the service, and writes ``<run>/<name>.json``;
everyone else reads that file. A failed start is recorded too, so the other
workers fail fast with the same message instead of retrying.

Run directory::

    env.json            {"run_dir", "owner_pid", "watchdog_pid"}
    <name>.lock         flock serialising the first start of service <name>
    <name>.json         {"ok": true, "data": {...}, "pids": [..]} or {"ok": false, "error": "..."}
    <name>/             the service's own work dir (config, data, logs)

Teardown: the owner stops every recorded pid and removes the directory. A
watchdog process (``python -m tests.helpers.testenv watchdog``) does the same
if the owner dies without tearing down (SIGKILL, timeout), so no registry or
postgres outlives its run.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.procs import pid_alive, stop_pid

ENV_VAR = "VAPP_TEST_ENV"
REPO_ROOT = Path(__file__).resolve().parents[2]
# start(workdir) -> (description, pids to stop at the end of the run)
Starter = Callable[[Path], tuple[dict[str, Any], list[int]]]


class SharedServiceError(RuntimeError):
    """A shared service could not be started in this run (message has the cause)."""


@dataclass(frozen=True)
class TestEnv:
    run_dir: Path

    __test__ = False

    @property
    def env_file(self) -> Path:
        return self.run_dir / "env.json"

    @classmethod
    def create(cls, *, watchdog: bool = True) -> TestEnv:
        run_dir = Path(tempfile.mkdtemp(prefix="vapp-testrun-"))
        run_dir.chmod(0o755)  # the unprivileged test user reads service descriptions too
        env = cls(run_dir)
        info: dict[str, Any] = {"run_dir": str(run_dir), "owner_pid": os.getpid(), "watchdog_pid": None}
        if watchdog:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.helpers.testenv", "watchdog", str(os.getpid()), str(run_dir)],
                cwd=REPO_ROOT, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            info["watchdog_pid"] = proc.pid
        _write_json(env.env_file, info)
        return env

    @classmethod
    def from_environ(cls) -> TestEnv | None:
        value = os.environ.get(ENV_VAR)
        if not value or not Path(value).exists():
            return None
        return cls(Path(value).parent)

    def shared(self, name: str, start: Starter) -> dict[str, Any]:
        """The description of service ``name``, starting it first if nobody has.

        ``start(workdir)`` returns (description, pids to stop at the end of the run).
        """
        record = self.run_dir / f"{name}.json"
        if not record.exists():
            with open(self.run_dir / f"{name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not record.exists():
                    self._start(name, record, start)
        doc = json.loads(record.read_text())
        if not doc["ok"]:
            raise SharedServiceError(f"shared service {name!r} failed to start in this run: {doc['error']}")
        return dict(doc["data"])

    def _start(self, name: str, record: Path, start: Starter) -> None:
        workdir = self.run_dir / name
        workdir.mkdir(exist_ok=True)
        workdir.chmod(0o755)
        try:
            data, pids = start(workdir)
        except Exception as exc:
            _write_json(record, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            raise
        _write_json(record, {"ok": True, "data": data, "pids": pids})

    def teardown(self) -> None:
        """Stop every recorded pid (in parallel-safe order) and remove the run directory."""
        for record in sorted(self.run_dir.glob("*.json")):
            if record.name == "env.json":
                continue
            try:
                doc = json.loads(record.read_text())
            except (OSError, ValueError):
                continue
            for pid in doc.get("pids", []):
                stop_pid(int(pid))
        try:
            info = json.loads(self.env_file.read_text())
        except (OSError, ValueError):
            info = {}
        shutil.rmtree(self.run_dir, ignore_errors=True)
        watchdog = info.get("watchdog_pid")
        if watchdog and int(watchdog) != os.getpid():
            stop_pid(int(watchdog), timeout=2)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.chmod(0o644)
    os.replace(tmp, path)  # readers never see a half-written description


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _watchdog(owner_pid: int, run_dir: Path) -> None:
    started = _start_time(owner_pid)
    while run_dir.exists():
        if not pid_alive(owner_pid) or _start_time(owner_pid) != started:
            TestEnv(run_dir).teardown()
            return
        time.sleep(1.0)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watchdog":
        _watchdog(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.helpers.testenv watchdog OWNER_PID RUN_DIR")
