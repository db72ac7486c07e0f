"""The real daemon: StartApp over the vappc socket, then a daemon restart (SIGTERM and kill -9) with the app running."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.services.app_types import AppStatus
from app.vappc.client import Client
from tests.helpers.daemon import DaemonProcess

pytestmark = pytest.mark.root


def _args(tmp_path: Path, registry: Any) -> list[str]:
    cfg = tmp_path / "vapp.toml"
    cfg.write_text(f'[blob.upstreams."{registry.host}"]\nurl = "{registry.url}"\n')
    return ["--config", str(cfg)]


def _pid_of(c: Client, app_id: str) -> int:
    """The app's init pid, from RunDiagnostic's container listing (also checks that listing)."""
    for line in c.diagnostic()["containers"].splitlines():
        if line.startswith(f"container vapp-app-{app_id}:"):
            return int(re.search(r"pid=(\d+)", line).group(1))  # type: ignore[union-attr]
    raise AssertionError(f"vapp-app-{app_id} not in RunDiagnostic containers")


def test_apps_survive_daemon_restart_and_kill(tmp_path: Path, registry: Any, test_images: Any) -> None:
    app_id = f"keep-{uuid.uuid4().hex[:6]}"
    args = _args(tmp_path, registry)
    spec = {"app_id": app_id, "name": "keeper", "image": test_images.busybox.ref,
            "command": ["sh", "-c", "exec sleep 300"],
            "config_templates": [{"template": "v={{ v }}", "destination": "/etc/k.conf"}],
            "template_vars": {"v": "1"},
            "setup_tasks": [{"name": "chk", "command": ["grep", "-q", "v=1", "/etc/k.conf"]}]}
    d = DaemonProcess(tmp_path / "d", args=args)
    with d, Client(str(d.vappc_socket), timeout=60) as c:
        c.start_app(spec)
        assert c.app_state(app_id) == AppStatus("Running")
        pid = _pid_of(c, app_id)
    for crash in (False, True):
        d2 = DaemonProcess(tmp_path / "d", args=args)
        d2.start()
        try:
            with Client(str(d2.vappc_socket), timeout=60) as c:
                assert c.app_state(app_id) == AppStatus("Running")
                assert [a.app_id for a in c.list_apps()] == [app_id]
                assert _pid_of(c, app_id) == pid  # the same process, not a restarted one
                os.kill(pid, 0)
        finally:
            if crash:
                d2.kill()
            else:
                d2.stop()
    with DaemonProcess(tmp_path / "d", args=args) as d3, Client(str(d3.vappc_socket), timeout=60) as c:
        assert c.app_state(app_id) == AppStatus("Running")
        c.stop_app(app_id, grace=1)
        assert c.app_state(app_id) == AppStatus("Stopped")
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
