"""On-disk container state for vapp-oci (and the native backend), under ``--root``.

Layout::

    <root>/<id>/
      state.json     {"ociVersion", "id", "pid", "bundle", "annotations", "status" (stored),
                      "pidStartTime", "created", "hooks", "cgroups", "rootless"}
                     written atomically (tmp + fsync + rename)
      exec.sock      the init's start socket; present while the container is "created"
      exit           exit record {"status", "exitedAt"} written by a supervising shim

State machine (OCI runtime spec)::

    creating ──(init ready)──► created ──(start: exec.sock consumed)──► running
        │                          │                                       │
        └────────(init dies)───────┴──────────(process gone/zombie)────────┴──► stopped ──delete──► (gone)

The live status is always derived from the real process: ``/proc/<pid>/stat`` with the
recorded start time (pid reuse guard); a zombie counts as stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any

OCI_VERSION = "1.0.2"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}$")


def valid_id(container_id: str) -> bool:
    return bool(_ID_RE.match(container_id))


def container_dir(root: str, container_id: str) -> str:
    return os.path.join(root, container_id)


def write_atomic(path: str, data: bytes, mode: int = 0o600, durable: bool = False) -> None:
    """tmp + rename: readers never see a torn file, even if the writer is killed.

    ``durable`` adds an fsync (power loss). Run-dir state does not outlive a reboot (its
    processes do not either), so it skips the fsync: a few ms per container."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def save(root: str, state: dict[str, Any]) -> None:
    write_atomic(os.path.join(container_dir(root, state["id"]), "state.json"),
                 json.dumps(state, sort_keys=True).encode())


def load(root: str, container_id: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(container_dir(root, container_id), "state.json"), "rb") as fh:
            data: dict[str, Any] = json.loads(fh.read())
            return data
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_exit(root: str, container_id: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(container_dir(root, container_id), "exit"), "rb") as fh:
            data: dict[str, Any] = json.loads(fh.read())
            return data
    except (FileNotFoundError, ValueError):
        return None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def process_alive(pid: int, start_time: int | None) -> bool:
    """True if ``pid`` is the same live process (not a zombie, not a reused pid)."""
    if pid <= 0:
        return False
    info = proc_stat(pid)
    if info is None or info[0] in ("Z", "X", "x"):
        return False
    return start_time is None or info[1] == start_time


def live_status(root: str, state: dict[str, Any]) -> str:
    stored = state.get("status", "creating")
    if stored == "stopped" or not process_alive(int(state.get("pid") or 0), state.get("pidStartTime")):
        return "creating" if stored == "creating" and not state.get("pid") else "stopped"
    if stored == "creating":
        return "creating"
    if os.path.exists(os.path.join(container_dir(root, state["id"]), "exec.sock")):
        return "created"
    return "running"


def public_state(root: str, state: dict[str, Any]) -> dict[str, Any]:
    """The OCI ``state`` JSON (pid only while the process exists)."""
    status = live_status(root, state)
    out: dict[str, Any] = {
        "ociVersion": state.get("ociVersion", OCI_VERSION),
        "id": state["id"],
        "status": status,
        "bundle": state["bundle"],
        "annotations": state.get("annotations") or {},
    }
    if status in ("created", "running"):
        out["pid"] = state["pid"]
    else:
        out["pid"] = 0
    if state.get("created"):
        out["created"] = state["created"]
    return out


def pids_in_pid_namespace(pid: int) -> list[int]:
    """Every process sharing ``pid``'s pid namespace (works without cgroups); [] if it is gone."""
    try:
        target = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    out.append(int(entry))
    return sorted(out)


def remove(root: str, container_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(container_dir(root, container_id))


def list_ids(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "state.json")))
    except FileNotFoundError:
        return []
