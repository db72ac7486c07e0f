"""The individual probes of ``vapp-core check``.

Every probe that needs the kernel's answer asks it for real, in a short-lived
child process (``unshare``, ``mount``, ``fuse-overlayfs``), never by forking
the caller: the daemon is threaded. Each child runs in its own session under
a timeout and is killed as a group when it overruns.

Every path a probe reads is a field of :class:`CheckEnv`, so tests can point a
probe at a device node or file of their own instead of changing the machine.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app.check import cgroups
from app.check.result import CheckResult, Severity

CAP_SYS_RESOURCE = 24
EXTRA_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_SUBIDS = 65536


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


@dataclass(frozen=True)
class CheckEnv:
    """What the checks look at; defaults describe the calling process on this machine."""

    uid: int = field(default_factory=os.geteuid)
    user: str = field(default_factory=_username)
    subuid_file: Path = Path("/etc/subuid")
    subgid_file: Path = Path("/etc/subgid")
    tun_device: Path = Path("/dev/net/tun")
    fuse_device: Path = Path("/dev/fuse")
    mountinfo: Path = Path("/proc/self/mountinfo")
    proc_cgroup: Path = Path("/proc/self/cgroup")
    proc_status: Path = Path("/proc/self/status")
    scratch_dir: Path | None = None  # where mount probes run: put it on the state dir's filesystem
    search_path: str | None = None  # PATH to find helpers in (default: $PATH plus the sbin dirs)
    timeout: float = 5.0  # per probe
    default_runtime: str = "native"  # runtime.default_runtime: native mounts a rootless overlay in the container

    @property
    def rootless(self) -> bool:
        return self.uid != 0

    def which(self, name: str) -> str | None:
        path = self.search_path if self.search_path is not None else (
            os.environ.get("PATH", "") + ":" + EXTRA_PATH)
        return shutil.which(name, path=path)


def run_probe(argv: list[str], timeout: float, cwd: Path | None = None) -> tuple[int | None, str]:
    """(exit code or None when it could not run / timed out, combined output)."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=cwd, start_new_session=True)
    except OSError as exc:
        return None, f"cannot run {argv[0]}: {exc.strerror or exc}"
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, f"{argv[0]} timed out after {timeout:g}s"
    return proc.returncode, out.strip()


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _userns_hint() -> str:
    knobs = {
        "/proc/sys/kernel/unprivileged_userns_clone": "sysctl -w kernel.unprivileged_userns_clone=1",
        "/proc/sys/user/max_user_namespaces": "sysctl -w user.max_user_namespaces=15000",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns":
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
    }
    bad = {"/proc/sys/kernel/unprivileged_userns_clone": "0", "/proc/sys/user/max_user_namespaces": "0",
           "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}
    for path, fix in knobs.items():
        if _read(Path(path)) == bad[path]:
            return f"{path} is {bad[path]}: {fix} (as root)"
    return ("enable unprivileged user namespaces (kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces>0); in a container, allow unshare (seccomp/AppArmor)")


def check_userns(env: CheckEnv) -> CheckResult:
    name = "user namespaces"
    sev = Severity.FATAL if env.rootless else Severity.WARN
    unshare = env.which("unshare")
    if unshare is None:
        return CheckResult(name, False, sev, "unshare (util-linux) not found", "apt-get install util-linux")
    code, out = run_probe([unshare, "--user", "--map-root-user", "true"], env.timeout)
    if code == 0:
        return CheckResult(name, True, sev, f"unshare(CLONE_NEWUSER) works for uid {env.uid}")
    return CheckResult(name, False, sev, f"cannot create a user namespace: {_last_line(out)}", _userns_hint())


def _subid_range(path: Path, user: str, uid: int) -> tuple[int, int] | None:
    """(start, total count) over every line for ``user`` or its uid."""
    text = _read(path)
    if text is None:
        return None
    start, total = None, 0
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[1].isdigit() and parts[2].isdigit():
            start = int(parts[1]) if start is None else start
            total += int(parts[2])
    return None if start is None else (start, total)


def check_subids(env: CheckEnv, kind: str) -> CheckResult:
    path = env.subuid_file if kind == "subuid" else env.subgid_file
    name = f"/etc/{kind} range"
    found = _subid_range(path, env.user, env.uid)
    fix = f"usermod --add-{kind}s 100000-165535 {env.user} (as root)"
    if not env.rootless:
        detail = "not needed as root" + (f" ({path}: {found[0]}+{found[1]})" if found else "")
        return CheckResult(name, True, Severity.WARN, detail)
    if found is None:
        return CheckResult(name, False, Severity.WARN,
                           f"no range for {env.user} in {path}: containers get a single id (yours as 0), "
                           "files owned by other ids in images are squashed", fix)
    start, count = found
    if count < MIN_SUBIDS:
        return CheckResult(name, False, Severity.WARN,
                           f"{path}: {env.user} has {count} ids from {start}, fewer than {MIN_SUBIDS}: "
                           "images with higher ids are squashed", fix)
    return CheckResult(name, True, Severity.WARN, f"{path}: {env.user} has {count} ids from {start}")


def _privileged(path: str) -> str | None:
    """How ``path`` gets its privilege: "setuid root", "file capabilities", or None."""
    st = os.stat(path)
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        return "setuid root"
    try:
        if os.getxattr(path, "security.capability"):
            return "file capabilities"
    except OSError:
        pass
    return None


def check_idmap_helpers(env: CheckEnv) -> CheckResult:
    name = "newuidmap/newgidmap"
    found, problems = [], []
    for tool in ("newuidmap", "newgidmap"):
        path = env.which(tool)
        if path is None:
            problems.append(f"{tool} not found")
            continue
        how = _privileged(path)
        if how is None:
            problems.append(f"{path} is neither setuid root nor has file capabilities")
        else:
            found.append(f"{path} ({how})")
    if not problems:
        return CheckResult(name, True, Severity.WARN, ", ".join(found))
    if not env.rootless:
        return CheckResult(name, True, Severity.WARN, "not needed as root; " + "; ".join(problems))
    return CheckResult(name, False, Severity.WARN,
                       "; ".join(problems) + ": only a single-id mapping (your uid as 0) is possible",
                       "apt-get install uidmap (ships them setuid root)")


def check_pasta(env: CheckEnv) -> CheckResult:
    path = env.which("pasta")
    if path:
        return CheckResult("pasta", True, Severity.WARN, path)
    slirp = env.which("slirp4netns")
    fallback = f"; slirp4netns at {slirp} is used instead" if slirp else "; rootless containers get no network"
    return CheckResult("pasta", False, Severity.WARN, "pasta (passt) not found" + fallback,
                       "apt-get install passt")


def check_device(env: CheckEnv, device: Path, purpose: str) -> CheckResult:
    name = str(device)
    try:
        st = os.stat(device)
    except OSError as exc:
        return CheckResult(name, False, Severity.WARN, f"missing ({exc.strerror}): {purpose} unavailable",
                           f"load the module (modprobe) or pass the device in (--device {device})")
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISCHR(st.st_mode):
        return CheckResult(name, False, Severity.WARN, f"not a character device: {purpose} unavailable",
                           f"recreate {device} as the kernel's character device")
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return CheckResult(name, False, Severity.WARN,
                           f"cannot open for uid {env.uid} (mode {mode:04o}): {exc.strerror}; "
                           f"{purpose} unavailable",
                           f"chmod 666 {device} (as root; udev does this on most systems)")
    return CheckResult(name, True, Severity.WARN, f"usable by uid {env.uid} (mode {mode:04o})")


def _rmtree(path: Path) -> None:
    # overlay leaves work/work with mode 000: make everything writable, then remove
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, d), 0o700)
    shutil.rmtree(path, ignore_errors=True)


OVERLAY_SCRIPT = """set -e
cd "$1"
mkdir -p lower/dir upper work merged
echo lower > lower/dir/file
mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work$2 merged
rm -rf merged/dir
test ! -e merged/dir
echo upper > merged/new
umount merged
"""

FUSE_SCRIPT = """set -e
cd "$1"
mkdir -p lower upper work merged
echo lower > lower/file
"$2" -o lowerdir=lower,upperdir=upper,workdir=work merged
grep -q lower merged/file
echo upper > merged/new
umount merged 2>/dev/null || fusermount3 -u merged 2>/dev/null || fusermount -u merged
"""


def _in_userns(env: CheckEnv, script: str, *args: str) -> tuple[int | None, str]:
    unshare = env.which("unshare")
    if unshare is None:
        return None, "unshare (util-linux) not found"
    scratch = Path(tempfile.mkdtemp(prefix="vapp-check-", dir=env.scratch_dir))
    try:
        return run_probe([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
                          str(scratch), *args], env.timeout)
    finally:
        _rmtree(scratch)


def check_overlay_userns(env: CheckEnv) -> CheckResult:
    name = "overlayfs in a user namespace"
    code, out = _in_userns(env, OVERLAY_SCRIPT, ",userxattr")
    where = env.scratch_dir or Path(tempfile.gettempdir())
    if code == 0:
        return CheckResult(name, True, Severity.WARN, f"mount with userxattr works on {where}")
    plain, _ = _in_userns(env, OVERLAY_SCRIPT, "")
    extra = (" (it mounts without userxattr, but removing lower directories then fails)"
             if plain == 0 else "")
    return CheckResult(name, False, Severity.WARN,
                       f"overlay mount with userxattr failed on {where}: {_last_line(out)}{extra}; "
                       "fuse-overlayfs or copying snapshots are used instead",
                       "kernel >= 5.11 with overlay, and a state dir on ext4/xfs/btrfs (not overlay or nfs)")


def check_fuse_overlayfs(env: CheckEnv) -> CheckResult:
    name = "fuse-overlayfs"
    binary = env.which("fuse-overlayfs")
    if binary is None:
        return CheckResult(name, False, Severity.WARN, "not found: the fuse snapshotter is unavailable",
                           "apt-get install fuse-overlayfs")
    code, out = _in_userns(env, FUSE_SCRIPT, binary)
    if code == 0:
        return CheckResult(name, True, Severity.WARN, f"{binary} mounts in a user namespace")
    return CheckResult(name, False, Severity.WARN, f"{binary} failed to mount: {_last_line(out)}",
                       f"chmod 666 {env.fuse_device} (as root) and make sure the fuse module is loaded")


def check_cgroups(env: CheckEnv) -> CheckResult:
    name = "cgroups"
    mountinfo, membership = _read(env.mountinfo), _read(env.proc_cgroup)
    if mountinfo is None or membership is None:
        return CheckResult(name, False, Severity.WARN, "cannot read /proc/self/mountinfo or /proc/self/cgroup",
                           "mount /proc")
    report = cgroups.inspect(mountinfo, membership)
    detail = cgroups.describe(report)
    if report.limits_possible:
        return CheckResult(name, True, Severity.WARN, detail)
    return CheckResult(name, False, Severity.WARN, detail + ": memory/cpu/pids limits are not applied",
                       "run as root, or delegate a cgroup subtree to this user "
                       "(systemd: Delegate=yes; cgroup v1: mkdir and chown a directory in each controller)")


def check_sys_resource(env: CheckEnv) -> CheckResult:
    name = "CAP_SYS_RESOURCE"
    status = _read(env.proc_status) or ""
    caps = {k: int(v, 16) for k, _, v in (line.partition(":\t") for line in status.splitlines())
            if k in ("CapEff", "CapBnd") and v}
    if caps.get("CapEff", 0) >> CAP_SYS_RESOURCE & 1:
        return CheckResult(name, True, Severity.WARN, "in the effective set")
    where = "bounding set" if not caps.get("CapBnd", 0) >> CAP_SYS_RESOURCE & 1 else "effective set"
    return CheckResult(name, False, Severity.WARN,
                       f"missing from the {where}: negative oom_score_adj and raising hard rlimits are "
                       "impossible; they are clamped (oom_score_adj to >= 0, rlimits to the current hard limit)",
                       "nothing needed (clamping is safe); to allow them, run with CAP_SYS_RESOURCE")


def check_oci_runtimes(env: CheckEnv) -> CheckResult:
    name = "crun/runc"
    found = []
    for tool in ("crun", "runc"):
        path = env.which(tool)
        if path is None:
            continue
        code, out = run_probe([path, "--version"], min(env.timeout, 3.0))
        version = out.splitlines()[0] if code == 0 and out else "version unknown"
        found.append(f"{path} ({version})")
    if found:
        return CheckResult(name, True, Severity.WARN, ", ".join(found))
    return CheckResult(name, False, Severity.WARN, "neither crun nor runc found: only the native backend works",
                       "apt-get install crun runc")
