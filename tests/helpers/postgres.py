"""A throwaway PostgreSQL server on loopback, run as an unprivileged user.

PostgreSQL refuses to run as root, so the cluster belongs to the ``postgres``
system user when it exists (Debian's package creates it), else to the test
user. Disk layout under ``workdir`` (owned by that user)::

    data/         initdb cluster (trust auth on loopback, fsync off: tests only)
    sock/         its own Unix socket directory (never /var/run/postgresql)
    postgres.log  server log

``create_database`` gives each caller (e.g. each xdist worker) its own
database on the one server, so schema tests do not collide.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.ports import free_port
from tests.helpers.procs import ServiceStartError, spawn_detached, wait_until

SUPERUSER = "vapp"


@dataclass(frozen=True)
class PostgresInfo:
    host: str
    port: int
    pid: int
    user: str
    workdir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "pid": self.pid, "user": self.user,
                "workdir": str(self.workdir)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PostgresInfo:
        return cls(host=str(data["host"]), port=int(str(data["port"])), pid=int(str(data["pid"])),
                   user=str(data["user"]), workdir=Path(str(data["workdir"])))


def postgres_bindir() -> Path:
    """The newest /usr/lib/postgresql/<ver>/bin (Debian does not put initdb on PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not candidates:
        raise ServiceStartError("PostgreSQL server not installed: run scripts/setup-system.sh")
    return Path(candidates[-1]).parent


def _server_owner() -> pwd.struct_passwd:
    for name in ("postgres", "vapptest"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ServiceStartError("no 'postgres' or 'vapptest' user to run PostgreSQL: run scripts/setup-system.sh")


def start_postgres(workdir: Path, *, attempts: int = 3) -> PostgresInfo:
    """initdb a fresh cluster in ``workdir`` and start it on a free loopback port."""
    bindir = postgres_bindir()
    owner = _server_owner()
    workdir.mkdir(parents=True, exist_ok=True)
    data, sock = workdir / "data", workdir / "sock"
    for path in (workdir, sock):
        path.mkdir(exist_ok=True)
        os.chown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(workdir, 0o755)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(workdir)}
    uid, gid = owner.pw_uid, owner.pw_gid
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
         "--no-sync", "--no-instructions"],
        check=True, capture_output=True, env=env, cwd=workdir, timeout=120,
        user=uid, group=gid, extra_groups=[],
    )
    last: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        log_path = workdir / "postgres.log"
        proc = spawn_detached(
            [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(sock), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            log_path, env=env, cwd=workdir, user=uid, group=gid, extra_groups=[],
        )
        info = PostgresInfo("127.0.0.1", port, proc.pid, SUPERUSER, workdir)
        try:
            wait_until(functools.partial(_accepts, bindir, info), timeout=30, what="postgres",
                       proc=proc, log_path=log_path, interval=0.05)
        except ServiceStartError as exc:
            last = exc
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            continue
        return info
    raise ServiceStartError(f"postgres failed {attempts} times: {last}")


def _accepts(bindir: Path, info: PostgresInfo) -> bool:
    result = subprocess.run(
        [str(bindir / "pg_isready"), "-q", "-h", info.host, "-p", str(info.port), "-U", info.user],
        capture_output=True, timeout=5,
    )
    return result.returncode == 0


def create_database(info: PostgresInfo, prefix: str = "vapptest") -> str:
    """Create a fresh, uniquely named database and return its URL."""
    import psycopg  # only the postgres tests pay for the import

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=info.host, port=info.port, user=info.user, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return info.url(name)
