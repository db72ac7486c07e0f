"""The container process: everything after pivot_root up to execve (runs in the container init).

Order (runc's; :mod:`app.runtime.oci.init` calls these)::

    sysctl ─► [masked/readonly paths] ─► hostname/domainname ─► rlimits (clamped) ─►
    oom_score_adj (clamped) ─► executable lookup ─► [wait for start] ─► [seccomp if no nnp] ─►
    drop bounding set ─► keepcaps ─► setgroups/setgid/setuid ─► umask, cwd ─►
    capset + ambient ─► no_new_privs ─► [seccomp] ─► execve (127 if not found)
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from typing import Any

from app.runtime.kernel import PR_SET_KEEPCAPS, Kernel, caps

RLIMITS: dict[str, int] = {
    name: getattr(resource, name) for name in (
        "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
        "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
        "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
    ) if hasattr(resource, name)
}  # fmt: skip


class SetupError(Exception):
    """A failure inside the init; ``code`` is the exit status the container reports."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def warn(message: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"vapp-oci: warning: {message}\n".encode())


def apply_sysctl(kernel: Kernel, sysctl: dict[str, str]) -> None:
    for key, value in sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            kernel.write_file(path, str(value))
        except OSError as exc:
            raise SetupError(f"sysctl {key}={value}: {exc.strerror}") from exc


def apply_rlimits(rlimits: list[dict[str, Any]]) -> None:
    """Set limits; a hard limit above the current one needs CAP_SYS_RESOURCE: clamp then."""
    for item in rlimits:
        number = RLIMITS.get(item["type"])
        if number is None:
            raise SetupError(f"rlimit {item['type']!r} is not a known resource limit")
        soft, hard = int(item["soft"]), int(item["hard"])
        try:
            resource.setrlimit(number, (soft, hard))
        except (ValueError, OSError):
            _, current_hard = resource.getrlimit(number)
            hard = min(hard, current_hard) if current_hard != resource.RLIM_INFINITY else hard
            soft = min(soft, hard) if hard != resource.RLIM_INFINITY else soft
            warn(f"rlimit {item['type']} clamped to soft={soft} hard={hard} (no CAP_SYS_RESOURCE)")
            resource.setrlimit(number, (soft, hard))


def apply_oom_score_adj(kernel: Kernel, value: int | None) -> None:
    if value is None:
        return
    try:
        kernel.write_file("/proc/self/oom_score_adj", str(value))
    except PermissionError:
        # Lowering below the current value needs CAP_SYS_RESOURCE (absent on this machine).
        warn(f"oomScoreAdj {value} not permitted; keeping the inherited value")


def switch_user(kernel: Kernel, user: dict[str, Any], keep_caps: bool) -> None:
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    extra = [int(g) for g in user.get("additionalGids") or []]
    if keep_caps:
        kernel.prctl(PR_SET_KEEPCAPS, 1)
    try:
        try:
            os.setgroups(sorted({gid, *extra}) if extra else [])
        except PermissionError:
            if extra:
                raise
            # setgroups is denied in a single-ID user namespace: nothing to clear there.
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise SetupError(f"cannot switch to uid {uid} gid {gid} groups {extra}: {exc.strerror} "
                         "(is the ID mapped in the user namespace?)") from exc
    if keep_caps:
        kernel.prctl(PR_SET_KEEPCAPS, 0)
    if "umask" in user and user["umask"] is not None:
        os.umask(int(user["umask"]))


def apply_capabilities(kernel: Kernel, spec: dict[str, Any] | None) -> None:
    spec = spec or {}
    try:
        masks = {key: caps.cap_mask(spec.get(key) or []) for key in
                 ("bounding", "effective", "permitted", "inheritable", "ambient")}
    except caps.UnknownCapability as exc:
        raise SetupError(f"unknown capability {exc.args[0]!r}") from exc
    caps.apply_sets(kernel, masks["effective"], masks["permitted"], masks["inheritable"], masks["ambient"])


def drop_bounding(kernel: Kernel, spec: dict[str, Any] | None) -> None:
    try:
        bounding = caps.cap_mask((spec or {}).get("bounding") or [])
    except caps.UnknownCapability as exc:
        raise SetupError(f"unknown capability {exc.args[0]!r}") from exc
    caps.apply_bounding(kernel, bounding)


def find_executable(argv0: str, env: list[str], cwd: str) -> str:
    """Resolve argv[0] like execvp in the container; raise runc's message with code 127."""
    if "/" in argv0:
        path = argv0 if argv0.startswith("/") else os.path.join(cwd, argv0)
        if os.path.exists(path):
            if os.path.isdir(path) or not os.access(path, os.X_OK):
                raise SetupError(f'exec: "{argv0}": permission denied', 126)
            return path
        raise SetupError(f'exec: "{argv0}": stat {argv0}: no such file or directory', 127)
    path_var = next((e[5:] for e in env if e.startswith("PATH=")),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for directory in path_var.split(":"):
        candidate = os.path.join(directory or ".", argv0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SetupError(f'exec: "{argv0}": executable file not found in $PATH', 127)


def execute(path: str, args: list[str], env: list[str]) -> None:
    envmap = {}
    for item in env:
        key, _, value = item.partition("=")
        envmap[key] = value
    try:
        os.execve(path, args, envmap)
    except OSError as exc:
        code = 127 if exc.errno == errno.ENOENT else 126
        raise SetupError(f'exec: "{args[0]}": {exc.strerror}', code) from exc
