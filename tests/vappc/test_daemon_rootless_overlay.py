"""A rootless daemon on the native runtime runs app containers on an overlay its init mounts
inside the container's own user+mount namespace: no copy of the image, writes in the upper dir."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from app.services.app_types import AppStatus
from app.vappc.client import Client
from tests.helpers.daemon import DaemonProcess
from tests.helpers.users import UnprivUser


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def test_rootless_overlay_rootfs(registry: Any, test_images: Any, unpriv_user: UnprivUser) -> None:
    work = Path(tempfile.mkdtemp(prefix="vcro", dir="/tmp"))
    os.chmod(work, 0o755)
    try:
        cfg = work / "vapp.toml"  # snapshotter left at auto: overlay with the native runtime
        cfg.write_text(f'[blob.upstreams."{registry.host}"]\nurl = "{registry.url}"\n')
        os.chmod(cfg, 0o644)
        app_id = f"ro-{uuid.uuid4().hex[:6]}"
        spec = {"app_id": app_id, "name": app_id, "image": test_images.busybox.ref,
                "command": ["sh", "-c", "echo written > /etc/marker; sleep 300"],
                "config_templates": [{"template": "x={{ x }}", "destination": "/etc/x.conf"}],
                "template_vars": {"x": "1"},
                "setup_tasks": [{"name": "check", "command": ["sh", "-c", "grep -q x=1 /etc/x.conf"]}]}
        with DaemonProcess(work / "d", user=unpriv_user, args=["--config", str(cfg)]) as d, \
                Client(str(d.vappc_socket), timeout=120) as c:
            snaps = d.state_dir / "snapshots"
            c.start_app(spec)
            assert c.app_state(app_id) == AppStatus("Running")
            layer_dirs = [p / "fs" for p in (snaps / "layers").iterdir() if not p.name.startswith(".")]
            layers_before = {p: _tree(p) for p in layer_dirs}
            assert layer_dirs and all(layers_before.values())
            containers = [p for p in (snaps / "containers").iterdir()]
            assert len(containers) == 1, containers
            base = containers[0]
            deadline = time.monotonic() + 20
            while not (base / "upper" / "etc" / "marker").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (base / "upper" / "etc" / "marker").read_text() == "written\n"  # the write landed in upper
            assert (base / "upper" / "etc" / "x.conf").read_text().startswith("x=1")  # template too
            # The mount lives only in the container's namespace: nothing merged or copied on the host.
            assert (base / "rootfs").is_dir() and not os.listdir(base / "rootfs")
            assert not os.path.ismount(base / "rootfs")
            assert {p: _tree(p) for p in layer_dirs} == layers_before  # image layers untouched
            assert all(not (p / "etc" / "marker").exists() for p in layer_dirs)
            c.stop_app(app_id, grace=0)
            assert c.app_state(app_id) == AppStatus("Stopped")
            assert not base.exists() or not os.listdir(base / "rootfs")
            deadline = time.monotonic() + 20
            while base.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not base.exists(), sorted(_tree(base))  # upper and work removed with the container
            assert {p: _tree(p) for p in layer_dirs} == layers_before
    finally:
        shutil.rmtree(work, ignore_errors=True)
