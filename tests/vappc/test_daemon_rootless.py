"""A rootless daemon (as vapptest, copy snapshotter): StartApp with a template and setup task, then stop."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from app.services.app_types import AppStatus
from app.vappc.client import Client
from tests.helpers.daemon import DaemonProcess
from tests.helpers.users import UnprivUser


def test_rootless_app_lifecycle(registry: Any, test_images: Any, unpriv_user: UnprivUser) -> None:
    work = Path(tempfile.mkdtemp(prefix="vcrl", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        cfg = work / "vapp.toml"
        cfg.write_text(f'[runtime]\nsnapshotter = "copy"\n[blob.upstreams."{registry.host}"]\nurl = "{registry.url}"\n')
        os.chmod(cfg, 0o644)
        app_id = f"rl-{uuid.uuid4().hex[:6]}"
        check = "grep -q x=1 /etc/x.conf && test $(stat -c %u /etc/x.conf) = 0"
        spec = {"app_id": app_id, "name": app_id, "image": test_images.busybox.ref, "command": ["sleep", "300"],
                "config_templates": [{"template": "x={{ x }}", "destination": "/etc/x.conf"}],
                "template_vars": {"x": "1"},
                # The rendered file is root's inside the container (the daemon's uid maps to 0).
                "setup_tasks": [{"name": "check", "command": ["sh", "-c", check]}]}
        with DaemonProcess(work / "d", user=unpriv_user, args=["--config", str(cfg)]) as d, \
                Client(str(d.vappc_socket), timeout=120) as c:
            c.start_app(spec)
            assert c.app_state(app_id) == AppStatus("Running")
            c.stop_app(app_id, grace=0)
            assert c.app_state(app_id) == AppStatus("Stopped")
    finally:
        shutil.rmtree(work, ignore_errors=True)
