"""A throwaway Distribution registry (Debian's ``docker-registry``) on loopback.

Disk layout under ``workdir``::

    config.yml      http.addr 127.0.0.1:<port>, filesystem storage, delete enabled
    storage/        the registry's filesystem driver root
    registry.log    its stdout/stderr
"""

from __future__ import annotations

import functools
import json
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ports import free_port
from tests.helpers.procs import ServiceStartError, spawn_detached, stop_pid, wait_until

REGISTRY_BIN = "docker-registry"


@dataclass(frozen=True)
class RegistryInfo:
    host: str  # "127.0.0.1:PORT"
    pid: int
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "pid": self.pid, "workdir": str(self.workdir)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RegistryInfo:
        return cls(host=str(data["host"]), pid=int(str(data["pid"])), workdir=Path(str(data["workdir"])))


def registry_config(port: int, storage: Path, *, proxy_url: str | None = None) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "vapp-test-only"},
    }
    if proxy_url:
        config["proxy"] = {"remoteurl": proxy_url}
    return config


def _v2_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=0.5) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def start_registry(workdir: Path, *, proxy_url: str | None = None, attempts: int = 5) -> RegistryInfo:
    """Start ``docker-registry`` on a free loopback port and wait until /v2/ answers."""
    if shutil.which(REGISTRY_BIN) is None:
        raise ServiceStartError(f"{REGISTRY_BIN} not found: run scripts/setup-system.sh")
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    last: Exception | None = None
    for _ in range(attempts):  # retry: the free port can be taken before the registry binds it
        port = free_port()
        config_path = workdir / "config.yml"
        # JSON is valid YAML; the registry reads it as its config file.
        config_path.write_text(json.dumps(registry_config(port, storage, proxy_url=proxy_url)))
        log_path = workdir / "registry.log"
        proc = spawn_detached([REGISTRY_BIN, "serve", str(config_path)], log_path)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(functools.partial(_v2_answers, url), timeout=15, what="docker-registry",
                       proc=proc, log_path=log_path)
        except ServiceStartError as exc:
            last = exc
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            continue
        return RegistryInfo(host=f"127.0.0.1:{port}", pid=proc.pid, workdir=workdir)
    raise ServiceStartError(f"docker-registry failed {attempts} times: {last}")


@contextmanager
def running_registry(workdir: Path, *, proxy_url: str | None = None) -> Iterator[RegistryInfo]:
    """A private registry for one test or benchmark (e.g. a pull-through peer), stopped on exit.

    Use the session ``registry`` fixture unless the test needs its own storage or config.
    """
    info = start_registry(workdir, proxy_url=proxy_url)
    try:
        yield info
    finally:
        stop_pid(info.pid)
