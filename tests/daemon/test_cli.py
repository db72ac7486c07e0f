"""vapp-core admin commands against real state: reset, migrate, engine subcommands."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from app.config import load_settings
from app.runtime.network.manager import build_network_manager
from app.state.db import open_database
from tests.daemon.test_daemon import run_cli
from tests.helpers.daemon import DaemonProcess

pytestmark = pytest.mark.xdist_group("daemon")


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def test_reset_refuses_while_running_then_removes_bridge_and_rules(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    net_env = {
        "VAPP_NETWORK__BRIDGE": f"vr{tag}",
        "VAPP_NETWORK__SUBNET": "10.213.0.0/24",
        "VAPP_NETWORK__NFT_TABLE": f"vr{tag}",
    }
    dirs = ["--state-dir", str(tmp_path / "d" / "state"), "--run-dir", str(tmp_path / "d" / "run")]
    with DaemonProcess(tmp_path / "d", env=net_env) as d:
        r = run_cli("reset", *dirs, env=net_env)
        assert r.returncode == 1 and "stop it before a reset" in r.stderr
        assert d.get("/v1/info").status_code == 200
    settings = load_settings(state_dir=tmp_path / "d" / "state", run_dir=tmp_path / "d" / "run",
                             network={"bridge": f"vr{tag}", "subnet": "10.213.0.0/24", "nft_table": f"vr{tag}"})
    db = open_database(settings.db_url)

    # A pod-mode attachment makes the node create its bridge and nftables table.
    async def attach() -> None:
        netns = f"vr{tag}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        try:
            await build_network_manager(settings, db).setup(f"c{tag}", "pod", [], f"/run/netns/{netns}")
        finally:
            subprocess.run(["ip", "netns", "del", netns], check=False)

    asyncio.run(attach())
    db.close()
    assert _link_exists(f"vr{tag}")
    r = run_cli("reset", *dirs, env=net_env)
    assert r.returncode == 0, r.stderr
    assert not _link_exists(f"vr{tag}")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"vr{tag}" not in tables


def test_migrate_reports_heads(tmp_path: Path) -> None:
    r = run_cli("migrate", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["database"] == "sqlite" and out["revisions"]


def test_engine_subcommands_are_reachable() -> None:
    for argv in (["images", "--help"], ["bootstrap", "plan", "--help"], ["certs", "list", "--help"]):
        r = run_cli(*argv)
        assert r.returncode == 0, (argv, r.stderr)


def test_unknown_subcommand_is_a_usage_error() -> None:
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr
