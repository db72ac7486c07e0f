"""``vapp-core bootstrap plan|apply|status`` and ``vapp-core certs list|renew``.

Two modes:

* default: talk to the running daemon's admin REST API (``admin_listen``, token from
  ``<state_dir>/admin-token`` or ``VAPP_ADMIN_TOKEN``);
* ``--local``: run the bootstrap service in this process on the same state
  directory (a node being bootstrapped before its daemon runs, or recovery).
  Components started locally are adopted by the daemon later (the driver
  rediscovers them from disk).

``apply -f FILE`` first stores the intent(s) in FILE (YAML/TOML, one intent or a
list). The lead hooks :func:`add_parsers` into ``app/cli.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from app.errors import Unavailable, VappError

Handler = Any


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
        return
    if isinstance(obj, dict) and "components" in obj:
        print(f"{'COMPONENT':32} {'PHASE':10} {'STATE':8} {'RESTARTS':>8}  ERROR")
        for c in obj["components"]:
            print(f"{c['component']:32} {c['phase']:10} {c['state']:8} {c['restarts']:>8}  {c['last_error'] or ''}")
        for name, msg in (obj.get("intent_errors") or {}).items():
            print(f"intent {name}: {msg}")
    elif isinstance(obj, dict) and "actions" in obj:
        for p in obj["pki"]:
            print(f"pki      {p['name']:28} {p['action']} ({p['reason']})")
        for a in obj["actions"]:
            print(f"{a['action']:8} {a['component']:28} {a['reason']}")
        for name, msg in (obj.get("intent_errors") or {}).items():
            print(f"intent {name}: {msg}")
        print(f"{obj['changes']} change(s)" if obj["changes"] else "nothing to do")
    elif isinstance(obj, list) and obj and "not_after" in obj[0]:
        print(f"{'NAME':32} {'EXPIRES':26} {'DAYS':>7}  ISSUER")
        for c in obj:
            print(f"{c['name']:32} {c['not_after']:26} {c['days_left']:>7}  {c['issuer']}")
    else:
        print(json.dumps(obj, indent=2, default=str))


def _intent_docs(path: Path) -> list[dict[str, Any]]:
    from app.bootstrap.schema import decode

    fmt: Literal["yaml", "toml"] = "toml" if path.suffix == ".toml" else "yaml"
    data = decode(path.read_text(), fmt=fmt, source=str(path))
    return data if isinstance(data, list) else [data]


async def _local(args: argparse.Namespace, settings: Any) -> Any:
    from app.bootstrap.factory import build_bootstrap
    from app.state.db import open_database

    db = open_database(settings.db_url)
    try:
        svc = build_bootstrap(settings, db)
        for f in getattr(args, "file", None) or []:
            for doc in _intent_docs(f):
                svc.put_intent(doc)
        what = args.bootstrap_cmd if args.command == "bootstrap" else f"certs-{args.certs_cmd}"
        if what == "plan":
            return await svc.plan()
        if what == "apply":
            return await svc.apply(timeout=args.timeout)
        if what == "status":
            return await svc.status()
        if what == "certs-list":
            return svc.certs_list()
        return {"renewed": svc.certs_renew(args.names, force=args.force)}
    finally:
        db.close()


def _remote(args: argparse.Namespace, settings: Any) -> Any:
    import httpx

    from app.config import parse_host_port

    host, port = parse_host_port(settings.admin_listen)
    token = os.environ.get("VAPP_ADMIN_TOKEN") or (
        settings.admin_token.get_secret_value() if settings.admin_token else None)
    if token is None:
        try:
            token = (settings.state_dir / "admin-token").read_text().strip()
        except OSError as exc:
            raise Unavailable(f"no admin token ({exc.strerror}); use --local or set VAPP_ADMIN_TOKEN") from exc
    base = f"http://{host}:{port}/v1"
    timeout = getattr(args, "timeout", 300.0) + 10
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout, trust_env=False) as c:
        def call(method: str, path: str, **kw: Any) -> Any:
            try:
                resp = c.request(method, base + path, **kw)
            except httpx.HTTPError as exc:
                raise Unavailable(f"daemon at {host}:{port} unreachable ({exc}); use --local") from exc
            body = resp.json()
            if resp.status_code >= 400:
                err = body.get("error", {})
                raise VappError(f"{err.get('message', resp.text)}")
            return body

        for f in getattr(args, "file", None) or []:
            for doc in _intent_docs(f):
                call("POST", "/intents", json=doc)
        if args.command == "bootstrap":
            if args.bootstrap_cmd == "plan":
                return call("GET", "/bootstrap/plan")
            if args.bootstrap_cmd == "apply":
                return call("POST", "/bootstrap/apply", params={"timeout": args.timeout})
            return call("GET", "/bootstrap/status")
        if args.certs_cmd == "list":
            return call("GET", "/certs")
        return call("POST", "/certs/renew", json={"names": args.names, "force": args.force})


def run(args: argparse.Namespace, settings: Any) -> int:
    start = time.monotonic()
    result = asyncio.run(_local(args, settings)) if args.local else _remote(args, settings)
    _print(result, args.json)
    if args.command == "bootstrap" and args.bootstrap_cmd == "apply":
        bad = [c for c in result.get("components", []) if c["phase"] not in ("running", "exited")]
        errs = result.get("intent_errors") or {}
        print(f"applied in {time.monotonic() - start:.1f}s", file=sys.stderr)
        return 1 if bad or errs else 0
    return 0


def add_parsers(subparsers: Any, add_config_args: Any = None, settings_of: Any = None) -> None:
    """Register ``bootstrap`` and ``certs``. ``add_config_args``/``settings_of`` come from app/cli.py."""

    def common(p: argparse.ArgumentParser) -> None:
        if add_config_args is not None:
            add_config_args(p)
        else:
            p.add_argument("--config", type=Path, help="TOML configuration file")
            p.add_argument("--state-dir", type=Path)
        p.add_argument("--local", action="store_true", help="run in this process instead of asking the daemon")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=lambda a: run(a, settings_of(a) if settings_of else _default_settings(a)))

    b = subparsers.add_parser("bootstrap", help="node bootstrap: plan, apply, status")
    bsub = b.add_subparsers(dest="bootstrap_cmd", required=True)
    p = bsub.add_parser("plan", help="what would change, without changing it")
    common(p)
    p.add_argument("-f", "--file", type=Path, action="append", help="store the intent(s) in FILE first")
    p = bsub.add_parser("apply", help="converge the node now")
    common(p)
    p.add_argument("-f", "--file", type=Path, action="append", help="store the intent(s) in FILE first")
    p.add_argument("--timeout", type=float, default=300.0)
    p = bsub.add_parser("status", help="every component's phase, restarts and last error")
    common(p)

    c = subparsers.add_parser("certs", help="the node PKI: list with expiry, renew")
    csub = c.add_subparsers(dest="certs_cmd", required=True)
    p = csub.add_parser("list")
    common(p)
    p = csub.add_parser("renew", help="renew NAMEs (default: every leaf inside the renewal window)")
    common(p)
    p.add_argument("names", nargs="*")
    p.add_argument("--force", action="store_true", help="renew every leaf now")


def _default_settings(args: argparse.Namespace) -> Any:
    from app.config import load_settings

    return load_settings(getattr(args, "config", None), state_dir=getattr(args, "state_dir", None))


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m app.cli_bootstrap``) until app/cli.py hooks the parsers in."""
    parser = argparse.ArgumentParser(prog="vapp-core")
    sub = parser.add_subparsers(dest="command", required=True)

    add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VappError as exc:
        print(f"vapp-core: {exc.message}", file=sys.stderr)
        return 2 if exc.kind.value == "invalid_argument" else 1


if __name__ == "__main__":
    sys.exit(main())
