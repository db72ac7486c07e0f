"""``vapp-core check``: can this machine run rootless containers, and what is degraded?

Usage (the CLI and the daemon's start-up both do this)::

    results = run_checks()              # or run_checks(CheckEnv(scratch_dir=state_dir))
    print(render_text(results))         # or render_json(results)
    sys.exit(exit_code(results))        # 1 only when a fatal check failed

Checks (severity of a failure)::

    user namespaces               fatal when not root (rootless needs them), else warn
    /etc/subuid, /etc/subgid      warn: single-id mapping instead
    newuidmap/newgidmap           warn: single-id mapping instead
    pasta                         warn: slirp4netns or no network instead
    /dev/net/tun, /dev/fuse       warn: rootless network / fuse-overlayfs unavailable
    overlayfs in a user namespace warn: fuse-overlayfs or copy snapshots instead
    fuse-overlayfs                warn
    cgroups                       warn: limits not applied when nothing is writable
    CAP_SYS_RESOURCE              warn: oom_score_adj and rlimits clamped
    crun/runc                     warn: the native backend only
    snapshotter                   always ok: which one ``runtime.snapshotter = auto`` picks, and why

Probes run concurrently (each bounded by ``CheckEnv.timeout``), results come
back in the order above.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from app.check import probes
from app.check.probes import CheckEnv
from app.check.result import CheckResult, Severity, exit_code, render_json, render_text

__all__ = ["CheckEnv", "CheckResult", "Severity", "exit_code", "render_json", "render_text", "run_checks"]


def _all(env: CheckEnv) -> list[tuple[str, Callable[[], CheckResult]]]:
    return [
        ("userns", lambda: probes.check_userns(env)),
        ("subuid", lambda: probes.check_subids(env, "subuid")),
        ("subgid", lambda: probes.check_subids(env, "subgid")),
        ("idmap_helpers", lambda: probes.check_idmap_helpers(env)),
        ("pasta", lambda: probes.check_pasta(env)),
        ("tun", lambda: probes.check_device(env, env.tun_device, "rootless networking (pasta, slirp4netns)")),
        ("fuse", lambda: probes.check_device(env, env.fuse_device, "fuse-overlayfs")),
        ("overlay_userns", lambda: probes.check_overlay_userns(env)),
        ("fuse_overlayfs", lambda: probes.check_fuse_overlayfs(env)),
        ("cgroups", lambda: probes.check_cgroups(env)),
        ("cap_sys_resource", lambda: probes.check_sys_resource(env)),
        ("oci_runtimes", lambda: probes.check_oci_runtimes(env)),
        ("snapshotter", lambda: _check_snapshotter(env)),
    ]


def _check_snapshotter(env: CheckEnv) -> CheckResult:
    """Which root-filesystem snapshotter the daemon picks under ``runtime.snapshotter = auto``."""
    import tempfile
    from pathlib import Path

    from app.runtime.snapshots.select import choose_snapshotter

    name, reason = choose_snapshotter("auto", Path(env.scratch_dir or tempfile.gettempdir()), rootless=env.rootless,
                                      mounts_in_userns=env.default_runtime == "native")  # as app/wiring.py
    fix = "" if name != "copy" else "copy works everywhere but costs a full copy per container"
    return CheckResult("snapshotter", True, Severity.WARN, f"{name}: {reason}", fix)


def run_checks(env: CheckEnv | None = None) -> list[CheckResult]:
    """Run every check for ``env`` (default: this process on this machine)."""
    env = env or CheckEnv()
    checks = _all(env)
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="vapp-check") as pool:
        futures = [(check_id, pool.submit(check)) for check_id, check in checks]
        return [replace(_result(check_id, f.result), id=check_id) for check_id, f in futures]


def _result(check_id: str, get: Callable[[], CheckResult]) -> CheckResult:
    # A probe that crashes is a bug in the probe, not a broken machine: report, never raise.
    try:
        return get()
    except Exception as exc:
        return CheckResult(check_id, False, Severity.WARN, f"the check crashed: {type(exc).__name__}: {exc}",
                           "report this as a bug")
