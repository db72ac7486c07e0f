"""``vapp-core``: the daemon and its admin commands. Argument parsing only.

Exit codes: 0 ok, 1 a check or command failed, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from app import __version__
from app.config import Settings, load_settings
from app.errors import VappError
from app.logs import setup_logging

log = logging.getLogger("vapp-core")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (under VAPP_* environment variables)")
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the state dir)")
    p.add_argument("--admin-listen", help="admin REST address, HOST:PORT (default 127.0.0.1:8420)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--socket-group", help="group owning the daemon's Unix sockets")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("state_dir", "run_dir", "database_url", "admin_listen", "log_level", "log_format", "socket_group")
    out: dict[str, Any] = {k: getattr(args, k, None) for k in keys}
    vappc: dict[str, Any] = {}
    if getattr(args, "vappc_socket", None):
        vappc["socket"] = args.vappc_socket
    if getattr(args, "vsock_port", None) is not None:
        vappc["vsock_port"] = args.vsock_port
    if vappc:
        out["vappc"] = vappc
    if getattr(args, "cri_socket", None):
        out["cri"] = {"socket": args.cri_socket}
    if getattr(args, "registry_listen", None):
        out["blob"] = {"listen": args.registry_listen}
    return out


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, **_overrides(args))


def cmd_daemon(args: argparse.Namespace) -> int:
    settings = _settings(args)
    setup_logging(settings.log_level, settings.log_format)
    from app.check import CheckEnv, exit_code, render_text, run_checks

    # Probe mounts on the state dir's filesystem: that is where snapshots will live.
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    results = run_checks(CheckEnv(scratch_dir=settings.state_dir, default_runtime=settings.runtime.default_runtime))
    if exit_code(results) != 0 and not args.skip_check:
        log.error("system check failed; fix the items below or pass --skip-check\n%s", render_text(results))
        return 1
    for r in results:
        if not r.ok:
            log.warning("check: %s: %s%s", r.name, r.detail, f" (fix: {r.fix})" if r.fix else "")
    from app.daemon import run_daemon

    return run_daemon(settings, check_results=results)


def cmd_check(args: argparse.Namespace) -> int:
    from app.check import exit_code, render_json, render_text, run_checks

    results = run_checks()
    print(render_json(results) if args.json else render_text(results))
    return exit_code(results)


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.state.db import current_revisions, open_database

    settings = _settings(args)
    db = open_database(settings.db_url)
    print(json.dumps({"database": settings.db_url.split("://", 1)[0], "revisions": sorted(
        current_revisions(db.engine))}))
    db.close()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Uninstall/reset: remove every network attachment, our nftables table and the bridge."""
    import asyncio

    from app.errors import FailedPrecondition
    from app.runtime.network.manager import build_network_manager
    from app.state.db import open_database

    settings = _settings(args)
    pid_file = settings.run_dir / "vapp.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass
    else:
        raise FailedPrecondition(f"vapp-core is running (pid {pid}); stop it before a reset")
    db = open_database(settings.db_url)
    try:
        asyncio.run(build_network_manager(settings, db).reset())
    finally:
        db.close()
    print("network state removed (attachments, leases, nftables table, bridge)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vapp-core", description="4lock-core node appliance")
    parser.add_argument("--version", action="version", version=f"vapp-core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    _add_config_args(p)
    p.add_argument("--vappc-socket", type=Path, help="vappc Unix socket (default /tmp/vappc)")
    p.add_argument("--vsock-port", type=int, help="also listen for vappc on AF_VSOCK at this port")
    p.add_argument("--cri-socket", type=Path, help="CRI gRPC socket (default <run_dir>/cri.sock)")
    p.add_argument("--registry-listen", help="registry cache address, HOST:PORT (default 127.0.0.1:5050)")
    p.add_argument("--skip-check", action="store_true", help="start even when the system check fails")
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("check", help="check this machine for what the runtime needs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("migrate", help="upgrade the database schema in place and print the revision")
    _add_config_args(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("reset", help="uninstall: remove network attachments, nftables rules and the bridge")
    _add_config_args(p)
    p.set_defaults(func=cmd_reset)

    from app.cli_bootstrap import add_parsers as add_bootstrap_parsers
    from app.cli_images import add_parser as add_images_parser

    add_images_parser(sub)
    add_bootstrap_parsers(sub, add_config_args=_add_config_args, settings_of=_settings)
    return parser


def vapp_core_main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VappError as exc:
        print(f"vapp-core: {exc.message}", file=sys.stderr)
        return 2 if exc.kind.value == "invalid_argument" else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(vapp_core_main())
