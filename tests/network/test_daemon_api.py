"""The real daemon exposes the network manager on /v1/networks (behind the admin token)."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from tests.helpers.daemon import DaemonProcess
from tests.network.conftest import free_subnet


def test_networks_endpoint_on_the_real_daemon(tmp_path: Path) -> None:
    suffix = secrets.token_hex(4)
    env = {"VAPP_NETWORK__BRIDGE": f"vtd{suffix}", "VAPP_NETWORK__SUBNET": free_subnet(),
           "VAPP_NETWORK__NFT_TABLE": f"vtestd_{suffix}"}
    with DaemonProcess(tmp_path / "d", env=env) as daemon:
        assert httpx.get(daemon.admin_url + "/v1/networks").status_code == 401
        body = daemon.get("/v1/networks").json()
        assert body["driver"] == "bridge" and body["bridge"] == f"vtd{suffix}" and body["attachments"] == []
        assert daemon.get("/v1/networks/nothing").status_code == 404
        diag = daemon.get("/v1/networks/diagnostics").json()
        assert "lo" in diag["interfaces"] and diag["attachments"] == ""
