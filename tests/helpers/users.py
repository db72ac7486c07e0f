"""The unprivileged test user and running commands as it.

The suite runs as root; rootless behaviour is tested by dropping to
``vapptest`` (created by ``scripts/setup-system.sh`` with /etc/subuid and
/etc/subgid ranges). ``run_as`` switches uid/gid/groups in the child with
``subprocess``'s own ``user=``/``group=``/``extra_groups=`` (no ``su``, no PAM)
and gives it a clean, predictable environment.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_USER = "vapptest"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SubIdRange:
    start: int
    count: int


@dataclass(frozen=True)
class UnprivUser:
    name: str
    uid: int
    gid: int
    home: Path
    subuid: SubIdRange
    subgid: SubIdRange

    @property
    def subuid_start(self) -> int:
        return self.subuid.start

    @property
    def subuid_count(self) -> int:
        return self.subuid.count

    @property
    def subgid_start(self) -> int:
        return self.subgid.start

    @property
    def subgid_count(self) -> int:
        return self.subgid.count

    @property
    def runtime_dir(self) -> Path:
        """Where this user's XDG_RUNTIME_DIR points in ``run_as`` (created on demand)."""
        return Path(f"/tmp/vapp-run-{self.uid}")


def read_subid_range(path: Path, name: str, uid: int) -> SubIdRange | None:
    """The first range for ``name`` (or its numeric uid) in an /etc/subuid-style file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (name, str(uid)):
            return SubIdRange(int(parts[1]), int(parts[2]))
    return None


def lookup_user(name: str = DEFAULT_USER) -> UnprivUser:
    """Describe ``name``; fails loudly (with the fix) when setup has not run."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"test user {name!r} does not exist: run `bash scripts/setup-system.sh` as root"
        ) from None
    subuid = read_subid_range(Path("/etc/subuid"), name, pw.pw_uid)
    subgid = read_subid_range(Path("/etc/subgid"), name, pw.pw_uid)
    if subuid is None or subgid is None:
        raise RuntimeError(f"{name!r} has no /etc/subuid or /etc/subgid range: run scripts/setup-system.sh")
    return UnprivUser(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir), subuid, subgid)


def user_env(user: UnprivUser, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A login-like environment for ``user`` (no root HOME or XDG dirs leak in)."""
    user.runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(user.runtime_dir, user.uid, user.gid)
    env = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "XDG_RUNTIME_DIR": str(user.runtime_dir),
        "PYTHONPATH": str(REPO_ROOT),
    }
    for key in ("VAPP_TEST_ENV", "PYTHONDONTWRITEBYTECODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def run_as(
    user: UnprivUser,
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = False,
    timeout: float | None = 120,
    capture_output: bool = True,
    text: bool = True,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` as ``user`` and wait for it (``subprocess.run`` semantics).

    ``env`` entries are added to the user's clean environment; ``cwd`` defaults
    to the repository root so ``.venv/bin/python -c 'import app'`` works.
    Output is captured as text unless told otherwise.
    """
    return subprocess.run(
        [os.fspath(a) for a in argv],
        user=user.uid,
        group=user.gid,
        extra_groups=_supplementary_groups(user),
        env=user_env(user, env),
        cwd=os.fspath(cwd) if cwd is not None else str(REPO_ROOT),
        check=check,
        timeout=timeout,
        capture_output=capture_output,
        text=text,
        **kwargs,
    )


def popen_as(
    user: UnprivUser,
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> subprocess.Popen[Any]:
    """Start ``argv`` as ``user`` without waiting (``subprocess.Popen`` semantics)."""
    return subprocess.Popen(
        [os.fspath(a) for a in argv],
        user=user.uid,
        group=user.gid,
        extra_groups=_supplementary_groups(user),
        env=user_env(user, env),
        cwd=os.fspath(cwd) if cwd is not None else str(REPO_ROOT),
        **kwargs,
    )


def _supplementary_groups(user: UnprivUser) -> list[int]:
    return [g.gr_gid for g in grp.getgrall() if user.name in g.gr_mem and g.gr_gid != user.gid]
