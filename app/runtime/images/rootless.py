"""Layer extraction for an unprivileged daemon: inside a user namespace with a full ID map.

Why a user namespace (and not ``user.containers.override_stat`` xattrs as
fuse-overlayfs can read): files then really belong to the subordinate IDs on
disk, so the same snapshot works as a native overlayfs lower dir (mounted with
``userxattr`` in the container's user namespace), under fuse-overlayfs, with
crun/runc rootless and with the copy fallback; an xattr convention would only
be understood by fuse-overlayfs. Inside the namespace the helper is root: it
can ``chown`` to every mapped ID, ``mknod`` overlay whiteouts (0/0, allowed in a
user namespace since Linux 5.8) and set ``user.overlay.opaque``.

The map is the rootless convention every part of the node uses::

    container ID 0            → the daemon's uid/gid
    container IDs 1..count    → /etc/subuid (subgid) range start..start+count-1

The helper is an exec'd, single-threaded process (``unshare`` from util-linux
≥ 2.38 creates the namespace and calls the setuid ``newuidmap``/``newgidmap``
before exec'ing Python): the daemon itself never forks with threads running.
Request and result travel as one JSON document on stdin / stdout.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from app.errors import Category, Internal, ResourceExhausted, VappError
from app.runtime.images.safefs import UnsafeEntry
from app.runtime.images.stream import BadLayer
from app.runtime.images.unpack import UnpackOptions, UnpackResult

HELPER_TIMEOUT = 3600.0


@dataclass(frozen=True)
class IdRange:
    start: int
    count: int


@dataclass(frozen=True)
class IdMap:
    """The daemon's IDs plus its subordinate ranges (container 0 = daemon, 1.. = range)."""

    uid: int
    gid: int
    subuid: IdRange
    subgid: IdRange

    @property
    def id_limit(self) -> int:
        return min(self.subuid.count, self.subgid.count)


def read_subid(path: Path, user: str, ident: int) -> IdRange | None:
    """The first range for ``user`` (by name or number) in an /etc/subuid-style file."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(ident)):
            continue
        try:
            return IdRange(int(fields[1]), int(fields[2]))
        except ValueError:
            continue
    return None


def current_idmap(etc: Path = Path("/etc")) -> IdMap | None:
    """This process's map, or None when root or when no subordinate range is configured."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    su = read_subid(etc / "subuid", name, uid)
    sg = read_subid(etc / "subgid", name, uid)
    if su is None or sg is None or su.count < 1 or sg.count < 1:
        return None
    return IdMap(uid, gid, su, sg)


def helper_argv(idmap: IdMap) -> list[str]:
    return [
        "unshare",
        "--user",
        "--map-root-user",
        f"--map-users={idmap.subuid.start},1,{idmap.subuid.count}",
        f"--map-groups={idmap.subgid.start},1,{idmap.subgid.count}",
        "--",
        sys.executable,
        "-m",
        "app.runtime.images.helper",
    ]


def rootless_options(idmap: IdMap) -> UnpackOptions:
    return UnpackOptions(
        whiteouts="overlay", opaque_xattr="user.overlay.opaque", chown=True, devices=False, id_limit=idmap.id_limit
    )


def _helper_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parents[3]), env.get("PYTHONPATH")) if p)
    return env


_ERRORS: dict[str, type[VappError]] = {
    "UnsafeEntry": UnsafeEntry,
    "BadLayer": BadLayer,
    "ResourceExhausted": ResourceExhausted,
}


def unpack_in_userns(idmap: IdMap, blob: Path, media_type: str, dest: Path, opts: UnpackOptions) -> UnpackResult:
    """Run the extraction of ``blob`` into ``dest`` in a mapped user namespace."""
    request = {"blob": str(blob), "media_type": media_type, "dest": str(dest), "options": asdict(opts)}
    env = _helper_env()
    try:
        proc = subprocess.run(
            helper_argv(idmap),
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Internal(f"layer unpack helper failed to run: {exc}", category=Category.IMAGE) from exc
    try:
        reply = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {}
    except ValueError:
        reply = {}
    if "result" in reply:
        return UnpackResult(**reply["result"])
    if "error" in reply:
        err = reply["error"]
        cls = _ERRORS.get(reply.get("type", ""), Internal)
        raise cls(err.get("message", "layer unpack failed"), category=Category.IMAGE, details=err.get("details"))
    raise Internal(
        f"layer unpack helper exited {proc.returncode}: {proc.stderr.strip()[-500:]}", category=Category.IMAGE
    )


def merge_in_userns(idmap: IdMap, layer_dirs: list[Path], dest: Path) -> None:
    """Flatten layer snapshots into ``dest`` keeping subordinate ownership (copy snapshotter)."""
    argv = [*helper_argv(idmap), "merge", str(dest), *(str(p) for p in layer_dirs)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=HELPER_TIMEOUT, env=_helper_env(), check=False)
    if proc.returncode != 0:
        raise Internal(f"cannot build a rootfs copy: {proc.stderr.strip()[-300:]}", category=Category.IMAGE)


def remove_in_userns(idmap: IdMap, path: Path) -> None:
    """``rm -rf`` of a tree holding files of subordinate IDs (the daemon alone may not)."""
    if not os.path.lexists(path):
        return
    proc = subprocess.run(
        [*helper_argv(idmap), "rm", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_helper_env(),
        check=False,
    )
    if proc.returncode != 0:
        raise Internal(f"cannot remove {path}: {proc.stderr.strip()[-300:]}", category=Category.IMAGE)
