"""OCI hooks: run with the container state JSON on stdin, bounded by their timeout."""

from __future__ import annotations

import json
import os
from typing import Any


class HookError(Exception):
    pass


def run_hooks(hooks: list[dict[str, Any]] | None, state: dict[str, Any], stage: str) -> None:
    """Run each hook in order; the first failing one raises :class:`HookError` naming the stage."""
    if not hooks:
        return
    # Imported here, not at module level: it brings threading (an at-fork handler) into every
    # process the fork server forks. The init imports it before pivot_root when hooks exist.
    import subprocess

    payload = json.dumps(state).encode()
    for hook in hooks:
        path = hook["path"]
        args = hook.get("args") or [path]
        env = dict(e.split("=", 1) for e in hook.get("env") or [] if "=" in e)
        timeout = hook.get("timeout")
        if timeout is not None and int(timeout) <= 0:
            raise HookError(f"{stage} hook {path}: timeout must be positive")
        try:
            result = subprocess.run(
                args, executable=path, input=payload, env=env, capture_output=True,
                timeout=timeout, check=False, close_fds=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise HookError(f"{stage} hook {path} timed out after {timeout}s") from exc
        except OSError as exc:
            raise HookError(f"{stage} hook {path}: {exc.strerror}") from exc
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).decode(errors="replace").strip()[-500:]
            raise HookError(f"{stage} hook {path} exited with status {result.returncode}: {detail}")


def run_hooks_warn(hooks: list[dict[str, Any]] | None, state: dict[str, Any], stage: str) -> None:
    """poststart/poststop: a failing hook is logged and the remaining hooks still run (the spec:
    log a warning, continue "as if the hook had succeeded")."""
    for hook in hooks or []:
        try:
            run_hooks([hook], state, stage)
        except HookError as exc:
            os.write(2, f"vapp-oci: warning: {exc}\n".encode())
