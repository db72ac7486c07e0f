"""The real daemon refuses to remove an image while an app's container uses it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from app.vappc.client import Client
from tests.helpers.daemon import DaemonProcess
from tests.vappc.test_daemon_restart import _args


def test_image_removal_refused_while_in_use(tmp_path: Path, registry: Any, test_images: Any) -> None:
    app_id = f"use-{uuid.uuid4().hex[:6]}"
    ref = test_images.busybox.ref
    spec = {"app_id": app_id, "name": "user", "image": ref, "command": ["sleep", "300"]}
    with DaemonProcess(tmp_path / "d", args=_args(tmp_path, registry)) as d, \
            Client(str(d.vappc_socket), timeout=60) as c, d.client() as admin:
        c.start_app(spec)
        image_id = admin.get(f"/v1/images/{ref}").json()["id"]
        refused = admin.delete(f"/v1/images/{image_id}")
        assert refused.status_code == 409, refused.text
        assert admin.get(f"/v1/images/{image_id}").status_code == 200  # state intact
        c.stop_app(app_id, grace=1)  # StopApp removes the app's container
        gone = admin.delete(f"/v1/images/{image_id}")
        assert gone.status_code == 200, gone.text
        assert admin.get(f"/v1/images/{image_id}").status_code == 404
